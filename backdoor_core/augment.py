"""On-device data augmentation: pure, jittable functions of (key, images).

Images are float32 NHWC in [0, 1]. Each function draws its randomness per image from `key`
(the "wanet" recipe also per batch, as the official code does).

Training recipes (`augment`, `TrainConfig.augmentation`):
  crop_flip: random crop with zero padding, then a flip if the dataset allows it (BackdoorBench's
    recipe; every teacher of this library's matrices).
  wanet: the official WaNet code's `PostTensorTransform` (kornia; BackdoorBench's WaNet uses it
    too), run on each training batch: a random crop on 80% of the batches (decided per batch),
    a rotation by an angle uniform in +-10 degrees of each image with probability 1/2 on half of
    the batches (kornia's RandomRotation draws per image with its default p = 0.5 inside the
    per-batch choice; bilinear, zero fill), then the flip.
  iad: the official IAD code's torchvision training transforms (its dataloader, per image):
    a random crop, a rotation by an angle uniform in +-10 degrees (nearest neighbour, zero fill:
    torchvision's defaults), then the flip.
Both official codes pad their crop by 5 pixels (`OFFICIAL_CROP_PADDING`, the
`TrainConfig.crop_padding` default for these recipes).
"""

import math

import jax
import jax.numpy as jnp

AUGMENTATIONS = ("crop_flip", "wanet", "iad")
OFFICIAL_CROP_PADDING = 5  # the official WaNet and IAD codes' --random_crop
OFFICIAL_ROTATION = 10.0  # their --random_rotation, in degrees


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


def bilinear_sample(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """image [H,W,C] sampled at float coordinates y, x [H',W'] -> [H',W',C]; zero outside."""
    h, w, _ = image.shape
    y0, x0 = jnp.floor(y), jnp.floor(x)
    wy, wx = y - y0, x - x0
    out = jnp.zeros(y.shape + image.shape[-1:], image.dtype)
    for dy, dx, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        yi, xi = (y0 + dy).astype(jnp.int32), (x0 + dx).astype(jnp.int32)
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        pixel = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
        out = out + jnp.where(inside, weight, 0.0)[..., None] * pixel
    return out


def nearest_sample(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """image [H,W,C] at the pixels nearest to float coordinates y, x [H',W'] -> [H',W',C]; zero outside."""
    h, w, _ = image.shape
    yi, xi = jnp.round(y).astype(jnp.int32), jnp.round(x).astype(jnp.int32)
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    return jnp.where(inside[..., None], image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)], 0.0)


def rotate(images: jax.Array, angles: jax.Array, nearest: bool = False) -> jax.Array:
    """Rotates each image [N,H,W,C] about its centre by angles [N] (radians), zero fill;
    bilinear, or nearest-neighbour if `nearest`."""
    _, h, w, _ = images.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
    sample = nearest_sample if nearest else bilinear_sample

    def one(image, angle):
        cos, sin = jnp.cos(angle), jnp.sin(angle)  # inverse map: output pixel <- rotated source point
        return sample(image, cos * yy + sin * xx + cy, -sin * yy + cos * xx + cx)

    return jax.vmap(one)(images, angles)


def random_rotation(key: jax.Array, images: jax.Array, degrees: float, nearest: bool = False) -> jax.Array:
    """Each image [N,H,W,C] rotated by its own angle, uniform in [-degrees, degrees] (`rotate`),
    clipped to [0, 1]."""
    angles = jax.random.uniform(key, (images.shape[0],), jnp.float32, -1.0, 1.0) * math.radians(degrees)
    return jnp.clip(rotate(images, angles, nearest), 0.0, 1.0)


def post_tensor_transform(key: jax.Array, images: jax.Array, *, padding: int, crop_prob: float, degrees: float,
                          rotation_prob: float, hflip: bool, image_rotation_prob: float = 0.5) -> jax.Array:
    """The official WaNet and PBE codes' `PostTensorTransform` (kornia) on a batch [N,H,W,C]: with
    probability crop_prob for the whole batch, a random crop with zero padding (an offset per
    image); with probability rotation_prob for the whole batch, each image with probability
    image_rotation_prob (kornia RandomRotation's default 0.5) rotated by an angle uniform in
    [-degrees, degrees] (bilinear, zero fill); then a flip of each image if hflip."""
    crop_on, crop_key, rotation_on, rotation_pick, rotation_key, flip_key = jax.random.split(key, 6)
    images = jnp.where(jax.random.bernoulli(crop_on, crop_prob), random_crop(crop_key, images, padding), images)
    picked = (jax.random.bernoulli(rotation_on, rotation_prob)
              & jax.random.bernoulli(rotation_pick, image_rotation_prob, (images.shape[0], 1, 1, 1)))
    images = jnp.where(picked, random_rotation(rotation_key, images, degrees), images)
    return random_flip(flip_key, images) if hflip else images


def wanet_augment(key: jax.Array, images: jax.Array, padding: int, hflip: bool) -> jax.Array:
    """The "wanet" recipe (module docstring) on a batch [N,H,W,C]: `post_tensor_transform` with
    the official code's values (crop on 80% of the batches, rotation up to 10 degrees on half)."""
    return post_tensor_transform(key, images, padding=padding, crop_prob=0.8, degrees=OFFICIAL_ROTATION,
                                 rotation_prob=0.5, hflip=hflip)


def iad_augment(key: jax.Array, images: jax.Array, padding: int, hflip: bool) -> jax.Array:
    """The "iad" recipe (module docstring) on a batch [N,H,W,C]: crop, nearest-neighbour rotation, flip."""
    crop_key, rotation_key, flip_key = jax.random.split(key, 3)
    images = random_rotation(rotation_key, random_crop(crop_key, images, padding), OFFICIAL_ROTATION, nearest=True)
    return random_flip(flip_key, images) if hflip else images


def augment(key: jax.Array, images: jax.Array, recipe: str, padding: int, hflip: bool) -> jax.Array:
    """A training batch [N,H,W,C] augmented by `recipe` (one of AUGMENTATIONS, module docstring)
    with crop padding `padding` and the flip if `hflip`; "crop_flip" is `crop_and_flip`."""
    recipes = {"crop_flip": crop_and_flip, "wanet": wanet_augment, "iad": iad_augment}
    if recipe not in recipes:
        raise ValueError(f"augmentation {recipe!r}; expected one of {AUGMENTATIONS}")
    return recipes[recipe](key, images, padding, hflip)
