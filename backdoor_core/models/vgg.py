"""VGG-11 and VGG-16 with batch norm (Simonyan & Zisserman 2015), CIFAR variant.

Conv3x3-BN-ReLU stacks with max-pools, then global average pooling (so any input size at
least 32x32 works) and one linear classifier. Input: float32 [N, H, W, C] in [0, 1].
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from backdoor_core.models.layers import BatchNorm, Conv, Dense, Normalize, scaled

VGG_LAYERS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class VGG(nn.Module):
    layers: Sequence
    num_classes: int
    width: float
    mean: Sequence[float]
    std: Sequence[float]

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Normalize(self.mean, self.std)(x)
        for layer in self.layers:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), (2, 2))
            else:
                x = nn.relu(BatchNorm(use_running_average=not train)(Conv(scaled(layer, self.width), 3)(x)))
        features = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", features)
        return Dense(self.num_classes, name="classifier")(features)
