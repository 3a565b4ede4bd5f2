"""GTSRB (43 classes, 32x32) at CPU scale: BadNets and Blended x {DHBE, PBE}, PreAct-ResNet-18 x1/4.

  python -m experiments.run --config experiments/configs/matrix_gtsrb_cpu.py
"""

from experiments.configs.matrix_cifar10_cpu import matrix


def get_config():
    return matrix("gtsrb", "../shared/data/gtsrb.tar.gz", ("badnets", "blended"), ("dhbe", "pbe"), "cpu")
