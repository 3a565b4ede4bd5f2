"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016), CIFAR variant, no dropout.

Three groups of (d - 4) / 6 pre-activation blocks with 16k, 32k, 64k channels (times the width
multiplier), final BN-ReLU, global average pool, linear. Input: float32 [N, H, W, C] in [0, 1].
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from backdoor_core.models.layers import BatchNorm, Conv, Dense, Normalize, scaled
from backdoor_core.models.resnet import PreActBlock


class WideResNet(nn.Module):
    depth: int
    widen: int
    num_classes: int
    width: float
    mean: Sequence[float]
    std: Sequence[float]

    @nn.compact
    def __call__(self, x, train: bool = False):
        n = (self.depth - 4) // 6
        x = Normalize(self.mean, self.std)(x)
        x = Conv(scaled(16, self.width), 3, name="stem")(x)
        for group, channels in enumerate((16, 32, 64)):
            for b in range(n):
                stride = 2 if group > 0 and b == 0 else 1
                x = PreActBlock(scaled(channels * self.widen, self.width), stride)(x, train)
        x = nn.relu(BatchNorm(use_running_average=not train, name="final_bn")(x))
        features = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", features)
        return Dense(self.num_classes, name="classifier")(features)
