"""Label-consistent backdoor attack, LC (Turner, Tsipras, Madry, "Label-Consistent Backdoor
Attacks", arXiv 1912.02771, 2019), in BackdoorBench's variant.

Clean-label: only target-class training images are poisoned and their labels stay. To make the
model rely on the trigger, the poisoned images are first made hard to classify.

Steps:
  1. `select_poison_indices` (clean-label): poison_ratio of the target-class images
     (`AttackConfig.ratio_of="target_class"`, LC's usual convention) or of the whole split.
  2. `harden`: untargeted L-inf PGD (`attacks.pgd`, eps 16/255) on a clean model moves each
     chosen image away from its (true, target) class.
  3. `four_corner_trigger`: a 3x3 black/white checkerboard pasted in each of the four corners
     (white on the outermost corner pixel, mirrored so the four corners look alike).
  4. The hard images get the corners and keep their labels; at test time the corners alone are
     pasted on non-target images.
The PGD step size and step count are this project's choice (BackdoorBench ships pre-computed
adversarial images): 2/255 for 10 steps reaches the 16/255 budget.

`attacks.backdoor.train_backdoor` hands `poison` the clean model and mesh that step 2 needs;
training is then the standard static-poisoning loop.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from attacks.base import Attack, AttackConfig, TrainedModel
from attacks.pgd import PGDConfig, make_pgd_fn, pgd_dataset
from attacks.poison import select_poison_indices
from attacks.triggers import Trigger
from backdoor_core.data import Split
from backdoor_core.errors import InputError


@dataclasses.dataclass(frozen=True)
class LCParams:
    """LC settings.

    Attributes:
      eps: L-inf budget of the adversarial perturbation (pixel units; BackdoorBench: 16/255).
      alpha, steps: PGD step size and number of steps.
      patch_size: side of each corner's checkerboard.
      batch_size: PGD batch size (rounded up to a multiple of the devices).
    """

    eps: float = 16 / 255
    alpha: float = 2 / 255
    steps: int = 10
    patch_size: int = 3
    batch_size: int = 256

    def pgd_config(self) -> PGDConfig:
        """The untargeted L-inf PGD of step 2."""
        return PGDConfig(eps=self.eps, alpha=self.alpha, steps=self.steps)


def corner_checkerboard(size: int) -> np.ndarray:
    """float32 [size, size]: 1 where row + col is even (white top-left pixel), else 0."""
    return ((np.arange(size)[:, None] + np.arange(size)[None, :]) % 2 == 0).astype(np.float32)


def four_corner_trigger(image_shape: tuple[int, int, int], size: int = 3) -> Trigger:
    """Step 3: masked-pattern trigger, mask [H,W,1] 1 on four size x size corners, pattern [H,W,C].

    Each corner holds the checkerboard mirrored so that its outermost pixel is white.
    """
    h, w, c = image_shape
    board = corner_checkerboard(size)
    mask = np.zeros((h, w, 1), np.float32)
    pattern = np.zeros((h, w, c), np.float32)
    for flip_rows, flip_cols in ((False, False), (False, True), (True, False), (True, True)):
        rows = slice(h - size, h) if flip_rows else slice(0, size)
        cols = slice(w - size, w) if flip_cols else slice(0, size)
        corner = board[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]
        mask[rows, cols] = 1.0
        pattern[rows, cols] = corner[:, :, None]
    return Trigger.make("masked_pattern", {"mask": mask, "pattern": pattern})


def harden(model: TrainedModel, images: np.ndarray, labels: np.ndarray, params: LCParams,
           key: jax.Array, mesh=None) -> np.ndarray:
    """Step 2: float32 [N,H,W,C] in [0, 1], images (uint8 [N,H,W,C]) after untargeted PGD.

    Each result is within params.eps (L-inf) of its image.
    """
    attack = make_pgd_fn(model.module, model.variables, params.pgd_config(), mesh)
    return pgd_dataset(attack, images, labels, key, batch_size=params.batch_size)


def label_consistent_poison(train: Split, config: AttackConfig, params: LCParams, trigger: Trigger,
                            clean_model: TrainedModel, key: jax.Array, mesh=None) -> tuple[Split, np.ndarray]:
    """Steps 1-4: (poisoned copy of train, sorted int64 indices of the poisoned images).

    The chosen target-class images are replaced by trigger(harden(image)), rounded to uint8;
    labels are unchanged.
    """
    indices = select_poison_indices(train.labels, config, clean_label=True)
    hard = harden(clean_model, train.images[indices], train.labels[indices], params, key, mesh)
    poisoned = np.asarray(trigger(hard))
    images = train.images.copy()
    images[indices] = np.round(poisoned * 255.0).astype(np.uint8)
    return dataclasses.replace(train, images=images), indices


class LabelConsistent(Attack):
    """Clean-label attack on adversarially hardened target-class images (module docstring)."""

    name = "lc"
    params_type = LCParams
    clean_label = True
    needs_clean_model = True
    poison_needs_clean_model = True

    def validate(self, config: AttackConfig, params: LCParams, image_shape, num_classes) -> None:
        super().validate(config, params, image_shape, num_classes)
        if not 1 <= params.patch_size <= min(image_shape[:2]) // 2:
            raise InputError(f"lc: patch_size {params.patch_size} does not fit four corners of "
                             f"{image_shape[0]}x{image_shape[1]} images; expected 1 to {min(image_shape[:2]) // 2}")
        params.pgd_config().validate()
        if params.batch_size < 1:
            raise InputError(f"lc: batch_size = {params.batch_size}; expected at least 1")

    def build_trigger(self, config, params, train, key, clean_model=None) -> Trigger:
        return four_corner_trigger(train.image_shape, params.patch_size)

    def poison(self, train: Split, config: AttackConfig, trigger, *, params: LCParams | None = None,
               clean_model: TrainedModel | None = None, mesh=None) -> tuple[Split, np.ndarray]:
        """Static poisoning; needs the clean model (InputError without one)."""
        if clean_model is None:
            raise InputError("lc hardens its poisoned images with PGD on a clean model; expected a clean_model")
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
        return label_consistent_poison(train, config, params or self.params(config), trigger, clean_model, key, mesh)


LABEL_CONSISTENT = LabelConsistent()
