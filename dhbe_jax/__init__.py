"""DHBE: data-free holistic backdoor erasing by restricted adversarial distillation.

`erase(teacher, DHBEConfig(...), rng)` purifies a backdoored classifier without data;
`DHBEConfig(lam=0.0)` is DFAD, the distillation-only ablation; `synthesize(spec, variables, n, rng)`
fits DHBE's sample generator to a model alone and returns n synthetic images (data-free inputs,
e.g. for `pbe_jax.detect`).
"""

from dhbe_jax.erase import EraseResult, erase
from dhbe_jax.step import DHBEConfig, DHBEState
from dhbe_jax.synthesize import synthesize

__all__ = ["DHBEConfig", "DHBEState", "EraseResult", "erase", "synthesize"]
