"""CIFAR-style ResNets: PreAct-ResNet-18 (He et al. 2016b) and ResNet-18/34 (He et al. 2016a).

The 3x3 stride-1 stem of the CIFAR variants (no max-pool), as in BackdoorBench and the
DHBE/PBE code. Input: float32 [N, H, W, C] pixels in [0, 1]; output: logits [N, num_classes].
The pooled penultimate features are sown as `intermediates/features`.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from backdoor_core.models.layers import BatchNorm, Conv, Dense, Normalize, scaled


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        out = nn.relu(BatchNorm(use_running_average=not train)(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = Conv(self.features, 1, self.stride, name="shortcut")(out)
        out = Conv(self.features, 3, self.stride)(out)
        out = nn.relu(BatchNorm(use_running_average=not train)(out))
        out = Conv(self.features, 3)(out)
        return out + shortcut


class BasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        out = nn.relu(BatchNorm(use_running_average=not train)(Conv(self.features, 3, self.stride)(x)))
        out = BatchNorm(use_running_average=not train)(Conv(self.features, 3)(out))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = Conv(self.features, 1, self.stride, name="shortcut_conv")(x)
            shortcut = BatchNorm(use_running_average=not train, name="shortcut_bn")(shortcut)
        return nn.relu(out + shortcut)


class CifarResNet(nn.Module):
    """A four-stage CIFAR ResNet with `stage_sizes` blocks per stage (64, 128, 256, 512 x width)."""

    stage_sizes: Sequence[int]
    preact: bool
    num_classes: int
    width: float
    mean: Sequence[float]
    std: Sequence[float]

    @nn.compact
    def __call__(self, x, train: bool = False):
        block = PreActBlock if self.preact else BasicBlock
        x = Normalize(self.mean, self.std)(x)
        x = Conv(scaled(64, self.width), 3, name="stem")(x)
        if not self.preact:
            x = nn.relu(BatchNorm(use_running_average=not train, name="stem_bn")(x))
        for stage, blocks in enumerate(self.stage_sizes):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                x = block(scaled(64 * 2 ** stage, self.width), stride)(x, train)
        # BackdoorBench's PreAct-ResNet-18 pools layer4's output directly (no final BN-ReLU).
        features = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", features)
        return Dense(self.num_classes, name="classifier")(features)


def preact_resnet18(**kw):
    return CifarResNet((2, 2, 2, 2), preact=True, **kw)


def resnet18(**kw):
    return CifarResNet((2, 2, 2, 2), preact=False, **kw)


def resnet34(**kw):
    return CifarResNet((3, 4, 6, 3), preact=False, **kw)
