"""DHBE's generators: the sample generator G and the trigger generator G_p (two families).

All generators run with batch-norm in training mode (batch statistics), as in the DFAD/DHBE
code; their running averages are never read, so they are not kept.

- `SampleGenerator` (G, the DFAD generator): z [B, nz] -> images [B, H, W, C] in [0, 1].
  Linear(nz -> 2ngf*(H/4)*(W/4)), BN; 2x nearest upsample, Conv3x3 2ngf->2ngf, BN, LeakyReLU
  0.2; 2x upsample, Conv3x3 2ngf->ngf, BN, LeakyReLU 0.2; Conv3x3 ngf->C; tanh; BN(C, no
  affine). With the default ngf = 64 the widths are the 128/128/64 of the official code.
  The official code feeds that last output y to the classifier as an already-normalised
  image. Here images live in pixel space and the classifier normalises them itself, so G
  emits x = mean + std * y (the dataset's normalisation, read from the teacher): the teacher
  then sees exactly the official input. x is clipped to [0, 1] with a straight-through
  gradient (DEVIATION, required by the project's convention: valid images, and the official
  gradients wherever a pixel saturates).
- `PatchTriggerGenerator` (G_p, small patches p1): z2 [B, nz2] -> patches [B, P, P, C] in
  [-1, 1]: Linear(nz2 -> 64*P*P), BN(64), Conv3x3 64->C, BN(C, no affine), tanh.
- `FullTriggerGenerator` (G_p, large triggers p2, the paper's figure; absent from the official
  code): z2' [B, nz2] -> patterns [B, H, W, C] in [-1, 1], the sample generator's architecture
  at width `ngf` with a tanh output; scaled by sigma / (H*W) where it is added.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from backdoor_core.models.conv import conv_fn

_bn = dict(use_running_average=False, momentum=0.9, epsilon=1e-5)


def _upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling of [B, H, W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class _UpsamplingTrunk(nn.Module):
    """Linear -> BN -> [up, conv 2ngf, BN, lrelu] -> [up, conv ngf, BN, lrelu] -> conv C."""

    image_shape: tuple[int, int, int]
    ngf: int = 64

    @nn.compact
    def __call__(self, z):
        h, w, c = self.image_shape
        if h % 4 or w % 4:
            raise ValueError(f"generator: image sides must be multiples of 4, got {h}x{w}")
        wide = 2 * self.ngf
        x = nn.Dense(wide * (h // 4) * (w // 4))(z).reshape(z.shape[0], h // 4, w // 4, wide)
        x = nn.BatchNorm(**_bn)(x)
        for features in (wide, self.ngf):
            x = nn.Conv(features, (3, 3), padding=1, conv_general_dilated=conv_fn())(_upsample2x(x))
            x = nn.leaky_relu(nn.BatchNorm(**_bn)(x), 0.2)
        return nn.Conv(c, (3, 3), padding=1, conv_general_dilated=conv_fn())(x)


def straight_through_clip(x: jax.Array) -> jax.Array:
    """clip(x, 0, 1) in the forward pass, the identity in the backward pass."""
    return x + jax.lax.stop_gradient(jnp.clip(x, 0.0, 1.0) - x)


class SampleGenerator(nn.Module):
    """G: latent z [B, nz] -> synthetic images [B, H, W, C] in [0, 1].

    mean, std: the teacher's per-channel normalisation (length 1 or C).
    """

    image_shape: tuple[int, int, int]
    ngf: int = 64
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)

    @nn.compact
    def __call__(self, z):
        y = jnp.tanh(_UpsamplingTrunk(self.image_shape, self.ngf)(z))
        y = nn.BatchNorm(use_scale=False, use_bias=False, **_bn)(y)
        return straight_through_clip(jnp.asarray(self.mean) + jnp.asarray(self.std) * y)


class PatchTriggerGenerator(nn.Module):
    """G_p (small patches): latent z2 [B, nz2] -> patches [B, P, P, C] in [-1, 1]."""

    patch_size: int
    channels: int

    @nn.compact
    def __call__(self, z):
        p = self.patch_size
        x = nn.Dense(64 * p * p)(z).reshape(z.shape[0], p, p, 64)
        x = nn.BatchNorm(**_bn)(x)
        x = nn.Conv(self.channels, (3, 3), padding=1, conv_general_dilated=conv_fn())(x)
        x = nn.BatchNorm(use_scale=False, use_bias=False, **_bn)(x)
        return jnp.tanh(x)


class FullTriggerGenerator(nn.Module):
    """G_p (large triggers): latent z2' [B, nz2] -> full-image patterns [B, H, W, C] in [-1, 1]."""

    image_shape: tuple[int, int, int]
    ngf: int = 64

    @nn.compact
    def __call__(self, z):
        return jnp.tanh(_UpsamplingTrunk(self.image_shape, self.ngf)(z))


def apply_train_mode(module: nn.Module, params, z: jax.Array) -> jax.Array:
    """Runs a generator with batch statistics, discarding its (unused) running averages."""
    out, _ = module.apply({"params": params}, z, mutable=["batch_stats"])
    return out


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_params(module: nn.Module, key: jax.Array, nz: int):
    """Parameters of a generator taking latents [B, nz] (one compiled program)."""
    return module.init(key, jnp.zeros((2, nz)))["params"]
