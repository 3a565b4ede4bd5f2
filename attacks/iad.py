"""Input-aware dynamic backdoor attack, IAD (Nguyen & Tran, "Input-Aware Dynamic Backdoor
Attack", NeurIPS 2020).

A pattern generator g and a mask generator m (small encoder-decoders) give every image its own
trigger, x' = x + m(x) * (g(x) - x). The classifier learns to send triggered images to the
target, and, through "cross-trigger" images (an image carrying another image's trigger, label
kept), that a trigger only works on the image it was made for.

Steps:
  1. `init_generators`: g (C output channels, tanh / 2 + 1/2 in [0, 1]) and m (one channel,
     tanh(20 z - 10) / 2 + 1/2, nearly binary), GroupNorm in place of the paper's BatchNorm so the
     trigger is a per-image function without running statistics, on the output too (the official
     generators end in a norm; without it the mask collapses to 0, `EncoderDecoder`).
  2. `make_mask_step`: m is pre-trained alone (`mask_epochs` epochs, Adam) on
     lambda_norm * mean(relu(m(x) - mask_density)) + lambda_div * diversity(x, x2, m(x), m(x2)),
     x2 a shuffled copy of the batch (`mask_loss`: one generator pass, m(x2) = m(x) shuffled; the
     official code draws x2 from a second loader, another random batch: the pairs are random
     training images either way, here about one per batch an image with itself, whose term is 0);
     m is then frozen. Resumable: checkpointed every epoch and on a stop request under
     `mask_checkpoints/`, removed once the joint state holds m. The pre-training batches are
     augmented with the training recipe, as the official loaders crop, rotate and flip them
     (`augment_mask_batches`; before 2026-12-08 this library pre-trained on the raw images,
     `augment_mask_batches=False`, archived runs).
  3. `make_iad_step` (one jitted joint step): of each batch of B images, the first
     round(backdoor_ratio B) get their own trigger and the target label, the next
     cross_ratio B get the trigger of another image of the batch and keep their label, the rest
     stay clean; the classifier (SGD, `TrainConfig`) and g (Adam) both minimise
     CE + lambda_div * diversity(x, x2, g(x), g(x2)). The batch is augmented (crop, flip) before
     the triggers are made, as the official code's dataloader augments the images its training
     step then triggers (`augment_after_trigger=False`). Before 2026-12-07 this library
     augmented the mixed batch instead, shifting and mirroring the triggers made on the
     unaugmented images; `augment_after_trigger=True` gives that order back (archived runs).
  4. `diversity_loss`: mean over pairs of |x - x2| / (|g(x) - g(x2)| + 1e-7), |.| the root mean
     square, so different images must get different patterns.
  5. `iad_trigger`: the trained (g, m) as a `Trigger` of kind "iad" (`apply_trigger`), saved and
     reloaded like every other trigger.
Defaults: backdoor and cross ratios 0.1, diversity weight 1, norm weight 100, mask density
0.032, generator Adam lr 0.01 with betas (0.5, 0.9) (the official code); 16 base channels and
depth 2 below 32 px (MNIST), 32 and 3 otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import time
from typing import Any

import flax
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from attacks.base import Attack, AttackConfig, BackdoorJob
from attacks.triggers import Trigger
from backdoor_core import rundir
from backdoor_core.augment import augment, to_float
from backdoor_core.checkpoint import TrainCheckpoints, save_variables
from backdoor_core.data import Split, batch_indices, steps_per_epoch
from backdoor_core.errors import InputError, check_settings
from backdoor_core.fit import FitResult, check_split_fits, with_train_defaults
from backdoor_core.interrupt import stop_requested
from backdoor_core.models import build_model, init_variables
from backdoor_core.models.conv import conv_fn
from backdoor_core.sharding import check_batch_size, make_mesh, replicate, replicated, shard_batch
from backdoor_core.train import TrainConfig, cross_entropy, learning_rate_schedule, make_optimizer

_EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class IADParams:
    """IAD settings (defaults: the paper's official code).

    Attributes:
      backdoor_ratio: share of each batch given its own trigger and the target label.
      cross_ratio: share of each batch given another image's trigger, label kept.
      lambda_div: weight of the diversity loss (patterns and masks).
      lambda_norm: weight of the mask-density loss while pre-training m.
      mask_density: mask mean above which pixels are penalised.
      mask_epochs: epochs of mask-generator pre-training.
      generator_lr: Adam learning rate of both generators (g follows the classifier's schedule).
      base_channels, depth: generator width and number of down/up-sampling stages; None: 16 and
        2 below 32 px, 32 and 3 otherwise.
      augment_after_trigger: False (the official order): the clean batch is augmented, then
        triggered; True: the triggered batch is augmented (this library before 2026-12-07).
      augment_mask_batches: True (the official code, whose pre-training reads the same augmented
        loaders as its joint training): the mask generator's pre-training batches are augmented
        with the training recipe; False: they are the raw images (this library before 2026-12-08).
    """

    backdoor_ratio: float = 0.1
    cross_ratio: float = 0.1
    lambda_div: float = 1.0
    lambda_norm: float = 100.0
    mask_density: float = 0.032
    mask_epochs: int = 25
    generator_lr: float = 0.01
    base_channels: int | None = None
    depth: int | None = None
    augment_after_trigger: bool = False
    augment_mask_batches: bool = True

    def architecture(self, image_shape: tuple[int, int, int]) -> tuple[int, int]:
        """(base_channels, depth) for images of `image_shape`."""
        small = image_shape[0] < 32
        return (self.base_channels or (16 if small else 32), self.depth or (2 if small else 3))


def _conv_block(x: jax.Array, channels: int) -> jax.Array:
    """Conv 3x3 -> GroupNorm -> ReLU (inside a compact module)."""
    x = nn.Conv(channels, (3, 3), conv_general_dilated=conv_fn())(x)
    return nn.relu(nn.GroupNorm(num_groups=math.gcd(8, channels))(x))


class EncoderDecoder(nn.Module):
    """[N,H,W,C] -> [N,H,W,out_channels] raw outputs: `depth` down stages (2 conv blocks, max-pool,
    channels x2), a middle block, `depth` up stages (nearest upsampling to the matching size,
    2 conv blocks, channels /2), a final 3x3 conv and a GroupNorm of one group per channel."""

    out_channels: int
    base_channels: int
    depth: int

    @nn.compact
    def __call__(self, x):
        sizes, c = [], self.base_channels
        for _ in range(self.depth):
            x = _conv_block(_conv_block(x, c), c)
            sizes.append(x.shape[1:3])
            x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
            c *= 2
        x = _conv_block(x, c)
        for size in reversed(sizes):
            c //= 2
            x = jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "nearest")
            x = _conv_block(_conv_block(x, c), c)
        x = nn.Conv(self.out_channels, (3, 3), conv_general_dilated=conv_fn())(x)
        # The official generators end in a BatchNorm too (their last Conv2dBlock keeps its norm and
        # drops only the ReLU). Without it the mask generator collapses: the density loss pushes every
        # z under the threshold, tanh(20 z - 10) saturates, the mask is exactly 0 within 20 steps of
        # pre-training on CIFAR-10 and never recovers (no gradient), and the trigger does nothing
        # (a 15-epoch CIFAR-10 teacher: ASR 2.7%). Here per image and channel, as above.
        return nn.GroupNorm(num_groups=self.out_channels)(x)


def generate_pattern(params, images: jax.Array, base_channels: int, depth: int) -> jax.Array:
    """g(x): per-image patterns [N,H,W,C] in [0, 1] for images [N,H,W,C]."""
    z = EncoderDecoder(images.shape[-1], base_channels, depth).apply({"params": params}, images)
    return jnp.tanh(z) / (2 + _EPS) + 0.5


def generate_mask(params, images: jax.Array, base_channels: int, depth: int) -> jax.Array:
    """m(x): per-image masks [N,H,W,1] in [0, 1], pushed toward 0/1 by tanh(20 z - 10)."""
    z = EncoderDecoder(1, base_channels, depth).apply({"params": params}, images)
    return jnp.tanh(20 * z - 10) / (2 + _EPS) + 0.5


def blend(images: jax.Array, patterns: jax.Array, masks: jax.Array) -> jax.Array:
    """x + m * (p - x): images and patterns [N,H,W,C], masks [N,H,W,1]; stays in [0, 1]."""
    return images + masks * (patterns - images)


def check_generator_params(arrays: dict, image_shape: tuple[int, int, int], base_channels: int, depth: int) -> None:
    """InputError unless `arrays` holds both generators with this version's parameter tree.

    Checked on shapes only (at trace time): a trigger saved before the generators got their output
    GroupNorm (2026-11-28) would otherwise fail deep inside flax with a missing-scope error.
    """
    dummy = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    for name, out_channels in (("generator", image_shape[-1]), ("mask_generator", 1)):
        net = EncoderDecoder(out_channels, base_channels, depth)
        expected = jax.eval_shape(net.init, jax.random.PRNGKey(0), dummy)["params"]
        want = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(expected).items()}
        have = {"/".join(k): np.shape(v) for k, v in traverse_util.flatten_dict(arrays.get(name, {})).items()}
        if want != have:
            missing = sorted(set(want) - set(have))[:3]
            extra = sorted(set(have) - set(want))[:3]
            wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])[:3]
            raise InputError(
                f"IAD trigger: the {name!r} parameters do not fit this version's generator for images "
                f"{tuple(image_shape)} (base_channels {base_channels}, depth {depth}): missing {missing}, "
                f"unexpected {extra}, wrong shapes {wrong}. A trigger saved before 2026-11-28 (generators "
                "without their output GroupNorm) cannot be reloaded: train the IAD attack again")


def apply_trigger(arrays: dict, images: jax.Array, key: jax.Array, *, base_channels: int, depth: int) -> jax.Array:
    """The IAD trigger (kind "iad"): arrays {'generator', 'mask_generator'} (flax params)."""
    del key
    check_generator_params(arrays, tuple(images.shape[1:]), base_channels, depth)
    patterns = generate_pattern(arrays["generator"], images, base_channels, depth)
    masks = generate_mask(arrays["mask_generator"], images, base_channels, depth)
    return blend(images, patterns, masks)


def iad_trigger(generator, mask_generator, base_channels: int, depth: int) -> Trigger:
    """Step 5: the trigger of generator params `generator` and `mask_generator`."""
    return Trigger.make("iad", {"generator": generator, "mask_generator": mask_generator},
                        base_channels=base_channels, depth=depth)


def init_generators(key: jax.Array, image_shape: tuple[int, int, int], base_channels: int, depth: int):
    """Step 1: fresh (pattern generator params, mask generator params), deterministic in `key`.

    Kernels are LeCun-normal (flax's default, untruncated), biases 0, GroupNorm scales 1, drawn
    on the host: compiling flax's own init takes tens of seconds on a CPU for these small nets.
    """
    dummy = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    g_key, m_key = jax.random.split(key)
    nets = ((EncoderDecoder(image_shape[-1], base_channels, depth), g_key),
            (EncoderDecoder(1, base_channels, depth), m_key))
    return tuple(_host_init(jax.eval_shape(net.init, k, dummy)["params"], k) for net, k in nets)


def _host_init(shapes, key: jax.Array):
    """float32 arrays shaped like `shapes`: kernel ~ N(0, 1/fan_in), scale = 1, others 0."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key), np.uint32).tolist())

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1])), jnp.float32)
        return jnp.full(s.shape, 1.0 if name == "scale" else 0.0, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def _rms_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Root mean squared difference per image [N] of a, b [N, ...] (smooth at 0)."""
    return jnp.sqrt(jnp.mean((a - b) ** 2, axis=tuple(range(1, a.ndim))) + 1e-12)


def diversity_loss(x1: jax.Array, x2: jax.Array, out1: jax.Array, out2: jax.Array) -> jax.Array:
    """Step 4: mean of |x1 - x2| / (|out1 - out2| + 1e-7) over the N image pairs."""
    return jnp.mean(_rms_distance(x1, x2) / (_rms_distance(out1, out2) + _EPS))


def generator_optimizer(params: IADParams, config: TrainConfig, total_steps: int, schedule: bool = True):
    """Adam(b1 0.5, b2 0.9) at generator_lr, following the classifier's schedule shape if `schedule`."""
    lr = params.generator_lr
    if schedule:
        lr = learning_rate_schedule(dataclasses.replace(config, learning_rate=params.generator_lr), total_steps)
    return optax.adam(lr, b1=0.5, b2=0.9)


def mask_loss(m_params, x: jax.Array, perm: jax.Array, params: IADParams, base_channels: int,
              depth: int) -> jax.Array:
    """Step 2's loss for images x [B,H,W,C] in [0, 1] and their shuffle x[perm] (perm [B]):
    lambda_norm * mean(relu(m(x) - mask_density)) + lambda_div * diversity(x, x[perm], m(x), m(x[perm])).

    m is per-image (GroupNorm, no batch statistics), so m(x[perm]) is m(x)[perm]: one generator
    pass instead of the official code's two, half the pre-training's cost, the same loss.
    """
    m1 = generate_mask(m_params, x, base_channels, depth)
    density = jnp.mean(nn.relu(m1 - params.mask_density))
    return params.lambda_norm * density + params.lambda_div * diversity_loss(x, x[perm], m1, m1[perm])


def mask_batch(images: jax.Array, key: jax.Array, params: IADParams, *, crop_padding: int, hflip: bool,
               augmentation: str) -> tuple[jax.Array, jax.Array]:
    """Step 2's batch: (x [B,H,W,C] float in [0, 1], perm [B]) from images [B,H,W,C] (uint8 or float).

    With params.augment_mask_batches x is augmented by the training recipe (`augment`, key
    fold_in(key, 1)), as the official loaders feed the pre-training; else x is the raw images. The
    shuffle is drawn from `key` itself either way, so a run without augmentation draws as before."""
    x = to_float(images)
    if params.augment_mask_batches:
        x = augment(jax.random.fold_in(key, 1), x, augmentation, crop_padding, hflip)
    return x, jax.random.permutation(key, x.shape[0])


def make_mask_step(params: IADParams, base_channels: int, depth: int, tx, mesh, *, crop_padding: int = 0,
                   hflip: bool = False, augmentation: str = "crop_flip"):
    """Step 2: jitted (mask params, opt state, images uint8 [B,...], key) -> (params, opt state, loss)
    on the batch `mask_batch` makes (augmented with the recipe unless not augment_mask_batches)."""

    def step(m_params, opt_state, images, key):
        x, perm = mask_batch(images, key, params, crop_padding=crop_padding, hflip=hflip, augmentation=augmentation)
        loss, grads = jax.value_and_grad(mask_loss)(m_params, x, perm, params, base_channels, depth)
        updates, opt_state = tx.update(grads, opt_state, m_params)
        return optax.apply_updates(m_params, updates), opt_state, loss

    rep = replicated(mesh)
    return jax.jit(step, donate_argnums=(0, 1), out_shardings=(rep, rep, rep))


@functools.lru_cache(maxsize=4)
def _mask_program(params: IADParams, base_channels: int, depth: int, mesh, crop_padding: int = 0,
                  hflip: bool = False, augmentation: str = "crop_flip"):
    """(Adam at generator_lr, the jitted mask step), one per setting: a resumed pre-training in the
    same process compiles once."""
    tx = generator_optimizer(params, None, 1, schedule=False)
    return tx, make_mask_step(params, base_channels, depth, tx, mesh, crop_padding=crop_padding, hflip=hflip,
                              augmentation=augmentation)


MASK_CHECKPOINTS = "mask_checkpoints"  # step 2's states, under the run directory, until step 3 starts


def pretrain_mask(m_params, train: Split, params: IADParams, config: TrainConfig, base_channels: int,
                  depth: int, mesh, key: jax.Array, progress: bool,
                  checkpoints: TrainCheckpoints | None = None) -> tuple[Any, bool]:
    """Step 2's loop: `mask_epochs` epochs over `train`, resumable.

    Returns (mask params, finished). With `checkpoints`, the state {'step', 'params', 'opt_state'}
    is saved after every epoch and, when a stop is requested (Ctrl-C / SIGTERM under the CLI),
    after the current batch, and the loop then returns unfinished; a later call with the same
    checkpoints resumes from the latest one and ends with the same params as an uninterrupted
    run (same batches, same keys).
    """
    tx, step_fn = _mask_program(params, base_channels, depth, mesh, config.crop_padding or 0, bool(config.hflip),
                                config.augmentation)
    state = {"step": jnp.zeros((), jnp.int32), "params": m_params, "opt_state": tx.init(m_params)}
    if checkpoints is not None and checkpoints.latest_step() is not None:
        state = checkpoints.restore(state)
    step, spe = int(state["step"]), steps_per_epoch(len(train), config.batch_size)
    # host copies first: the step donates its inputs, and the caller's arrays must survive
    m_params = replicate(mesh, jax.device_get(state["params"]))
    opt_state = replicate(mesh, jax.device_get(state["opt_state"]))

    def save(step):
        if checkpoints is not None:
            checkpoints.save(step, {"step": jnp.asarray(step, jnp.int32), "params": jax.device_get(m_params),
                                    "opt_state": jax.device_get(opt_state)})

    with tqdm(total=params.mask_epochs * spe, initial=step, desc="IAD mask generator (steps)",
              disable=not progress, leave=False) as bar:  # per step: one pre-training epoch can take many minutes
        for epoch in range(step // spe if spe else 0, params.mask_epochs):
            batches = list(batch_indices(len(train), config.batch_size, seed=config.seed, epoch=epoch))
            for i in range(step - epoch * spe, len(batches)):
                images = shard_batch(mesh, train.images[batches[i]])
                m_params, opt_state, _ = step_fn(m_params, opt_state, images,
                                                 jax.random.fold_in(key, epoch * 100003 + i))
                step += 1
                bar.update(1)
                if stop_requested():
                    save(step)
                    return jax.device_get(m_params), False
            save(step)
    return jax.device_get(m_params), True


@flax.struct.dataclass
class IADState:
    """Everything the joint step reads and writes; checkpointed whole for resumption."""

    step: jax.Array
    params: Any  # classifier
    batch_stats: Any
    opt_state: Any
    generator: Any
    generator_opt_state: Any
    mask_generator: Any  # frozen after pre-training
    key: jax.Array

    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def batch_counts(batch_size: int, params: IADParams) -> tuple[int, int]:
    """(backdoor, cross) images per batch: int(ratio * batch_size), as the official code."""
    return int(params.backdoor_ratio * batch_size), int(params.cross_ratio * batch_size)


def targets_for(labels: jax.Array, config: AttackConfig, num_classes: int) -> jax.Array:
    """Each label's attack target: config.target, or (y + 1) mod C for all-to-all."""
    if config.mode == "all_to_all":
        return (labels + 1) % num_classes
    return jnp.full_like(labels, config.target)


def mixed_batch(g_params, m_params, x, x2, labels, nb, nc, config, num_classes, arch):
    """Step 3's batch: (inputs [B,...], labels [B], diversity loss) from x and its shuffle x2."""
    other = x2[nb:nb + nc]
    sources = jnp.concatenate([x[:nb], other])  # one generator pass for both parts
    patterns, masks = generate_pattern(g_params, sources, *arch), generate_mask(m_params, sources, *arch)
    p1, p2 = patterns[:nb], patterns[nb:]
    parts, div = [blend(x[:nb], p1, masks[:nb])], jnp.zeros(())
    if nc:
        parts.append(blend(x[nb:nb + nc], p2, masks[nb:]))
        k = min(nb, nc)
        div = diversity_loss(x[:k], other[:k], p1[:k], p2[:k])
    inputs = jnp.concatenate(parts + [x[nb + nc:]])
    labels = jnp.concatenate([targets_for(labels[:nb], config, num_classes), labels[nb:]])
    return inputs, labels, div


def step_batch(g_params, m_params, images, labels, aug_key, perm_key, *, params: IADParams, config: AttackConfig,
               num_classes: int, arch: tuple[int, int], nb: int, nc: int, crop_padding: int, hflip: bool,
               augmentation: str = "crop_flip"):
    """What one joint step's classifier learns from: (inputs [B,H,W,C] in [0, 1], labels [B],
    diversity loss) for a batch of images [B,H,W,C] (uint8 or float) and its labels [B].

    The images are augmented (`backdoor_core.augment.augment`, the `augmentation` recipe: by default
    a crop with zero padding and an optional flip; `aug_key`) and then triggered
    (`mixed_batch`, x2 their shuffle by `perm_key`): the official order. With
    params.augment_after_trigger the mixed batch is augmented instead (module docstring, step 3)."""
    x = to_float(images)
    if not params.augment_after_trigger:
        x = augment(aug_key, x, augmentation, crop_padding, hflip)
    x2 = x[jax.random.permutation(perm_key, x.shape[0])]
    inputs, targets, div = mixed_batch(g_params, m_params, x, x2, labels, nb, nc, config, num_classes, arch)
    if params.augment_after_trigger:
        inputs = augment(aug_key, inputs, augmentation, crop_padding, hflip)
    return inputs, targets, div


def make_iad_step(module: nn.Module, tx, tx_g, mesh, params: IADParams, config: AttackConfig,
                  num_classes: int, arch: tuple[int, int], batch_size: int, *, crop_padding: int, hflip: bool,
                  augmentation: str = "crop_flip"):
    """Step 3: jitted (state, images uint8 [B,...], labels [B]) -> (state, metrics); state donated.
    The batch is augmented and triggered by `step_batch`."""
    nb, nc = batch_counts(batch_size, params)
    batch = functools.partial(step_batch, params=params, config=config, num_classes=num_classes, arch=arch,
                              nb=nb, nc=nc, crop_padding=crop_padding, hflip=hflip, augmentation=augmentation)

    def step(state: IADState, images, labels):
        key, perm_key, aug_key = jax.random.split(state.key, 3)

        def loss_fn(c_params, g_params):
            inputs, targets, div = batch(g_params, state.mask_generator, images, labels, aug_key, perm_key)
            logits, updates = module.apply({"params": c_params, "batch_stats": state.batch_stats}, inputs,
                                           train=True, mutable=["batch_stats"])
            ce = cross_entropy(logits, targets)
            return ce + params.lambda_div * div, (logits, targets, updates["batch_stats"], div)

        (loss, (logits, targets, batch_stats, div)), (g_c, g_g) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(state.params, state.generator)
        updates, opt_state = tx.update(g_c, state.opt_state, state.params)
        g_updates, g_opt_state = tx_g.update(g_g, state.generator_opt_state, state.generator)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state, key=key,
                            generator=optax.apply_updates(state.generator, g_updates), generator_opt_state=g_opt_state)
        correct = jnp.sum(jnp.argmax(logits, -1) == targets)
        return new, {"loss": loss, "correct": correct, "diversity": div}

    rep = replicated(mesh)
    return jax.jit(step, donate_argnums=0, out_shardings=(rep, rep))


def initial_state(job: BackdoorJob, config: TrainConfig, tx, tx_g, arch: tuple[int, int]) -> IADState:
    """A step-0 state: fresh classifier (from config.seed, as `fit`) and generators (from job.key)."""
    init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = init_variables(job.spec, init_key)
    g, m = init_generators(job.key, job.train.image_shape, *arch)
    return IADState(step=jnp.zeros((), jnp.int32), params=variables["params"], batch_stats=variables["batch_stats"],
                    opt_state=tx.init(variables["params"]), generator=g, generator_opt_state=tx_g.init(g),
                    mask_generator=m, key=jax.random.fold_in(state_key, 1))


def state_trigger(state: IADState, arch: tuple[int, int]) -> Trigger:
    """The trigger of the state's current generators (host arrays)."""
    return iad_trigger(jax.device_get(state.generator), jax.device_get(state.mask_generator), *arch)


def evaluate(module, variables: dict, trigger: Trigger, job: BackdoorJob, mesh) -> dict:
    """C-Acc, ASR, ASR*, RA on job.test with `trigger` (attacks.backdoor's conventions)."""
    from attacks.backdoor import backdoor_metrics
    from attacks.poison import triggered_test_set

    return backdoor_metrics(module, variables, job.test, triggered_test_set(job.test, job.config, trigger), mesh)


def _run_epochs(step_fn, state: IADState, job: BackdoorJob, config: TrainConfig, mesh, checkpoints,
                run_dir, arch, module) -> tuple[IADState, bool, dict | None]:
    """The joint training loop from state.step (as `backdoor_core.fit`).

    Returns (state, finished, metrics of the last epoch evaluated here or None).
    """
    train, spe, step = job.train, steps_per_epoch(len(job.train), config.batch_size), int(state.step)
    metrics_now = None
    for epoch in range(step // spe, config.epochs):
        order = list(batch_indices(len(train), config.batch_size, seed=config.seed, epoch=epoch))[step - epoch * spe:]
        start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for idx in tqdm(order, desc=f"IAD epoch {epoch + 1}/{config.epochs}", disable=not job.progress, leave=False):
            state, metrics = step_fn(state, *shard_batch(mesh, train.images[idx], train.labels[idx]))
            step += 1
            loss_sum, correct = loss_sum + metrics["loss"] * len(idx), correct + metrics["correct"]
            seen += len(idx)
            if (job.stop_after_steps is not None and step >= job.stop_after_steps) or (stop_requested() and step % spe):
                checkpoints.save(step, state)
                return state, False, None
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step % spe:
                checkpoints.save(step, state)
        seconds = time.perf_counter() - start
        row = {"epoch": epoch + 1, "step": step, "train_loss": float(loss_sum) / max(seen, 1),
               "train_acc": int(correct) / max(seen, 1), "epoch_time_s": seconds, "images_per_s": seen / seconds}
        metrics_now = evaluate(module, jax.device_get(state.variables()), state_trigger(state, arch), job, mesh)
        row.update(metrics_now)
        rundir.append_history(run_dir, row)
        if job.progress:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        checkpoints.save(step, state)
        if stop_requested():  # Ctrl-C / SIGTERM under the CLI (mid-epoch: above)
            return state, epoch + 1 == config.epochs, metrics_now
    return state, True, metrics_now


def train_iad(job: BackdoorJob) -> tuple[FitResult, Trigger]:
    """Steps 1-5 into job.run_dir (resumable like `backdoor_core.fit.fit`): (FitResult, Trigger)."""
    params: IADParams = job.params
    config = job.train_config.with_dataset_defaults(job.train).validate()
    mesh = job.mesh or make_mesh()
    check_batch_size(config.batch_size, mesh)
    check_split_fits(job.train, job.spec)
    if batch_counts(config.batch_size, params)[0] < 1:
        raise InputError(f"iad: backdoor_ratio {params.backdoor_ratio} of batch {config.batch_size} is no image; "
                         "expected a larger ratio or batch")
    spe = steps_per_epoch(len(job.train), config.batch_size)
    if spe == 0:
        raise InputError(f"training data: {len(job.train)} images is less than one batch of {config.batch_size}")
    arch = params.architecture(job.train.image_shape)
    record = {"kind": "attack", "dataset": job.train.name, "model": job.spec.to_dict(), **job.record}
    record["config"] = {**record.get("config", {}), "train": dataclasses.asdict(config)}
    tx, tx_g = make_optimizer(config, spe * config.epochs), generator_optimizer(params, config, spe * config.epochs)
    module = build_model(job.spec)
    with rundir.open_run(job.run_dir, record, with_train_defaults(job.defaults)) as (run_dir, resuming):
        checkpoints = TrainCheckpoints(run_dir / rundir.CHECKPOINTS, config.max_to_keep)
        state = initial_state(job, config, tx, tx_g, arch)
        if resuming and checkpoints.latest_step() is not None:
            state = checkpoints.restore(state)
            rundir.truncate_history(run_dir, int(state.step))
        else:  # step 2, itself resumable; its checkpoints go once the joint state holds its result
            mask_checkpoints = TrainCheckpoints(run_dir / MASK_CHECKPOINTS, config.max_to_keep)
            m_params, pretrained = pretrain_mask(state.mask_generator, job.train, params, config, *arch, mesh,
                                                 jax.random.fold_in(job.key, 7), job.progress, mask_checkpoints)
            mask_checkpoints.close()
            if not pretrained:
                checkpoints.close()
                return FitResult(jax.device_get(state.variables()), rundir.read_history(run_dir), False,
                                 run_dir), state_trigger(state, arch)
            state = state.replace(mask_generator=m_params)
            checkpoints.save(0, state)
            shutil.rmtree(run_dir / MASK_CHECKPOINTS, ignore_errors=True)
        step_fn = make_iad_step(module, tx, tx_g, mesh, params, job.config, job.train.num_classes, arch,
                                config.batch_size, crop_padding=config.crop_padding, hflip=config.hflip,
                                augmentation=config.augmentation)
        state, complete, last = _run_epochs(step_fn, replicate(mesh, state), job, config, mesh, checkpoints,
                                            run_dir, arch, module)
        variables, trigger = jax.device_get(state.variables()), state_trigger(state, arch)
        if complete:
            save_variables(run_dir / rundir.MODEL, variables)
            final = last if last is not None else evaluate(module, variables, trigger, job, mesh)
            rundir.update_record(run_dir, status="complete", metrics=final, steps=int(state.step))
        checkpoints.close()
    return FitResult(variables, rundir.read_history(run_dir), complete, run_dir), trigger


class InputAwareDynamic(Attack):
    """Generator-made, sample-specific triggers trained jointly with the classifier (module docstring)."""

    name = "iad"
    params_type = IADParams
    custom_training = True

    def validate(self, config: AttackConfig, params: IADParams, image_shape, num_classes) -> None:
        super().validate(config, params, image_shape, num_classes)
        checks = [(0 < params.backdoor_ratio < 1, "backdoor_ratio", "in (0, 1)"),
                  (0 <= params.cross_ratio < 1, "cross_ratio", "in [0, 1)"),
                  (params.backdoor_ratio + params.cross_ratio < 1, "backdoor_ratio + cross_ratio", "below 1"),
                  (params.lambda_div >= 0, "lambda_div", "non-negative"),
                  (params.lambda_norm >= 0, "lambda_norm", "non-negative"),
                  (0 < params.mask_density < 1, "mask_density", "in (0, 1)"),
                  (params.mask_epochs >= 0, "mask_epochs", "non-negative"),
                  (params.generator_lr > 0, "generator_lr", "positive"),
                  (params.base_channels is None or params.base_channels >= 1, "base_channels", "at least 1 (or None)"),
                  (params.depth is None or params.depth >= 1, "depth", "at least 1 (or None)"),
                  (isinstance(params.augment_after_trigger, bool), "augment_after_trigger", "True or False"),
                  (isinstance(params.augment_mask_batches, bool), "augment_mask_batches", "True or False")]
        check_settings("iad", params, checks,
                       values={"backdoor_ratio + cross_ratio": params.backdoor_ratio + params.cross_ratio})

    def build_trigger(self, config, params, train, key, clean_model=None) -> Trigger:
        """An untrained trigger (fresh generators); the trained one comes from `train_backdoored`."""
        arch = params.architecture(train.image_shape)
        return iad_trigger(*init_generators(key, train.image_shape, *arch), *arch)

    def train_backdoored(self, job: BackdoorJob):
        return train_iad(job)


IAD = InputAwareDynamic()
