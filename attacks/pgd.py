"""Projected gradient descent (PGD) adversarial examples, L-infinity or L2.

Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018. PBE (Mu et al., CVPR 2023) uses untargeted L-inf PGD with
eps = 6/255, alpha = 1.2/255, 7 steps and no random start (`PGDConfig.pbe()`).

Algorithm (`pgd`), for images x0 [N, H, W, C] in [0, 1] and labels y [N]:
  1. Start at x = x0, or (random_start) at a uniform point of the eps-ball around x0.
  2. Repeat `steps` times, inside one `lax.fori_loop`:
     a. g = d/dx of the summed cross-entropy CE(f(x), y); negated when targeted (y is then
        the target and the loss is minimised).
     b. Step: x + alpha * sign(g) (L-inf) or x + alpha * g / |g|_2 per image (L2).
     c. Project onto the eps-ball around x0 (clip per pixel for L-inf, rescale for L2).
     d. Clip to [0, 1]. The official PBE code skips this clip; this project keeps every image
        in pixel range (DESIGN.md), so adversarial examples are valid images.
  3. Return x (no gradient flows out).

`make_pgd_fn` jits the attack for a flax model in inference mode, with batches split over a
mesh's `data` axis; `pgd_dataset` runs it over a whole array in fixed-size batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from backdoor_core.augment import to_float
from backdoor_core.data import check_pixels
from backdoor_core.errors import InputError, check_settings
from backdoor_core.sharding import check_batch_size, data_sharding, make_mesh, replicate, replicated, unroll_loops

NORMS = ("linf", "l2")
_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """PGD settings, in pixel units of images in [0, 1].

    Attributes:
      eps: radius of the perturbation ball (L-inf: per pixel; L2: per image).
      alpha: step size.
      steps: number of gradient steps.
      norm: "linf" (sign steps, per-pixel clip) or "l2" (normalised steps, ball projection).
      targeted: if True the labels are targets and the loss is minimised toward them.
      random_start: start from a uniform random point of the eps-ball instead of x0.
    """

    eps: float
    alpha: float
    steps: int
    norm: str = "linf"
    targeted: bool = False
    random_start: bool = False

    @classmethod
    def pbe(cls) -> "PGDConfig":
        """PBE's official setting: untargeted L-inf, eps 6/255, alpha 1.2/255, 7 steps."""
        return cls(eps=6 / 255, alpha=1.2 / 255, steps=7)

    def validate(self) -> "PGDConfig":
        """Returns self, or raises InputError naming the first bad setting."""
        checks = [(self.eps > 0, "eps", "positive"), (self.alpha > 0, "alpha", "positive"),
                  (int(self.steps) == self.steps and self.steps >= 1, "steps", "an integer >= 1"),
                  (self.norm in NORMS, "norm", f"one of {NORMS}")]
        check_settings("PGD config", self, checks)
        return self


PBE_PGD = PGDConfig.pbe()

LogitsFn = Callable[[jax.Array], jax.Array]


def _per_image_norm(x: jax.Array) -> jax.Array:
    """L2 norm of each image of x [N, ...], shaped [N, 1, 1, 1] for broadcasting."""
    return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))


def project(x: jax.Array, x0: jax.Array, config: PGDConfig) -> jax.Array:
    """Projects x [N,H,W,C] onto the eps-ball around x0 (config.norm), then onto [0, 1]^D.

    The [0, 1] clip after the ball projection keeps x inside the ball: clipping moves each
    coordinate toward x0, which is itself in [0, 1].
    """
    delta = x - x0
    if config.norm == "linf":
        delta = jnp.clip(delta, -config.eps, config.eps)
    else:
        delta = delta * jnp.minimum(1.0, config.eps / (_per_image_norm(delta) + _TINY))
    return jnp.clip(x0 + delta, 0.0, 1.0)


def random_start(key: jax.Array, x0: jax.Array, config: PGDConfig) -> jax.Array:
    """A random point of the eps-ball around x0 [N,H,W,C], clipped to [0, 1].

    L-inf: uniform per pixel in [-eps, eps]. L2: a uniform direction times eps * u^(1/D),
    u ~ U(0, 1) (uniform in the ball's volume, D pixels per image).
    """
    if config.norm == "linf":
        delta = jax.random.uniform(key, x0.shape, x0.dtype, -config.eps, config.eps)
    else:
        dir_key, radius_key = jax.random.split(key)
        direction = jax.random.normal(dir_key, x0.shape, x0.dtype)
        direction = direction / (_per_image_norm(direction) + _TINY)
        dims = int(np.prod(x0.shape[1:]))
        u = jax.random.uniform(radius_key, (x0.shape[0], 1, 1, 1), x0.dtype)
        delta = direction * config.eps * u ** (1.0 / dims)
    return jnp.clip(x0 + delta, 0.0, 1.0)


def ascent_direction(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, targeted: bool) -> jax.Array:
    """Gradient [N,H,W,C] of the summed CE(logits_fn(x), labels), negated when targeted.

    The sum (not the mean) keeps each image's gradient independent of the batch size.
    """
    def loss(x):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), labels).sum()
        return -ce if targeted else ce

    return jax.grad(loss)(x)


def pgd_step(logits_fn: LogitsFn, x: jax.Array, x0: jax.Array, labels: jax.Array,
             config: PGDConfig) -> jax.Array:
    """One PGD iteration (steps 2a-2d): gradient step, ball projection, [0, 1] clip."""
    g = ascent_direction(logits_fn, x, labels, config.targeted)
    if config.norm == "linf":
        step = jnp.sign(g)
    else:
        step = g / (_per_image_norm(g) + _TINY)
    return project(x + config.alpha * step, x0, config)


def _check_inputs(images, labels) -> None:
    """Raises InputError unless images are [N,H,W,C] and labels are integer [N]."""
    if images.ndim != 4:
        raise InputError(f"PGD: images have shape {images.shape}; expected [N, H, W, C]")
    if labels.shape != images.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise InputError(f"PGD: labels have shape {labels.shape} and dtype {labels.dtype}; "
                         f"expected integers of shape ({images.shape[0]},)")


def pgd(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, key: jax.Array | None,
        config: PGDConfig) -> jax.Array:
    """PGD adversarial examples [N,H,W,C] in [0, 1] and within `config.eps` of `images`.

    Pure and traceable: call it inside any jitted function (PBE's training step does).
    Args:
      logits_fn: pure function x [N,H,W,C] -> logits [N,K] (e.g. a model in inference mode).
      images: float [N,H,W,C] in [0, 1]; labels: int [N] (the targets when config.targeted).
      key: PRNG key for the random start (unused, may be None, without one).
      config: a `PGDConfig`.
    """
    config.validate()
    _check_inputs(images, labels)
    x0 = jnp.asarray(images, jnp.float32)
    if config.random_start:
        if key is None:
            raise InputError("PGD: random_start needs a PRNG key; got None")
        x = random_start(key, x0, config)
    else:
        x = x0
    # Unrolled at compile time on CPU: XLA:CPU runs the convolutions of a rolled loop body several
    # times slower (7 PBE steps of PreAct-ResNet-18/4, batch 128: 14.4 s rolled, 2.3 s unrolled).
    x = jax.lax.fori_loop(0, int(config.steps), lambda _, x: pgd_step(logits_fn, x, x0, labels, config), x,
                          unroll=unroll_loops())
    return jax.lax.stop_gradient(x)


def model_logits_fn(model: nn.Module, variables: dict) -> LogitsFn:
    """x -> model.apply(variables, x, train=False): the model in inference mode."""
    return lambda x: model.apply(variables, x, train=False)


@dataclasses.dataclass(frozen=True)
class PGDFn:
    """A compiled PGD attack on one model: call it as fn(images, labels, key) -> adversarial.

    images: uint8 or float [B,H,W,C] (B a multiple of the mesh's devices), labels int [B],
    key: PRNG key. Returns float32 [B,H,W,C] in [0, 1], sharded over the mesh's data axis.
    `jitted` is the underlying jitted function (variables, images, labels, key).
    """

    jitted: Callable
    variables: Any
    mesh: Mesh
    config: PGDConfig

    def __call__(self, images, labels, key) -> jax.Array:
        check_batch_size(images.shape[0], self.mesh, "PGD batch size")
        return self.jitted(self.variables, images, labels, key)


def make_pgd_fn(model: nn.Module, variables: dict, config: PGDConfig, mesh: Mesh | None = None) -> PGDFn:
    """Jits PGD against `model` (inference mode) with batches split over `mesh`'s data axis.

    `variables` ({'params', 'batch_stats'}) are replicated once and passed as an argument (not
    baked into the program), so the function compiles once per batch shape.
    """
    config.validate()
    mesh = mesh or make_mesh()

    def attack(variables, images, labels, key):
        return pgd(model_logits_fn(model, variables), to_float(images), labels, key, config)

    data, rep = data_sharding(mesh), replicated(mesh)
    jitted = jax.jit(attack, in_shardings=(rep, data, data, rep), out_shardings=data)
    return PGDFn(jitted, replicate(mesh, variables), mesh, config)


def pgd_dataset(pgd_fn: PGDFn, images: np.ndarray, labels: np.ndarray, key: jax.Array, *,
                batch_size: int = 500) -> np.ndarray:
    """Adversarial examples float32 [N,H,W,C] for a whole array, in fixed-size batches.

    images: uint8, or float in [0, 1], [N,H,W,C]; labels: int [N]. The last batch is padded
    so one compiled program serves any N; batch i uses key fold_in(key, i).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise InputError(f"PGD: {len(images)} images but {len(labels)} labels; expected as many of each")
    check_pixels(images, "PGD: images")
    n_dev = pgd_fn.mesh.devices.size
    batch_size = max(n_dev, -(-min(batch_size, max(len(images), 1)) // n_dev) * n_dev)
    out = []
    for i, start in enumerate(range(0, len(images), batch_size)):
        x, y = images[start:start + batch_size], labels[start:start + batch_size].astype(np.int32)
        n = len(x)
        if n < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(batch_size - n, np.int32)])
        out.append(np.asarray(pgd_fn(x, y, jax.random.fold_in(key, i)))[:n])
    return np.concatenate(out) if out else np.zeros(images.shape, np.float32)
