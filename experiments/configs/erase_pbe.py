"""PBE (progressive backdoor erasing) on a backdoored run directory with its poisoned training set.

  python -m experiments.erase --defense pbe --run ~/runs/attack_cifar10_preact18_w025 \
      --config experiments/configs/erase_pbe.py:cpu [--config.pbe.epochs_per_round=N]

Variants (the part after ':'):
  paper  the official code's settings: random 5% start subset, 4 rounds of 10 epochs (SGD lr 1e-3
         constant, momentum 0.9, wd 5e-4, batch 128), round 0 all adversarial, rounds 1-3 the first
         31 minibatches; keep the top 20% / 50% / 70%; PGD eps 6/255, alpha 1.2/255, 7 steps;
         crop pad 5 (p 0.8), rotation +-10 deg (p 0.5), flip on CIFAR. About 1.5 hours on this
         2-core CPU for PreAct-ResNet-18 width 1/4 on CIFAR-10 (rounds 1-3: 5,460 batches, 93
         adversarial, ~72 min at the step times below); for GPUs.
  cpu    a budget for this CPU: rounds 1-3 run 4 epochs instead of 10; round 0 (all 10
         adversarial epochs, where the backdoor is erased) and everything else are the paper's.
         Estimate for PreAct-ResNet-18 width 1/4 on CIFAR-10, from step times measured on this
         CPU beside other jobs (adversarial ~3.5 s, plain ~0.74 s at batch 128): round 0, 190
         adversarial batches, ~11 min; rounds 1-3, 2,184 batches on 10k / 25k / 35k images (93 of
         them adversarial), ~31 min; 4 scoring passes over 50k images and 5 evaluations, ~6 min:
         ~50 min alone, longer with other jobs on the cores. (Until 2026-11-28 an adversarial
         step took ~14 s, its PGD inside a `lax.cond`: pbe_jax/finetune.py.)
  smoke  a tiny run for tests: 2 rounds of 1 epoch, batch 32.

Detection (pbe_jax.detect) of the teacher and the purified model on `detect.num_images`
unlabelled test images is recorded in record.json['detection'].
"""

import ml_collections

from attacks.pgd import PGDConfig
from pbe_jax import AugmentConfig, PBEConfig

PBE_FIELDS = ("initial_fraction", "keep_fractions", "epochs_per_round", "first_round_epochs",
              "first_round_adversarial_epochs", "later_adversarial_batches", "seed",
              "learning_rate", "momentum", "weight_decay", "batch_size")

VARIANTS = {
    "paper": {},
    "cpu": dict(epochs_per_round=4, first_round_epochs=10),
    "smoke": dict(initial_fraction=0.1, keep_fractions=(0.3,), epochs_per_round=1, later_adversarial_batches=2,
                  batch_size=32),
}


def finetune_sections(c: ml_collections.ConfigDict, variant: str) -> None:
    """Adds the shared `pgd`, `augment` and `detect` sections (PBE's official values) to c;
    the `smoke` variant shortens PGD and detection."""
    c.pgd = ml_collections.ConfigDict(PGDConfig.pbe().__dict__)
    augment = AugmentConfig().__dict__
    c.augment = ml_collections.ConfigDict({**augment, "hflip": ml_collections.config_dict.placeholder(bool)})
    pgd = PGDConfig.pbe()
    c.detect = ml_collections.ConfigDict(dict(enabled=True, num_images=500, batch_size=250, seed=0,
                                              eps=pgd.eps, alpha=pgd.alpha, steps=pgd.steps))
    if variant == "smoke":
        c.pgd.steps = 2
        c.detect.num_images = 64
        c.detect.batch_size = 32


def get_config(variant: str = "paper"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown PBE config variant {variant!r}; expected one of {sorted(VARIANTS)}")
    defaults = PBEConfig()
    settings = {**{k: getattr(defaults, k) for k in PBE_FIELDS}, **VARIANTS[variant]}
    c = ml_collections.ConfigDict()
    c.defense = "pbe"
    c.variant = variant
    c.stop_after = ml_collections.config_dict.placeholder(int)  # rounds; time-boxed sessions resume later
    c.num_devices = ml_collections.config_dict.placeholder(int)
    c.pbe = ml_collections.ConfigDict({k: v for k, v in settings.items() if v is not None})
    c.pbe.first_round_epochs = ml_collections.config_dict.placeholder(int) if settings["first_round_epochs"] is None \
        else settings["first_round_epochs"]
    c.pbe.first_round_adversarial_epochs = ml_collections.config_dict.placeholder(int)  # None: all of round 0
    finetune_sections(c, variant)
    return c
