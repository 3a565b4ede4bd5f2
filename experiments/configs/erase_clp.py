"""CLP (channel Lipschitzness pruning, Zheng et al. ECCV 2022), the data-free baseline.

  python -m experiments.erase --defense clp --run ~/runs/attack_cifar10_preact18_w025 \
      [--config experiments/configs/erase_clp.py] [--config.clp.u=3]

No data and no training: seconds on any machine, so every variant is the paper's (u = 3,
BackdoorBench's default); the variants exist so the matrix runner can name them uniformly.
"""

import ml_collections

VARIANTS = ("paper", "cpu", "smoke")


def get_config(variant: str = "paper"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown CLP config variant {variant!r}; expected one of {sorted(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.defense = "clp"
    c.variant = variant
    c.num_devices = ml_collections.config_dict.placeholder(int)
    c.clp = ml_collections.ConfigDict(dict(u=3.0))
    return c
