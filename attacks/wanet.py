"""WaNet (Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021):
the trigger is a small, smooth, fixed warp of the whole image.

Steps (as in the authors' code):
  1. `random_field`: a k x k x 2 field uniform in [-1, 1], divided by its mean absolute value;
  2. `warping_grid`: the field upsampled bicubically (align_corners=True) to H x W, then
     grid = clip((identity + s * field / H) * grid_rescale, -1, 1), identity = the pixel
     centres in [-1, 1] (x = column, y = row, as torch's grid_sample);
  3. `grid_sample`: bilinear sampling of the image at the grid, align_corners=True, zeros
     outside (torch.nn.functional.grid_sample's convention, written in JAX);
  4. training poisons on the fly (`wanet_batch_transform`): in every batch of B images the
     first n_bd = round(poison_ratio * B) are warped and relabelled with their target, the
     next n_cross = round(cross_ratio * n_bd) get the warp plus a random per-pixel jitter
     uniform in [-1, 1] / H ("noise mode") and keep their labels, the rest stay clean. Batches
     are shuffled, so which images these are is random. The original code floors both counts.
     As in the authors' code (and BackdoorBench's), the batch is warped first and augmented
     after (`augment_after_warp`, `backdoor_core.train.BeforeAugmentation`): the warped images
     go through the random crop and flip like the others, so the backdoor must survive them.
     The other attacks see the augmented batch. Until 2026-12-07 WaNet did too (its warped
     images were never cropped or flipped); `augment_after_warp=False` gives that order back.
     The authors' own augmentation (crop with padding 5 on 80% of the batches, rotation up to
     10 degrees on about half the images of half of them, flip) is `TrainConfig.augmentation =
     "wanet"` (`backdoor_core.augment`); our teachers share one recipe (CIFAR-10: crop with
     padding 4, flip), the default.
Defaults: k = 4, s = 0.5, grid_rescale = 1, cross_ratio = 2 (BackdoorBench), augment_after_warp.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from attacks.base import Attack, AttackConfig
from attacks.poison import per_batch_count
from attacks.triggers import Trigger
from backdoor_core.errors import InputError
from backdoor_core.train import BeforeAugmentation

BICUBIC_A = -0.75  # torch's cubic convolution coefficient


@dataclasses.dataclass(frozen=True)
class WaNetParams:
    """WaNet settings: k (field resolution), s (warp strength), grid_rescale, cross_ratio (noise
    mode), augment_after_warp (the training batch is warped, then augmented: step 4)."""

    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    cross_ratio: float = 2.0
    augment_after_warp: bool = True


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float64 [n_out, n_in]: 1-D bicubic interpolation with align_corners=True (torch's weights)."""
    a = BICUBIC_A
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        x0 = int(np.floor(src))
        t = src - x0
        d = np.array([t + 1, t, 1 - t, 2 - t])  # distances to neighbours x0-1 .. x0+2
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        weights = np.where(d <= 1, near, far)
        for offset, wgt in zip(range(-1, 3), weights):
            m[i, min(max(x0 + offset, 0), n_in - 1)] += wgt
    return m


def random_field(key: jax.Array, k: int) -> np.ndarray:
    """Step 1: float32 [k, k, 2] uniform in [-1, 1], normalised to mean absolute value 1."""
    field = np.asarray(jax.random.uniform(key, (k, k, 2), minval=-1.0, maxval=1.0), np.float64)
    return (field / np.mean(np.abs(field))).astype(np.float32)


def identity_grid(height: int, width: int) -> np.ndarray:
    """float32 [H, W, 2]: (x, y) of each pixel centre in [-1, 1] (x along columns)."""
    ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    return np.stack([xs, ys], -1).astype(np.float32)


def warping_grid(field: np.ndarray, s: float, grid_rescale: float, height: int, width: int) -> np.ndarray:
    """Step 2: float32 [H, W, 2] sampling grid in [-1, 1] from a field [k, k, 2]."""
    k = field.shape[0]
    up = np.einsum("ik,klc,jl->ijc", bicubic_matrix(k, height), field.astype(np.float64), bicubic_matrix(k, width))
    grid = (identity_grid(height, width) + s * up / height) * grid_rescale
    return np.clip(grid, -1, 1).astype(np.float32)


def grid_sample(images: jax.Array, grid: jax.Array) -> jax.Array:
    """Step 3: bilinear samples [N, Ho, Wo, C] of images [N, H, W, C] at grid [N|1, Ho, Wo, 2] or [Ho, Wo, 2].

    grid holds (x, y) in [-1, 1], -1/+1 being the centres of the first/last pixels
    (align_corners=True); samples falling outside the image read zeros.
    """
    n, h, w, _ = images.shape
    grid = jnp.broadcast_to(grid, (n, *grid.shape[-3:]))
    x = (grid[..., 0] + 1) * 0.5 * (w - 1)
    y = (grid[..., 1] + 1) * 0.5 * (h - 1)
    x0, y0 = jnp.floor(x), jnp.floor(y)

    def corner(image, yi, xi):
        valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        yc, xc = jnp.clip(yi, 0, h - 1).astype(jnp.int32), jnp.clip(xi, 0, w - 1).astype(jnp.int32)
        return image[yc, xc] * valid[..., None]

    def sample(image, x, y, x0, y0):
        wx, wy = (x - x0)[..., None], (y - y0)[..., None]
        top = corner(image, y0, x0) * (1 - wx) + corner(image, y0, x0 + 1) * wx
        bottom = corner(image, y0 + 1, x0) * (1 - wx) + corner(image, y0 + 1, x0 + 1) * wx
        return top * (1 - wy) + bottom * wy

    return jax.vmap(sample)(images, x, y, x0, y0)


def apply_warp(arrays: dict, images: jax.Array, key: jax.Array, **settings) -> jax.Array:
    """The WaNet trigger: images [N, H, W, C] sampled at arrays['grid'] [H, W, 2].

    settings (k, s, grid_rescale) are recorded for reference; the grid already includes them.
    """
    del key, settings
    return grid_sample(images, arrays["grid"])


def wanet_trigger(field: np.ndarray, params: WaNetParams, image_shape: tuple[int, int, int]) -> Trigger:
    """The warp trigger: arrays {'field' [k, k, 2], 'grid' [H, W, 2]} and the settings."""
    h, w, _ = image_shape
    grid = warping_grid(field, params.s, params.grid_rescale, h, w)
    return Trigger.make("warp", {"field": field, "grid": grid}, k=field.shape[0], s=params.s,
                        grid_rescale=params.grid_rescale)


def batch_counts(batch_size: int, poison_ratio: float, cross_ratio: float) -> tuple[int, int]:
    """(n_bd, n_cross) of step 4, both rounded half up and capped by the batch size."""
    n_bd = per_batch_count(batch_size, poison_ratio)
    n_cross = min(int(np.floor(cross_ratio * n_bd + 0.5)), batch_size - n_bd)
    return n_bd, n_cross


def wanet_batch_transform(config: AttackConfig, params: WaNetParams, trigger: Trigger, num_classes: int):
    """Step 4: a jittable (key, images [B,H,W,C], labels [B]) -> (images, labels) poisoning each batch."""
    grid = trigger.arrays["grid"]

    def transform(key, images, labels):
        b, h = images.shape[0], images.shape[1]
        n_bd, n_cross = batch_counts(b, config.poison_ratio, params.cross_ratio)
        jitter = jax.random.uniform(key, (n_cross, *grid.shape), minval=-1.0, maxval=1.0) / h
        grids = jnp.concatenate([jnp.broadcast_to(grid, (n_bd, *grid.shape)),
                                 jnp.clip(grid + jitter, -1, 1)])
        warped = jnp.clip(grid_sample(images[:n_bd + n_cross], grids), 0.0, 1.0)
        images = jnp.concatenate([warped, images[n_bd + n_cross:]])
        target = (labels + 1) % num_classes if config.mode == "all_to_all" else jnp.full_like(labels, config.target)
        labels = jnp.where(jnp.arange(b) < n_bd, target, labels)
        return images, labels

    return transform


class WaNet(Attack):
    """Dirty-label warping attack, poisoned on the fly (see the module docstring)."""

    name = "wanet"
    params_type = WaNetParams
    on_the_fly = True

    def trigger_drawn_from_key(self, params) -> bool:
        return True  # the random warping field

    def validate(self, config: AttackConfig, params: WaNetParams, image_shape, num_classes) -> None:
        super().validate(config, params, image_shape, num_classes)
        if not 2 <= params.k <= min(image_shape[:2]):
            raise InputError(f"wanet: k = {params.k}; expected a field resolution in [2, {min(image_shape[:2])}]")
        if params.s < 0 or params.grid_rescale <= 0 or params.cross_ratio < 0:
            raise InputError(f"wanet: s = {params.s}, grid_rescale = {params.grid_rescale}, cross_ratio = "
                             f"{params.cross_ratio}; expected s >= 0, grid_rescale > 0, cross_ratio >= 0")
        if not isinstance(params.augment_after_warp, bool):
            raise InputError(f"wanet: augment_after_warp = {params.augment_after_warp!r}; expected True or False")
        if config.poison_ratio * (1 + params.cross_ratio) > 1:
            raise InputError(f"wanet: poison_ratio {config.poison_ratio} with cross_ratio {params.cross_ratio} "
                             "needs more than the whole batch; expected poison_ratio * (1 + cross_ratio) <= 1")

    def build_trigger(self, config, params, train, key, clean_model=None) -> Trigger:
        return wanet_trigger(random_field(key, params.k), params, train.image_shape)

    def batch_transform(self, config, params, trigger, num_classes):
        transform = wanet_batch_transform(config, params, trigger, num_classes)
        return BeforeAugmentation(transform) if params.augment_after_warp else transform


WANET = WaNet()
