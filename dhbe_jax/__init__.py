"""DHBE: data-free holistic backdoor erasing by restricted adversarial distillation.

`erase(teacher, DHBEConfig(...), rng)` purifies a backdoored classifier without data;
`DHBEConfig(lam=0.0)` is DFAD, the distillation-only ablation.
"""

from dhbe_jax.erase import EraseResult, erase
from dhbe_jax.step import DHBEConfig, DHBEState

__all__ = ["DHBEConfig", "DHBEState", "EraseResult", "erase"]
