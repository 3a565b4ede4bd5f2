"""Backdoor detection from adversarial examples (the observation behind PBE, Mu et al., CVPR 2023).

Untargeted adversarial examples of a backdoored model pile into its target class; for a clean
model they spread over the classes. The official code does not implement detection; this is
the project's extra. Algorithm (`detect`), on unlabelled images:
  1. Sample up to `num_images` images (seeded).
  2. Label them with the model's own predictions (no ground truth needed).
  3. Untargeted PGD (`attacks.pgd`, PBE's eps 6/255 by default) against those labels.
  4. Among the images whose prediction the attack changed, count the adversarial predicted
     classes: the distribution p over K classes.
  5. Suspected target = argmax p; concentration = max p, the share of successful adversarial
     examples that land in it.
Why the top-class share: it is exactly the quantity the argmax decision rests on, reads like an
ASR ("62% of the flipped images go to class 0"), is in [1/K, 1] whatever happens to the other
classes, and is stable with a few hundred images. Normalised entropy (also reported) also
reacts to how the remaining mass is spread, which says nothing about a single target.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np

from attacks.pgd import PGDConfig, make_pgd_fn, pgd_dataset
from backdoor_core.errors import InputError, check_argument, check_settings, is_seed
from backdoor_core.models import check_variables_fit
from backdoor_core.sharding import make_mesh
from backdoor_core.train import predict, predict_logits


@dataclasses.dataclass(frozen=True)
class DetectConfig:
    """Detection settings: the attack, the sample and its batch.

    Attributes:
      pgd: the untargeted attack (default PBE's: eps 6/255, alpha 1.2/255, 7 steps).
      num_images: images sampled (all if fewer are given).
      batch_size: PGD batch (rounded up to a multiple of the devices).
      seed: which images are sampled.
    """

    pgd: PGDConfig = PGDConfig.pbe()
    num_images: int = 500
    batch_size: int = 250
    seed: int = 0

    def validate(self) -> "DetectConfig":
        """Returns self, or raises InputError naming the first bad setting."""
        checks = [(self.num_images >= 1, "num_images", "at least 1"), (self.batch_size >= 1, "batch_size", "at least 1"),
                  (is_seed(self.seed), "seed", "a non-negative integer")]
        check_settings("detect", self, checks)
        self.pgd.validate()
        return self


@dataclasses.dataclass(frozen=True)
class Detection:
    """The outcome of `detect`.

    Attributes:
      counts: int64 [K] adversarial predicted classes of the flipped images.
      suspected_target: argmax of counts.
      concentration: counts.max() / counts.sum() (0 when nothing flipped).
      normalized_entropy: H(counts / sum) / log K in [0, 1] (1: uniform; 1 when nothing flipped).
      flip_rate: share of sampled images whose prediction PGD changed.
      num_images: images attacked.
      input_counts: int64 [K] the model's predicted classes of the sampled images themselves,
        before the attack. On data-free inputs (noise, synthetic images) it says what the flips
        cannot: the matrix's Blended teacher sends all uniform noise to its target, which PGD then
        cannot flip (though a clean CIFAR-10 model also sends all of it to one class, frog).
      transitions: int64 [K, K] the flipped images by (prediction before, prediction after the
        attack); its column sums are `counts`. Where a backdoor maps each class to another
        (all-to-all, y -> y + 1) the top share of the columns does not show it, the rows can.
    """

    counts: np.ndarray
    suspected_target: int
    concentration: float
    normalized_entropy: float
    flip_rate: float
    num_images: int
    input_counts: np.ndarray
    transitions: np.ndarray

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "counts": [int(c) for c in self.counts],
                "input_counts": [int(c) for c in self.input_counts],
                "transitions": self.transitions.tolist()}


def class_distribution_stats(counts: np.ndarray) -> tuple[int, float, float]:
    """(argmax, top share, normalised entropy) of class counts [K] (steps 4-5)."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total == 0:
        return 0, 0.0, 1.0
    p = counts / total
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(len(counts)))
    return int(np.argmax(counts)), float(p.max()), entropy


def detect(module: nn.Module, variables: dict, images: np.ndarray, config: DetectConfig = DetectConfig(), *,
           mesh=None) -> Detection:
    """Runs steps 1-5 on `images` (uint8, or float in [0, 1], [N, H, W, C]) for a K-class model."""
    check_argument("detect", "config", config, DetectConfig, "a pbe_jax.DetectConfig")
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise InputError(f"detect: images have shape {images.shape}; expected a non-empty [N, H, W, C] array")
    config.validate()
    check_variables_fit(module, variables, images.shape[1:], "detect: variables")
    mesh = mesh or make_mesh()
    pick = np.sort(np.random.default_rng(config.seed).permutation(len(images))[:config.num_images])
    images = images[pick]
    logits = predict_logits(module, variables, images, mesh=mesh)
    labels, num_classes = logits.argmax(-1).astype(np.int32), logits.shape[-1]
    pgd_fn = make_pgd_fn(module, variables, config.pgd, mesh)
    adversarial = pgd_dataset(pgd_fn, images, labels, jax.random.PRNGKey(config.seed), batch_size=config.batch_size)
    adv_labels = predict(module, variables, adversarial, mesh=mesh)
    flipped = adv_labels != labels
    transitions = transition_counts(labels[flipped], adv_labels[flipped], num_classes)
    counts = transitions.sum(0)
    target, concentration, entropy = class_distribution_stats(counts)
    return Detection(counts, target, concentration, entropy, float(flipped.mean()), len(images),
                     np.bincount(labels, minlength=num_classes).astype(np.int64), transitions)


def transition_counts(before: np.ndarray, after: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [K, K]: entry (i, j) counts the images predicted i before and j after the attack
    (before, after: int [N] class indices in [0, K))."""
    return np.bincount(np.asarray(before) * num_classes + np.asarray(after),
                       minlength=num_classes * num_classes).astype(np.int64).reshape(num_classes, num_classes)
