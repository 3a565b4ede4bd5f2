"""SIG (Barni et al., "A New Backdoor Attack in CNNs by Training Set Corruption Without Label
Poisoning", ICIP 2019): a clean-label attack with a horizontal sinusoidal signal.

Steps:
  1. `sinusoid_signal`: v(i, j) = delta sin(2 pi j f / W) for every row i and channel;
  2. `sig_trigger`: x' = clip(x + v, 0, 1);
  3. poisoning (clean-label): only target-class training images get the signal; their labels
     stay; at test time the signal is added to non-target images.
Defaults: delta = 20/255, f = 6 (BackdoorBench). BackdoorBench counts poison_ratio of the whole
training set (0.1 of CIFAR-10 = every target-class image); `ratio_of="target_class"` counts it
within the target class instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attacks.base import Attack, AttackConfig
from attacks.triggers import Trigger
from backdoor_core.errors import InputError


@dataclasses.dataclass(frozen=True)
class SIGParams:
    """SIG settings: delta, the amplitude in pixel units [0, 1]; frequency, periods across the width."""

    delta: float = 20 / 255
    frequency: float = 6.0


def sinusoid_signal(delta: float, frequency: float, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Step 1: float32 [H, W, C] with v(i, j) = delta sin(2 pi j f / W)."""
    h, w, c = image_shape
    row = delta * np.sin(2 * np.pi * np.arange(w) * frequency / w)
    return np.broadcast_to(row[None, :, None], (h, w, c)).astype(np.float32)


def sig_trigger(delta: float, frequency: float, image_shape: tuple[int, int, int]) -> Trigger:
    """Step 2: the additive trigger x' = clip(x + v)."""
    return Trigger.make("additive", {"signal": sinusoid_signal(delta, frequency, image_shape)})


class SinusoidalSignal(Attack):
    """Clean-label sinusoidal-signal attack (see the module docstring)."""

    name = "sig"
    params_type = SIGParams
    clean_label = True

    def validate(self, config: AttackConfig, params: SIGParams, image_shape, num_classes) -> None:
        super().validate(config, params, image_shape, num_classes)
        if not 0 < params.delta <= 1:
            raise InputError(f"sig: delta {params.delta}; expected an amplitude in (0, 1] (pixel units)")
        if params.frequency <= 0:
            raise InputError(f"sig: frequency {params.frequency}; expected a positive number of periods")

    def build_trigger(self, config, params, train, key, clean_model=None) -> Trigger:
        return sig_trigger(params.delta, params.frequency, train.image_shape)


SIG = SinusoidalSignal()
