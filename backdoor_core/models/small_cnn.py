"""A small CNN for 28x28 inputs (MNIST, Fashion-MNIST), the role PBE's MNIST model plays.

[Conv3x3 32, BN, ReLU] x2, max-pool, [Conv3x3 64, BN, ReLU] x2, max-pool, Dense 128, ReLU,
Dense num_classes (channel counts times the width multiplier).
Input: float32 [N, H, W, C] in [0, 1]; output: logits [N, num_classes].
"""

from typing import Sequence

import flax.linen as nn

from backdoor_core.models.layers import BatchNorm, Conv, Dense, Normalize, scaled


class SmallCNN(nn.Module):
    num_classes: int
    width: float
    mean: Sequence[float]
    std: Sequence[float]

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Normalize(self.mean, self.std)(x)
        for channels in (32, 64):
            for _ in range(2):
                x = nn.relu(BatchNorm(use_running_average=not train)(Conv(scaled(channels, self.width), 3)(x)))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(Dense(scaled(128, self.width))(x))
        self.sow("intermediates", "features", features)
        return Dense(self.num_classes, name="classifier")(features)
