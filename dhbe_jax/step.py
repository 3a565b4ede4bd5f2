"""DHBE: data-free holistic backdoor erasing by restricted adversarial distillation.

Yan, Li, Zhao, Tian, Zhao. "Data-free Holistic Backdoor Erasing in Deep Neural Networks via
Restricted Adversarial Distillation", AsiaCCS 2023 (arXiv 2306.08009). Values from the
authors' code; see ../shared/methods/DHBE.md.

One DHBE iteration (`make_iteration`, one compiled program, state donated):
  1. `student_steps` (5) student updates, as an (unrolled) `lax.scan`; each draws fresh z, z2:
       x = G(z) (no gradient), teacher logits T(x), student logits S(x);
       D = L1(S(x), T(x)); x_p = x + trigger (each family: patch at a random position, or a
       full-image pattern scaled by sigma/(H*W)), clipped to [0, 1];
       R = L1(S(x_p), stop_gradient(S(x))), averaged over the trigger families;
       L_S = D + lambda * R; SGD step on S.
  2. One G step: L_G = -D + w_tv2 * TV2(x) + w_tv1 * TV1(x), gradients for G only.
  3. One G_p step: L_Gp = -R with G's output stopped, gradients for G_p only.
  lambda = 0 gives DFAD (distillation only): no trigger generator, no R, no step 3.
The student's batch-norm statistics update on every forward pass on synthetic data (the
official behaviour; `student_bn_train=False` keeps the teacher's statistics instead).
Two opt-in deviations, off by default (the `cpu` config turns them on): `generator_warmup` G-only
steps before iteration 1 (`make_generator_warmup`), and `balance_weight` * balance_loss(T(x))
added to L_G, both keeping G's batches spread over the teacher's classes. A third, off unless
`average_start` is set: the running mean of the student after each iteration from that fraction of
training on (`DHBEState.average`), which is then the result instead of the last student.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from backdoor_core.errors import check_settings
from backdoor_core.sharding import DATA_AXIS, replicate, replicated, unroll_loops
from dhbe_jax import generators as gens
from dhbe_jax.losses import balance_loss, confidence_loss, l1_logits, tv_l1, tv_l2
from dhbe_jax.triggers import add_full_triggers, add_patches

FAMILIES = ("patch", "full")


@dataclasses.dataclass(frozen=True)
class DHBEConfig:
    """DHBE settings; defaults are the official code's (CIFAR-10, ResNet-18).

    Attributes:
      iterations: 300 epochs x 50 iterations. batch_size: synthetic images per step.
      student_steps: student updates per iteration. lam: weight of R (0 gives DFAD).
      student_lr / momentum / weight_decay: the student's SGD. generator_lr, trigger_lr: Adam.
      lr_milestones, lr_gamma: all three learning rates x gamma at these fractions of training.
      trigger_lr_milestones: None (the official code: G_p's lr follows lr_milestones), or G_p's own
        fractions (DEVIATION; e.g. () keeps G_p at trigger_lr while the student's lr decays).
      student_warmup: iterations of linear warm-up of the student's learning rate (0: none, the
        official setting; a short CPU budget benefits from one, see the configs).
      nz, ngf: G's latent size and width. nz_trigger: G_p's latent size.
      trigger_families: "patch" (small patches p1) and/or "full" (large triggers p2).
      patch_size: side of the p1 patches. patch_per_sample: one position per image instead of
        one per batch (the official code's choice).
      full_sigma: p2 is scaled by full_sigma / (H*W); None picks 0.12*H*W, i.e. a per-pixel
        amplitude of 0.12, comparable to a blended trigger with alpha 0.2 (RMS change ~0.08).
      tv_l2_weight, tv_l1_weight: G's image-prior weights.
      student_bn_train: student forward passes in train mode (batch statistics, updated).
      generator_warmup: G-only steps before the game (0: none, the official setting) that make
        the teacher's predictions on G's batches confident and spread over the classes
        (DAFL's information-entropy and one-hot losses; DEVIATION for short budgets and for
        teachers that send every noise image to one class, see `balance_loss`). The student and
        G_p do not move during the warm-up; the warm-up steps do not count as iterations.
      balance_weight: weight of the class-balance term log K - H(mean teacher softmax) in G's
        loss during the game (0: none, the official loss; DEVIATION when > 0).
      average_start: None (the official code: the result is the last student), or a fraction f in
        [0, 1): the result is the uniform mean of the student's variables after each iteration
        i > round(f * iterations) (stochastic weight averaging, Izmailov et al. 2018; DEVIATION).
        Batch statistics are averaged like the weights (exact when student_bn_train=False, where
        they stay the teacher's; SWA's recomputation of them needs data this method does not have).
    """

    iterations: int = 15000
    batch_size: int = 256
    student_steps: int = 5
    lam: float = 0.1
    student_lr: float = 0.1
    student_momentum: float = 0.9
    student_weight_decay: float = 5e-4
    generator_lr: float = 1e-3
    trigger_lr: float = 1e-3
    lr_milestones: tuple[float, ...] = (0.6, 0.8)
    lr_gamma: float = 0.1
    trigger_lr_milestones: tuple[float, ...] | None = None
    student_warmup: int = 0
    nz: int = 256
    ngf: int = 64
    nz_trigger: int = 256
    trigger_families: tuple[str, ...] = ("patch", "full")
    patch_size: int = 5
    patch_per_sample: bool = False
    full_sigma: float | None = None
    tv_l2_weight: float = 1e-4
    tv_l1_weight: float = 0.0
    student_bn_train: bool = True
    generator_warmup: int = 0
    balance_weight: float = 0.0
    average_start: float | None = None

    def validate(self, image_shape) -> "DHBEConfig":
        """Returns self, or raises InputError naming the first setting that cannot work."""
        h, w, _ = image_shape
        checks = [(self.iterations >= 1, "iterations", "at least 1"),
                  (self.batch_size >= 2, "batch_size", "at least 2 (batch norm needs a batch)"),
                  (self.student_steps >= 1, "student_steps", "at least 1"), (self.lam >= 0, "lam", "non-negative"),
                  (self.student_lr > 0, "student_lr", "positive"),
                  (0 <= self.student_momentum < 1, "student_momentum", "in [0, 1)"),
                  (self.student_weight_decay >= 0, "student_weight_decay", "non-negative"),
                  (self.generator_lr > 0, "generator_lr", "positive"), (self.trigger_lr > 0, "trigger_lr", "positive"),
                  (self.lr_gamma > 0, "lr_gamma", "positive"),
                  (0 <= self.student_warmup < self.iterations, "student_warmup", "in [0, iterations)"),
                  (self.nz >= 1, "nz", "at least 1"), (self.ngf >= 1, "ngf", "at least 1"),
                  (self.nz_trigger >= 1, "nz_trigger", "at least 1"),
                  (self.full_sigma is None or self.full_sigma > 0, "full_sigma", "None (0.12 * H * W) or positive"),
                  (self.tv_l2_weight >= 0 and self.tv_l1_weight >= 0, "tv_l2_weight / tv_l1_weight", "non-negative"),
                  (self.generator_warmup >= 0, "generator_warmup", "non-negative"),
                  (self.balance_weight >= 0, "balance_weight", "non-negative"),
                  (set(self.trigger_families) <= set(FAMILIES) and self.trigger_families, "trigger_families",
                   f"a non-empty subset of {FAMILIES}"),
                  (1 <= self.patch_size <= min(h, w), "patch_size", f"between 1 and the image side {min(h, w)}"),
                  (h % 4 == 0 and w % 4 == 0, "image size", "sides that are multiples of 4 (G upsamples twice)"),
                  (all(0 < m < 1 for m in self.lr_milestones), "lr_milestones", "fractions in (0, 1)"),
                  (self.trigger_lr_milestones is None or all(0 < m < 1 for m in self.trigger_lr_milestones),
                   "trigger_lr_milestones", "None (lr_milestones) or fractions in (0, 1)"),
                  (self.average_start is None or 0 <= self.average_start < 1, "average_start",
                   "None or a fraction in [0, 1)")]
        check_settings("DHBE config", self, checks, values={"image size": image_shape, "tv_l2_weight / tv_l1_weight":
                                                            (self.tv_l2_weight, self.tv_l1_weight)})
        return self

    def sigma(self, image_shape) -> float:
        """The large-trigger scale sigma actually used for images of `image_shape`."""
        h, w, _ = image_shape
        return 0.12 * h * w if self.full_sigma is None else self.full_sigma

    @property
    def uses_trigger(self) -> bool:
        return self.lam > 0

    @property
    def averaged_after(self) -> int | None:
        """Iterations after this one enter the student average (None: no averaging)."""
        return None if self.average_start is None else int(round(self.average_start * self.iterations))


@flax.struct.dataclass
class DHBEState:
    """Everything one DHBE iteration reads and writes (the teacher is a separate argument)."""

    iteration: jax.Array
    student: Any  # {'params', 'batch_stats'}
    generator: Any  # G params
    trigger: Any  # {'patch': ..., 'full': ...} G_p params (empty for DFAD)
    student_opt: Any
    generator_opt: Any
    trigger_opt: Any
    key: jax.Array
    average: Any = None  # running mean of the student ({'params', 'batch_stats'}) when averaging


@dataclasses.dataclass(frozen=True)
class Players:
    """The networks and optimisers of a DHBE run (static: hashed into the compiled program)."""

    model: nn.Module
    generator: gens.SampleGenerator
    patch: gens.PatchTriggerGenerator
    full: gens.FullTriggerGenerator
    student_tx: optax.GradientTransformation
    generator_tx: optax.GradientTransformation
    trigger_tx: optax.GradientTransformation


def _milestones(config: DHBEConfig, per_iteration: int, fractions=None) -> dict[int, float]:
    """{update count: gamma} at `fractions` (default lr_milestones) of the run, `per_iteration` updates each."""
    fractions = config.lr_milestones if fractions is None else fractions
    return {int(round(m * config.iterations * per_iteration)): config.lr_gamma for m in fractions}


def trigger_lr_schedule(config: DHBEConfig) -> optax.Schedule:
    """G_p's Adam learning rate per G_p update (one per iteration): trigger_lr x gamma at
    trigger_lr_milestones, or at lr_milestones with the other two players (the official code)."""
    return optax.piecewise_constant_schedule(config.trigger_lr, _milestones(config, 1, config.trigger_lr_milestones))


def make_players(model: nn.Module, image_shape, config: DHBEConfig) -> Players:
    """The generators and the three optimisers (learning rates x gamma at the milestones)."""
    steps = config.student_steps
    student_lr = optax.piecewise_constant_schedule(config.student_lr, _milestones(config, steps))
    if config.student_warmup:
        warm = config.student_warmup * steps
        student_lr = optax.join_schedules([optax.linear_schedule(0.0, config.student_lr, warm), student_lr], [warm])
    student_tx = optax.chain(optax.add_decayed_weights(config.student_weight_decay),
                             optax.sgd(student_lr, momentum=config.student_momentum))
    generator_lr = optax.piecewise_constant_schedule(config.generator_lr, _milestones(config, 1))
    # Every registry model carries its dataset normalisation; G emits images with those statistics.
    sample_generator = gens.SampleGenerator(tuple(image_shape), config.ngf, tuple(model.mean), tuple(model.std))
    return Players(model, sample_generator,
                   gens.PatchTriggerGenerator(config.patch_size, image_shape[-1]),
                   gens.FullTriggerGenerator(tuple(image_shape), config.ngf),
                   student_tx, optax.adam(generator_lr), optax.adam(trigger_lr_schedule(config)))


def init_state(players: Players, teacher_variables: dict, config: DHBEConfig, rng: jax.Array) -> DHBEState:
    """Iteration-0 state: the student is a copy of the teacher; fresh generators from `rng`."""
    key, kg, kp, kf = jax.random.split(rng, 4)
    student = jax.tree.map(jnp.array, teacher_variables)
    generator = gens.init_params(players.generator, kg, config.nz)
    trigger = {}
    if config.uses_trigger:
        family_keys = {"patch": kp, "full": kf}
        modules = {"patch": players.patch, "full": players.full}
        trigger = {f: gens.init_params(modules[f], family_keys[f], config.nz_trigger) for f in config.trigger_families}
    average = None if config.average_start is None else jax.tree.map(jnp.array, student)  # its own buffers (donation)
    return DHBEState(jnp.zeros((), jnp.int32), student, generator, trigger,
                     players.student_tx.init(student["params"]), players.generator_tx.init(generator),
                     players.trigger_tx.init(trigger), key, average)


def update_average(average, student, iteration, after: int):
    """The running mean of the students after iterations after+1 .. `iteration` (a pytree like
    `student`): unchanged while iteration <= after, the student itself at after+1, then
    average + (student - average) / (iteration - after)."""
    n = iteration - after
    w = jnp.where(n > 0, 1.0 / jnp.maximum(n, 1).astype(jnp.float32), 0.0)
    return jax.tree.map(lambda a, s: a + (w * (s - a)).astype(a.dtype), average, student)


class _Forward:
    """The forward passes one DHBE iteration needs, closed over the static players and config."""

    def __init__(self, players: Players, config: DHBEConfig, image_shape, mesh):
        self.p, self.c = players, config
        self.sigma = config.sigma(image_shape)
        self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

    def latent(self, key, nz):
        """z ~ N(0, I) [B, nz], split over the mesh's data axis."""
        z = jax.random.normal(key, (self.c.batch_size, nz))
        return jax.lax.with_sharding_constraint(z, self.batch_sharding)

    def synthesize(self, generator_params, key):
        """x = G(z): synthetic images [B, H, W, C] in (0, 1)."""
        return gens.apply_train_mode(self.p.generator, generator_params, self.latent(key, self.c.nz))

    def teacher(self, teacher_variables, x):
        """T(x): the frozen teacher's logits, inference mode."""
        return self.p.model.apply(teacher_variables, x, train=False)

    def student(self, params, batch_stats, x):
        """S(x) and the student's batch statistics after the pass."""
        variables = {"params": params, "batch_stats": batch_stats}
        if not self.c.student_bn_train:
            return self.p.model.apply(variables, x, train=False), batch_stats
        logits, updates = self.p.model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    def triggered(self, trigger_params, key, x):
        """x_p for each trigger family, [B, H, W, C] each, clipped to [0, 1]."""
        out = []
        for family, k in zip(self.c.trigger_families, jax.random.split(key, len(self.c.trigger_families))):
            kz, kpos = jax.random.split(k)
            z = self.latent(kz, self.c.nz_trigger)
            module = self.p.patch if family == "patch" else self.p.full
            pattern = gens.apply_train_mode(module, trigger_params[family], z)
            out.append(add_patches(kpos, x, pattern, self.c.patch_per_sample) if family == "patch"
                       else add_full_triggers(x, pattern, self.sigma))
        return out

    def restriction(self, params, batch_stats, clean_logits, triggered):
        """R = mean over families of L1(S(x_p), stop_gradient(S(x))), and the batch statistics."""
        r = 0.0
        for x_p in triggered:
            logits, batch_stats = self.student(params, batch_stats, x_p)
            r = r + l1_logits(logits, jax.lax.stop_gradient(clean_logits))
        return r / len(triggered), batch_stats


def _student_update(f: _Forward, state: DHBEState, teacher, carry, key):
    """One student step (step 1): L_S = D + lambda * R on a fresh synthetic batch."""
    student, opt = carry
    kx, kt = jax.random.split(key)
    x = jax.lax.stop_gradient(f.synthesize(state.generator, kx))
    t = f.teacher(teacher, x)
    x_p = jax.lax.stop_gradient(f.triggered(state.trigger, kt, x)) if f.c.uses_trigger else []

    def loss_fn(params):
        s, stats = f.student(params, student["batch_stats"], x)
        d = l1_logits(s, t)
        if not x_p:
            return d, (stats, d, jnp.zeros(()))
        r, stats = f.restriction(params, stats, s, x_p)
        return d + f.c.lam * r, (stats, d, r)

    (loss, (stats, d, r)), grads = jax.value_and_grad(loss_fn, has_aux=True)(student["params"])
    updates, opt = f.p.student_tx.update(grads, opt, student["params"])
    student = {"params": optax.apply_updates(student["params"], updates), "batch_stats": stats}
    return (student, opt), {"loss_student": loss, "D": d, "R": r}


def _generator_update(f: _Forward, state: DHBEState, teacher, key):
    """Step 2: G maximises D (minus the TV prior); gradients for G's parameters only."""

    def loss_fn(generator):
        x = f.synthesize(generator, key)
        s, stats = f.student(state.student["params"], state.student["batch_stats"], x)
        t = f.teacher(teacher, x)
        d = l1_logits(s, t)
        loss = -d + f.c.tv_l2_weight * tv_l2(x) + f.c.tv_l1_weight * tv_l1(x)
        if f.c.balance_weight:
            loss = loss + f.c.balance_weight * balance_loss(t)
        return loss, stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.generator)
    updates, opt = f.p.generator_tx.update(grads, state.generator_opt, state.generator)
    return state.replace(generator=optax.apply_updates(state.generator, updates), generator_opt=opt,
                         student={**state.student, "batch_stats": stats}), loss


def _trigger_update(f: _Forward, state: DHBEState, key):
    """Step 3: G_p maximises R on G's (stopped) images; gradients for G_p's parameters only."""
    kx, kt = jax.random.split(key)
    x = jax.lax.stop_gradient(f.synthesize(state.generator, kx))
    params = state.student["params"]
    s, stats = f.student(params, state.student["batch_stats"], x)

    def loss_fn(trigger):
        r, new_stats = f.restriction(params, stats, s, f.triggered(trigger, kt, x))
        return -r, new_stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trigger)
    updates, opt = f.p.trigger_tx.update(grads, state.trigger_opt, state.trigger)
    return state.replace(trigger=optax.apply_updates(state.trigger, updates), trigger_opt=opt,
                         student={**state.student, "batch_stats": stats}), loss


def make_generator_warmup(players: Players, config: DHBEConfig, image_shape, mesh):
    """The G warm-up: a function (state, teacher_variables) -> (state, metrics).

    `config.generator_warmup` Adam steps (G's learning rate, an optimiser of its own that is
    dropped afterwards) on balance_loss + confidence_loss of the teacher's logits on G's batch,
    plus G's TV prior. Only G's parameters change; the latents come from a key folded off the
    state's, which the game's draws do not use. Each step is one jitted call (XLA:CPU runs a
    rolled scan of these steps several times slower), compiled once per players, config (the
    number of steps aside) and mesh. Metrics: the last step's balance and confidence losses.
    """
    tx, step = _warmup_step(players, dataclasses.replace(config, generator_warmup=0), tuple(image_shape), mesh)

    def warmup(state: DHBEState, teacher):
        # G and its fresh optimiser state placed as the step returns them (replicated): Adam's
        # step count, made by tx.init on the default device alone, would otherwise give the first
        # call other input shardings than the rest, and the step would compile twice.
        generator = replicate(mesh, state.generator)
        opt, metrics = replicate(mesh, tx.init(generator)), {}
        for key in jax.random.split(jax.random.fold_in(state.key, 1), config.generator_warmup):
            generator, opt, metrics = step(generator, opt, teacher, key)
        return state.replace(generator=generator), metrics

    return warmup


@functools.lru_cache(maxsize=8)
def _warmup_step(players: Players, config: DHBEConfig, image_shape, mesh):
    """(G's warm-up optimiser, the jitted step (generator, opt, teacher, key) -> (generator, opt, metrics))."""
    f = _Forward(players, config, image_shape, mesh)
    tx = optax.adam(config.generator_lr)

    def loss_fn(generator, teacher, key):
        x = f.synthesize(generator, key)
        t = f.teacher(teacher, x)
        balance, confidence = balance_loss(t), confidence_loss(t)
        prior = f.c.tv_l2_weight * tv_l2(x) + f.c.tv_l1_weight * tv_l1(x)
        return balance + confidence + prior, {"warmup_balance": balance, "warmup_confidence": confidence}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(generator, opt, teacher, key):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(generator, teacher, key)
        updates, opt = tx.update(grads, opt, generator)
        return optax.apply_updates(generator, updates), opt, metrics

    return tx, step


def make_iteration(players: Players, config: DHBEConfig, image_shape, mesh):
    """The jitted DHBE iteration (state, teacher_variables) -> (state, metrics); state donated.

    Metrics: loss_student, D, R (means over the student steps), loss_G, loss_Gp.
    """
    f = _Forward(players, config, image_shape, mesh)

    def iteration(state: DHBEState, teacher):
        key, k_student, k_gen, k_trig = jax.random.split(state.key, 4)
        step_keys = jax.random.split(k_student, config.student_steps)
        update = lambda carry, k: _student_update(f, state, teacher, carry, k)
        # Unrolled at compile time on CPU only: XLA:CPU ran the rolled scan body 7x slower
        # (25 s vs 3.5 s per iteration, small CNN, batch 64); on GPUs it only costs compile time.
        (student, opt), m = jax.lax.scan(update, (state.student, state.student_opt), step_keys,
                                         unroll=unroll_loops(mesh))
        state = state.replace(student=student, student_opt=opt)
        state, loss_g = _generator_update(f, state, teacher, k_gen)
        loss_gp = jnp.zeros(())
        if config.uses_trigger:
            state, loss_gp = _trigger_update(f, state, k_trig)
        metrics = {**jax.tree.map(jnp.mean, m), "loss_G": loss_g, "loss_Gp": loss_gp}
        if config.averaged_after is not None:
            state = state.replace(average=update_average(state.average, state.student, state.iteration + 1,
                                                         config.averaged_after))
        return state.replace(iteration=state.iteration + 1, key=key), metrics

    rep = replicated(mesh)
    return jax.jit(iteration, donate_argnums=0, out_shardings=(rep, rep))
