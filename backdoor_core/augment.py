"""On-device data augmentation: pure, jittable functions of (key, images).

Images are float32 NHWC in [0, 1]. Each function draws its randomness per image from `key`.
"""

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [N, H, W, C] in [0, 255] -> float32 [N, H, W, C] in [0, 1] (float input passes)."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Zero-pads each image by `padding` pixels and crops back to H x W at a random offset.

    images: [N, H, W, C]; returns [N, H, W, C]. padding = 0 returns the input.
    """
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Flips each image left-right with probability 1/2. images: [N, H, W, C]."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def crop_and_flip(key: jax.Array, images: jax.Array, padding: int, hflip: bool) -> jax.Array:
    """The standard training augmentation: random crop with zero padding, then optional flip."""
    crop_key, flip_key = jax.random.split(key)
    images = random_crop(crop_key, images, padding)
    return random_flip(flip_key, images) if hflip else images
