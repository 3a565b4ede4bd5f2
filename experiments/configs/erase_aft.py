"""AFT (adversarial fine-tuning with a clean set, PBE's model-repair setting) on a backdoored run.

  python -m experiments.erase --defense aft --run ~/runs/attack_cifar10_preact18_w025 \
      --config experiments/configs/erase_aft.py:cpu

The clean set is a random `clean_fraction` (5%) of the clean training split of the attack's
dataset. Variants:
  paper  the official settings: 20 epochs, the first 3 with every minibatch adversarial (PGD eps
         6/255, alpha 1.2/255, 7 steps), SGD lr 1e-3 constant, momentum 0.9, wd 5e-4, batch 128,
         PBE's augmentation; evaluated after every epoch.
  cpu    the same training (it already fits: 57 adversarial batches at ~3.1 s and 323 plain ones at
         ~0.74 s, ~7 min on this CPU for PreAct-ResNet-18 width 1/4 on 2,500 CIFAR-10 images);
         only the evaluation is every 5 epochs instead of every epoch (each one costs ~25 s).
  smoke  a tiny run for tests (MNIST subset): 2 epochs, 1 adversarial, batch 32.
"""

import ml_collections

from experiments.configs.erase_pbe import finetune_sections
from pbe_jax import AFTConfig

AFT_FIELDS = ("epochs", "adversarial_epochs", "eval_every_epochs", "seed", "learning_rate", "momentum",
              "weight_decay", "batch_size", "lr_schedule")

VARIANTS = {
    "paper": {},
    "cpu": dict(eval_every_epochs=5),
    "smoke": dict(epochs=2, adversarial_epochs=1, batch_size=32),
}


def get_config(variant: str = "paper", overrides: dict | None = None):
    """The AFT config of `variant`; `overrides` replace its aft settings (erase_ft.py's use)."""
    if overrides is None and variant not in VARIANTS:
        raise ValueError(f"unknown AFT config variant {variant!r}; expected one of {sorted(VARIANTS)}")
    defaults = AFTConfig()
    c = ml_collections.ConfigDict()
    c.defense = "aft"
    c.variant = variant
    c.clean_fraction = 0.05
    c.clean_seed = 0
    c.stop_after = ml_collections.config_dict.placeholder(int)  # epochs; time-boxed sessions resume later
    c.num_devices = ml_collections.config_dict.placeholder(int)
    c.aft = ml_collections.ConfigDict({**{k: getattr(defaults, k) for k in AFT_FIELDS}, **(VARIANTS[variant] if overrides is None else overrides)})
    finetune_sections(c, variant)
    return c
