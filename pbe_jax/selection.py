"""PBE's clean-image selection (step 3): rank training images by how little their logits moved.

Mu et al., "Progressive Backdoor Erasing via connecting Backdoor and Adversarial Attacks",
CVPR 2023. After adversarial fine-tuning, a poisoned image's prediction leaves the target class
(the backdoor is weakened) while a clean image keeps its prediction, so
  1. z_i^0: logits of the backdoored model on every training image (no augmentation), once;
  2. z_i^t: logits of the current model after a round;
  3. s_i = 1/2 + 1/2 cos(z_i^0, z_i^t) in [0, 1] (1: the logits kept their direction);
  4. the next "clean" subset is the top `fraction` of the images by s_i.
The start subset (before any fine-tuning) is a uniformly random `fraction` of the images.
All functions run on the host in numpy: N x K logits are small.
"""

from __future__ import annotations

import numpy as np

from backdoor_core.errors import InputError

_TINY = 1e-12


def subset_size(num_images: int, fraction: float) -> int:
    """Number of images a `fraction` of `num_images` keeps: round-half-up(fraction * N)."""
    return int(np.floor(fraction * num_images + 0.5))


def consistency_scores(z0: np.ndarray, zt: np.ndarray) -> np.ndarray:
    """s_i = 1/2 + 1/2 cos(z0_i, zt_i) for logits z0, zt [N, K]; returns float64 [N] in [0, 1]."""
    z0, zt = np.asarray(z0, np.float64), np.asarray(zt, np.float64)
    if z0.ndim != 2 or z0.shape != zt.shape:
        raise InputError(f"selection: logits of shapes {z0.shape} and {zt.shape}; expected two equal [N, K] arrays")
    cos = np.sum(z0 * zt, 1) / (np.linalg.norm(z0, axis=1) * np.linalg.norm(zt, axis=1) + _TINY)
    return 0.5 + 0.5 * np.clip(cos, -1.0, 1.0)


def select_clean_subset(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted int64 indices [M] of the top `fraction` of images by score, M = subset_size.

    Ties are broken by index (stable sort), so the selection is deterministic.
    """
    scores = np.asarray(scores)
    count = _checked_size(len(scores), fraction, "selection")
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:count]).astype(np.int64)


# PBE's start is drawn from its own stream, seeded by (START_STREAM, seed). Seeded by `seed` alone
# (before 2026-12-06) it was the attack's stream: `attacks.poison.select_poison_indices` draws an
# all-to-all attack's indices with default_rng(seed).choice over every image, so at equal seeds (both
# default 0) the random 5% start was the first half of the poisoned set (on CIFAR-10 all-to-all
# BadNets: 2,500 of 2,500 poisoned; all-to-one draws from the non-target images and did not collide).
START_STREAM = 0x9BE  # any constant other than a seed; names PBE's start


def random_subset(num_images: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of a uniformly random `fraction` of range(num_images) (PBE's start),
    drawn from the stream (START_STREAM, seed), independent of the attack's seeded draws."""
    count = _checked_size(num_images, fraction, "initial subset")
    rng = np.random.default_rng([START_STREAM, seed])
    return np.sort(rng.choice(num_images, count, replace=False)).astype(np.int64)


def poison_stats(subset: np.ndarray, poisoned: np.ndarray | None) -> dict:
    """Diagnostics only: {'subset_poisoned': count, 'subset_poison_share': share} of a subset,
    given the ground-truth poisoned indices (empty dict when they are unknown)."""
    if poisoned is None:
        return {}
    count = int(np.isin(subset, poisoned).sum())
    return {"subset_poisoned": count, "subset_poison_share": count / max(len(subset), 1)}


def score_stats(scores: np.ndarray, poisoned: np.ndarray | None) -> dict:
    """Diagnostics only: mean score of the truly clean and truly poisoned images."""
    if poisoned is None or len(poisoned) == 0:
        return {"score_mean": float(np.mean(scores))}
    is_poisoned = np.zeros(len(scores), bool)
    is_poisoned[poisoned] = True
    return {"score_mean_clean": float(scores[~is_poisoned].mean()), "score_mean_poisoned": float(scores[is_poisoned].mean())}


def _checked_size(num_images: int, fraction: float, what: str) -> int:
    if not 0 < fraction <= 1:
        raise InputError(f"{what}: fraction {fraction!r}; expected a fraction in (0, 1]")
    count = subset_size(num_images, fraction)
    if count == 0:
        raise InputError(f"{what}: a fraction {fraction} of {num_images} images is empty; expected at least one image")
    return count
