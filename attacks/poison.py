"""Static poisoning of a training split, per-batch poisoning, and the triggered test set for ASR.

Poisoning (pure in (split, config, trigger, seed)):
  1. candidates: dirty-label attacks take the images whose label is not the target (all-to-one)
     or every image (all-to-all); clean-label attacks take the target-class images;
  2. count = round-half-up(poison_ratio * M), M = the split's size (ratio_of="dataset") or the
     number of target-class images (ratio_of="target_class");
  3. draw `count` candidates without replacement (numpy Generator seeded with `seed`);
  4. trigger them (float, clipped, rounded back to uint8) and, for dirty-label attacks, relabel
     them with their target (config.target, or (y + 1) mod C for all-to-all).
The poisoned indices are returned as ground truth for experiments; a defense never sees them.

Per-batch poisoning (`AttackConfig.poisoning = "per_batch"`, `per_batch_transform`): in the
training step, after augmentation, the first round-half-up(poison_ratio * B) images of every
batch of B are triggered and relabelled with their targets (batches are shuffled, so which images
these are is random). The official PBE code trains its BadNets and Blend teachers this way
(flooring the count: 12 of 128 where this rounds to 13, as WaNet's does).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from attacks.base import AttackConfig, poison_target
from attacks.triggers import Trigger, apply_to_uint8
from backdoor_core.data import Split
from backdoor_core.errors import InputError


def poison_count(config: AttackConfig, labels: np.ndarray) -> int:
    """Number of images to poison: round-half-up(poison_ratio * M), M per `config.ratio_of`."""
    m = len(labels) if config.ratio_of == "dataset" else int(np.sum(labels == config.target))
    return int(np.floor(config.poison_ratio * m + 0.5))


def select_poison_indices(labels: np.ndarray, config: AttackConfig, *, clean_label: bool,
                          seed: int | None = None) -> np.ndarray:
    """Sorted int64 indices [count] of the images to poison (steps 1-3 of the module docstring)."""
    labels = np.asarray(labels)
    if clean_label:
        candidates = np.flatnonzero(labels == config.target)
    elif config.mode == "all_to_all":
        candidates = np.arange(len(labels))
    else:
        candidates = np.flatnonzero(labels != config.target)
    count = poison_count(config, labels)
    if count == 0:
        raise InputError(f"poison_ratio {config.poison_ratio} of {len(labels)} images poisons no image; "
                         "expected a larger ratio")
    if count > len(candidates):
        kind = "target-class" if clean_label else "non-target"
        raise InputError(f"poison_ratio {config.poison_ratio} asks for {count} poisoned images, but the split has "
                         f"only {len(candidates)} {kind} images to poison")
    rng = np.random.default_rng(config.seed if seed is None else seed)
    return np.sort(rng.choice(candidates, count, replace=False)).astype(np.int64)


def poison_split(split: Split, config: AttackConfig, trigger: Trigger, *, clean_label: bool = False,
                 seed: int | None = None) -> tuple[Split, np.ndarray]:
    """(poisoned copy of `split`, sorted int64 indices of the poisoned images).

    Dirty-label: the chosen images are triggered and relabelled with their targets. Clean-label:
    the chosen target-class images are triggered and keep their labels. `seed` defaults to
    config.seed; it picks the images and keys the trigger.
    """
    seed = config.seed if seed is None else seed
    indices = select_poison_indices(split.labels, config, clean_label=clean_label, seed=seed)
    images, labels = split.images.copy(), split.labels.copy()
    images[indices] = apply_to_uint8(trigger, split.images[indices], jax.random.PRNGKey(seed))
    if not clean_label:
        labels[indices] = poison_target(split.labels[indices], config, split.num_classes)
    return dataclasses.replace(split, images=images, labels=labels), indices


def per_batch_count(batch_size: int, poison_ratio: float) -> int:
    """Images triggered in a batch of `batch_size`: round-half-up(poison_ratio * batch_size), at most all."""
    return min(int(np.floor(poison_ratio * batch_size + 0.5)), batch_size)


def per_batch_transform(config: AttackConfig, trigger: Trigger, num_classes: int):
    """A jittable (key, images float [B,H,W,C] in [0, 1], labels int [B]) -> (images, labels) that
    triggers the first `per_batch_count(B, config.poison_ratio)` images (trigger keyed by `key`)
    and gives them their targets (config.target, or (y + 1) mod C for all-to-all); the rest pass
    unchanged. The images stay float (not rounded to uint8, unlike static poisoning)."""

    def transform(key, images, labels):
        b = images.shape[0]
        n = per_batch_count(b, config.poison_ratio)
        images = jnp.concatenate([trigger(images[:n], key), images[n:]])
        target = (labels + 1) % num_classes if config.mode == "all_to_all" else jnp.full_like(labels, config.target)
        return images, jnp.where(jnp.arange(b) < n, target, labels)

    return transform


@dataclasses.dataclass(frozen=True)
class TriggeredTest:
    """Test images whose true class is not their target, with the trigger applied.

    Attributes:
      images: uint8 [M, H, W, C] triggered images.
      clean_images: uint8 [M, H, W, C] the same images without the trigger.
      labels: int32 [M] true classes.
      targets: int32 [M] each image's attack target.
      indices: int64 [M] positions in the test split.
    """

    images: np.ndarray
    clean_images: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    indices: np.ndarray


def triggered_test_set(test: Split, config: AttackConfig, trigger: Trigger, seed: int = 0) -> TriggeredTest:
    """The ASR evaluation set: test images with label != target, triggered (all-to-all aware)."""
    targets = poison_target(test.labels, config, test.num_classes)
    indices = np.flatnonzero(test.labels != targets).astype(np.int64)
    clean = test.images[indices]
    triggered = apply_to_uint8(trigger, clean, jax.random.PRNGKey(seed))
    return TriggeredTest(triggered, clean, test.labels[indices], targets[indices], indices)
