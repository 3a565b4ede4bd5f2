"""Base config for `python -m experiments.attack`: train a backdoored classifier.

  python -m experiments.attack --config experiments/configs/attack_base.py \
      --config.attack=badnets --config.dataset=data/mnist_subset.npz --config.model=small_cnn \
      [--config.target=0] [--config.poison_ratio=0.1] [--config.params.blended.alpha=0.1] \
      [--config.poisoning=per_batch] \
      [--config.out=DIR]

`params.<attack>` holds each registered attack's own settings (BackdoorBench's defaults); only
the section of the chosen attack is used. TrojanNN, LC and LF need `clean_run`, the run directory
of a clean model (experiments.train).
"""

import typing

import ml_collections

from attacks.registry import default_params, get_attack
from experiments.configs import train_base


def params_section(name: str) -> ml_collections.ConfigDict:
    """An attack's default parameters; None defaults become typed placeholders (overridable)."""
    hints = typing.get_type_hints(get_attack(name).params_type)
    values = {}
    for key, value in default_params([name])[name].items():
        if value is None:
            kinds = [t for t in typing.get_args(hints[key]) if t is not type(None)] or [object]
            value = ml_collections.config_dict.placeholder(kinds[0])
        values[key] = value
    return ml_collections.ConfigDict(values)


def get_config():
    c = train_base.get_config()
    c.out = "~/runs/attack"
    c.attack = "badnets"
    c.target = 0
    c.mode = "all_to_one"
    c.poison_ratio = 0.1
    c.ratio_of = "dataset"  # or "target_class" (clean-label attacks)
    c.seed = 0
    # "default": the attack's own poisoning (a poisoned training set, triggered before augmentation:
    # BackdoorBench's); "per_batch": a share of every augmented batch triggered in the training
    # step, the trigger at a fixed place (the official PBE code's teachers; dirty-label attacks).
    c.poisoning = "default"
    c.clean_run = ml_collections.config_dict.placeholder(str)
    c.num_examples = 8  # clean vs triggered test images in examples.png (0: no examples.png)
    c.params = ml_collections.ConfigDict({name: params_section(name) for name in default_params()})
    return c
