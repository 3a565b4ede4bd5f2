"""Blended (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data
Poisoning", 2017): the whole image is blended with a fixed pattern.

Steps:
  1. `blend_pattern`: the pattern [H, W, C] in [0, 1]: uniform noise drawn from the attack's
     key (the paper's "random pattern"; BackdoorBench uses a Hello-Kitty image instead), or an
     image file resized to H x W;
  2. `blended_trigger`: x' = (1 - alpha) x + alpha pattern (a masked pattern whose mask is
     alpha everywhere);
  3. poisoning (dirty-label): poison_ratio of the training set, from non-target images.
Defaults: alpha = 0.2 (BackdoorBench; PBE used 0.1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from attacks.base import Attack, AttackConfig
from attacks.triggers import Trigger
from backdoor_core.errors import InputError


@dataclasses.dataclass(frozen=True)
class BlendedParams:
    """Blended settings: alpha, the blend weight in (0, 1]; pattern, "noise" or an image file path."""

    alpha: float = 0.2
    pattern: str = "noise"


def blend_pattern(pattern: str, image_shape: tuple[int, int, int], key: jax.Array) -> np.ndarray:
    """Step 1: float32 [H, W, C] in [0, 1]; seeded uniform noise, or the image file resized."""
    h, w, c = image_shape
    if pattern == "noise":
        return np.asarray(jax.random.uniform(key, (h, w, c)), np.float32)
    from PIL import Image, UnidentifiedImageError

    path = Path(pattern).expanduser()
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            return (np.asarray(im, np.float32) / 255.0).reshape(h, w, c)
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"blended: pattern {pattern!r} is neither 'noise' nor a readable image file ({e})") from None


def blended_trigger(pattern: np.ndarray, alpha: float) -> Trigger:
    """Step 2: x' = (1 - alpha) x + alpha pattern, as a masked pattern with mask = alpha."""
    mask = np.full((*pattern.shape[:2], 1), alpha, np.float32)
    return Trigger.make("masked_pattern", {"mask": mask, "pattern": pattern})


class Blended(Attack):
    """Dirty-label full-image blending attack (see the module docstring)."""

    name = "blended"
    params_type = BlendedParams

    def validate(self, config: AttackConfig, params: BlendedParams, image_shape, num_classes) -> None:
        super().validate(config, params, image_shape, num_classes)
        if not 0 < params.alpha <= 1:
            raise InputError(f"blended: alpha {params.alpha}; expected a blend weight in (0, 1]")
        if params.pattern != "noise" and not Path(params.pattern).expanduser().is_file():
            raise InputError(f"blended: pattern {params.pattern!r} is neither 'noise' nor an existing image file")

    def trigger_drawn_from_key(self, params: BlendedParams) -> bool:
        return params.pattern == "noise"

    def build_trigger(self, config, params, train, key, clean_model=None) -> Trigger:
        return blended_trigger(blend_pattern(params.pattern, train.image_shape, key), params.alpha)


BLENDED = Blended()
