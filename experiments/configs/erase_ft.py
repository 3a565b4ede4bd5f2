"""FT, the fine-tuning baseline (BackdoorBench's `ft` defense): plain fine-tuning of the
backdoored model on a random 5% clean split of the training set.

  python -m experiments.erase --defense ft --run ~/runs/attack_cifar10_preact18_w025 \
      --config experiments/configs/erase_ft.py:cpu

It runs AFT's loop (`pbe_jax.aft`) with no adversarial epochs. Variants:
  paper  BackdoorBench's config/defense/ft/cifar10.yaml: 100 epochs, batch 256, SGD lr 0.01 with
         cosine annealing, momentum 0.9, wd 5e-4, 5% clean data; its standard CIFAR
         augmentation (random crop with 4-pixel padding, horizontal flip).
  cpu    20 epochs instead of 100 (about 6 min for PreAct-ResNet-18 width 1/4 on 2,500 CIFAR-10
         images on this 2-core CPU), evaluated every 5 epochs; everything else as `paper`.
  smoke  a tiny run for tests (MNIST subset): 2 epochs, batch 32.
"""

from experiments.configs import erase_aft

VARIANTS = {
    "paper": dict(epochs=100, adversarial_epochs=0, learning_rate=0.01, batch_size=256, lr_schedule="cosine",
                  eval_every_epochs=10),
    "cpu": dict(epochs=20, adversarial_epochs=0, learning_rate=0.01, batch_size=256, lr_schedule="cosine",
                eval_every_epochs=5),
    "smoke": dict(epochs=2, adversarial_epochs=0, learning_rate=0.01, batch_size=32, lr_schedule="cosine"),
}
# BackdoorBench's FT transform: crop with 4-pixel padding on every image, flip; no rotation.
AUGMENT = dict(crop_padding=4, crop_prob=1.0, rotation_degrees=0.0, rotation_prob=0.0, per_batch=False)


def get_config(variant: str = "paper"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown FT config variant {variant!r}; expected one of {sorted(VARIANTS)}")
    c = erase_aft.get_config(variant, overrides=VARIANTS[variant])
    c.defense = "ft"
    c.augment.update(AUGMENT)
    c.detect.enabled = False  # a baseline: no detection pass
    return c
