"""GTSRB (43 classes, 32x32) at CPU scale: BadNets and Blended x {DHBE, PBE}, PreAct-ResNet-18 x1/4.

  python -m experiments.run --config experiments/configs/matrix_gtsrb_cpu.py
"""

import ml_collections

from experiments.configs.matrix_cifar10_cpu import PBE_ARCHIVED_AUGMENT, matrix


def get_config():
    c = matrix("gtsrb", "../shared/data/gtsrb.tar.gz", ("badnets", "blended"), ("dhbe", "pbe"), "cpu")
    # its reported PBE cells (docs/results_gtsrb.md) drew PBE's augmentation per image (see there)
    c.defense_overrides = ml_collections.ConfigDict(PBE_ARCHIVED_AUGMENT)
    return c
