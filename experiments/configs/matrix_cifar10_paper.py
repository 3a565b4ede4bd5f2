"""The CIFAR-10 matrix at the papers' scale, for GPUs: PreAct-ResNet-18 at full width trained with
BackdoorBench's recipe (100 epochs, SGD lr 0.01, cosine, batch 128), every attack x every
defense, each defense's `paper` variant (DHBE: 15,000 iterations of batch 256).

  python -m experiments.run --config experiments/configs/matrix_cifar10_paper.py
"""

import ml_collections

from experiments.configs.matrix_cifar10_cpu import ATTACKS, CLEAN_LABEL_WITHIN_TARGET, DEFENSES, matrix

BACKDOORBENCH_TRAINING = dict(train=dict(epochs=100, learning_rate=0.01))


def get_config():
    c = matrix("cifar10", "../shared/data/cifar10.tar.gz", ATTACKS, DEFENSES, "paper", width=1.0,
               overrides=BACKDOORBENCH_TRAINING)
    c.attack_overrides = ml_collections.ConfigDict(CLEAN_LABEL_WITHIN_TARGET)
    return c
