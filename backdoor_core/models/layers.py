"""Building blocks shared by every model of the registry."""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from backdoor_core.errors import InputError
from backdoor_core.models.conv import conv_fn

# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here), which the papers' code uses.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
# PyTorch's default initialisation (kaiming_uniform with a = sqrt(5)), which the papers' models use.
torch_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
conv_init = torch_init


def Conv(features: int, kernel: int = 3, stride: int = 1, name: str | None = None) -> nn.Conv:
    """A bias-free 'same'-padded square convolution (the papers' ResNets use no conv bias),
    computed by `conv.conv_fn()` (XLA's convolution unless BACKDOOR_CONV=im2col)."""
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, kernel_init=conv_init, name=name, conv_general_dilated=conv_fn())


def scaled(channels: int, width: float) -> int:
    """Channel count `channels` times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


class Normalize(nn.Module):
    """Per-channel (x - mean) / std: the dataset's normalisation as the model's first layer.

    Input: float32 [N, H, W, C] pixels in [0, 1]. Constants, not parameters. Images with another
    channel count than the model's C are refused (at trace time): a 1-channel image would
    otherwise broadcast against a 3-channel mean and run silently.
    """

    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != len(self.mean):
            # [N, ...]: N may be a padded batch size, not the caller's number of images
            raise InputError(f"images of shape [N, {', '.join(map(str, x.shape[1:]))}] given to a model that takes "
                             f"{len(self.mean)}-channel [N, H, W, {len(self.mean)}] images")
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)


def Dense(features: int, name: str | None = None) -> nn.Dense:
    """A linear layer with PyTorch's default initialisation."""
    return nn.Dense(features, kernel_init=torch_init, name=name)
