"""GTSRB at the papers' scale, for GPUs: BadNets and Blended x every defense, PreAct-ResNet-18 at
full width with BackdoorBench's training recipe, each defense's `paper` variant.

  python -m experiments.run --config experiments/configs/matrix_gtsrb_paper.py
"""

from experiments.configs.matrix_cifar10_cpu import DEFENSES, matrix
from experiments.configs.matrix_cifar10_paper import BACKDOORBENCH_TRAINING


def get_config():
    return matrix("gtsrb", "../shared/data/gtsrb.tar.gz", ("badnets", "blended"), DEFENSES, "paper", width=1.0,
                  overrides=BACKDOORBENCH_TRAINING)
