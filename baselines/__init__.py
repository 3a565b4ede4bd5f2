"""Baseline defenses that put DHBE and PBE in context: CLP (data-free channel pruning).

FT (fine-tuning on clean data) needs no code of its own: it is `pbe_jax.aft` with no adversarial
epochs and a cosine schedule (experiments/configs/erase_ft.py).
"""

from baselines.clp import CLPConfig, channel_lipschitz, clp, conv_bn_pairs

__all__ = ["CLPConfig", "channel_lipschitz", "clp", "conv_bn_pairs"]
