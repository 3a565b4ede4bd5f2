"""Placing DHBE's generated triggers on images (pixel space, clipped to [0, 1]).

- Small patches p1 [B, P, P, C] are zero-padded to full size at a random position and added:
  `x_p = clip(x + pad(p1), 0, 1)`. The official code draws one position per batch per step
  (the default here); `per_sample=True` draws one per image.
- Large triggers p2 [B, H, W, C] in [-1, 1] are scaled by sigma / (H*W) and added.
The official code does not clip the triggered images (DEVIATION: clipped here, so every
input stays a valid image).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_positions(key: jax.Array, batch: int, image_hw: tuple[int, int], patch: int,
                     per_sample: bool) -> jax.Array:
    """Top-left corners [B, 2] at which a P x P patch fits entirely inside an H x W image."""
    h, w = image_hw
    n = batch if per_sample else 1
    corners = jax.random.randint(key, (n, 2), 0, jnp.array([h - patch + 1, w - patch + 1]))
    return jnp.broadcast_to(corners, (batch, 2))


def pad_patches(patches: jax.Array, positions: jax.Array, image_hw: tuple[int, int]) -> jax.Array:
    """Zero images [B, H, W, C] holding patch b [P, P, C] with its top-left at positions[b]."""
    h, w = image_hw
    canvas = jnp.zeros((h, w, patches.shape[-1]), patches.dtype)

    def place(patch, pos):
        return jax.lax.dynamic_update_slice(canvas, patch, (pos[0], pos[1], 0))

    return jax.vmap(place)(patches, positions)


def add_patches(key: jax.Array, images: jax.Array, patches: jax.Array, per_sample: bool = False) -> jax.Array:
    """clip(images + patches padded at random positions, 0, 1); images [B, H, W, C]."""
    hw = images.shape[1:3]
    positions = random_positions(key, images.shape[0], hw, patches.shape[1], per_sample)
    return jnp.clip(images + pad_patches(patches, positions, hw), 0.0, 1.0)


def add_full_triggers(images: jax.Array, patterns: jax.Array, sigma: float) -> jax.Array:
    """clip(images + sigma / (H*W) * patterns, 0, 1); both [B, H, W, C]."""
    h, w = images.shape[1:3]
    return jnp.clip(images + (sigma / (h * w)) * patterns, 0.0, 1.0)
