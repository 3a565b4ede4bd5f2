"""BadNets (Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain", 2017): a small patch pasted (replacing the pixels, not added) at a fixed corner.

Steps:
  1. `patch_trigger`: a mask that is 1 on a size x size square `margin` pixels from the chosen
     corner and 0 elsewhere, and a pattern holding the patch there (solid `color`, or DHBE's
     black/white checkerboard, white where row + column is even);
  2. poisoning (dirty-label, `attacks.poison.poison_split`): poison_ratio of the training set,
     drawn from non-target images, get x' = (1 - mask) x + mask pattern and the target label.
Defaults: BackdoorBench's 3x3 white square touching the bottom-right corner.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attacks.base import Attack, AttackConfig
from attacks.triggers import Trigger
from backdoor_core.errors import InputError

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")
PATTERNS = ("solid", "checkerboard")


@dataclasses.dataclass(frozen=True)
class PatchParams:
    """BadNets patch settings.

    Attributes:
      size: side of the square patch in pixels.
      position: the corner it is pasted at, one of CORNERS.
      margin: pixels between the patch and the image's edges at that corner.
      pattern: "solid" (every patch pixel = color) or "checkerboard" (1 where row + col is even, else 0).
      color: grey value in [0, 1] of a solid patch (all channels).
    """

    size: int = 3
    position: str = "bottom_right"
    margin: int = 0
    pattern: str = "solid"
    color: float = 1.0


def patch_origin(params: PatchParams, height: int, width: int) -> tuple[int, int]:
    """(row, col) of the patch's top-left pixel for images of height x width."""
    bottom, right = params.position.split("_")
    row = height - params.margin - params.size if bottom == "bottom" else params.margin
    col = width - params.margin - params.size if right == "right" else params.margin
    return row, col


def patch_trigger(params: PatchParams, image_shape: tuple[int, int, int]) -> Trigger:
    """The masked-pattern trigger of step 1: mask [H, W, 1], pattern [H, W, C] (float32)."""
    h, w, c = image_shape
    row, col = patch_origin(params, h, w)
    s = params.size
    if params.pattern == "checkerboard":
        patch = ((np.arange(s)[:, None] + np.arange(s)[None, :]) % 2 == 0).astype(np.float32)
    else:
        patch = np.full((s, s), params.color, np.float32)
    mask = np.zeros((h, w, 1), np.float32)
    pattern = np.zeros((h, w, c), np.float32)
    mask[row:row + s, col:col + s] = 1.0
    pattern[row:row + s, col:col + s] = patch[:, :, None]
    return Trigger.make("masked_pattern", {"mask": mask, "pattern": pattern})


class BadNets(Attack):
    """Dirty-label patch attack (see the module docstring)."""

    params_type = PatchParams

    def __init__(self, name: str, **param_defaults):
        self.name = name
        self.param_defaults = param_defaults

    def validate(self, config: AttackConfig, params: PatchParams, image_shape, num_classes) -> None:
        super().validate(config, params, image_shape, num_classes)
        h, w, _ = image_shape
        if params.position not in CORNERS:
            raise InputError(f"{self.name}: position {params.position!r}; expected one of {CORNERS}")
        if params.pattern not in PATTERNS:
            raise InputError(f"{self.name}: pattern {params.pattern!r}; expected one of {PATTERNS}")
        if params.size < 1 or params.margin < 0 or params.size + params.margin > min(h, w):
            raise InputError(f"{self.name}: a {params.size}x{params.size} patch at margin {params.margin} does not fit "
                             f"{h}x{w} images; expected 1 <= size and size + margin <= {min(h, w)}")
        if not 0 <= params.color <= 1:
            raise InputError(f"{self.name}: color {params.color}; expected a pixel value in [0, 1]")

    def build_trigger(self, config, params, train, key, clean_model=None) -> Trigger:
        return patch_trigger(params, train.image_shape)


BADNETS = BadNets("badnets")
BADNETS_CHECKER = BadNets("badnets_checker", pattern="checkerboard")
