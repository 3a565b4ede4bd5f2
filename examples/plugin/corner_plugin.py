"""An example plugin for backdoor-erasing-jax (docs/extending.md): a model, an attack, a defense.

Model `lenet_bn`: LeNet-5 with batch norm, under the registry's contract: (num_classes, width,
mean, std) -> a flax module mapping pixels in [0, 1] to logits, normalising them itself, taking
`train` for batch norm and sowing its penultimate features as `intermediates/features` (PBE's
and the detector's feature probes read them). Its conv -> BN pairs are what CLP prunes.

Attack `corner_dot`: BadNets' recipe with a `size` x `size` square of value `color` in the
top-left corner. Only `build_trigger` is new: poisoning (dirty-label, `poison_ratio` of the
non-target images), training, evaluation and saving come from the library, and the trigger is
the library's "masked_pattern" kind, so a saved run reloads without this module's help.

Defense `clp_u2`: the library's CLP with its own config (`get_config` below, u = 2 by default),
written the way every built-in defense is: run(cfg, attack_run, out_dir, mesh) -> metrics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import flax.linen as nn
import ml_collections
import numpy as np

from attacks.base import Attack
from attacks.triggers import Trigger
from backdoor_core import rundir
from backdoor_core.errors import InputError
from backdoor_core.models.layers import Normalize, scaled
from baselines import CLPConfig, clp
from experiments.defenses.common import finish_defense_run, with_der


class LeNetBN(nn.Module):
    """[Conv5x5 6, BN, ReLU, max-pool] then [Conv5x5 16, ...], Dense 120, Dense 84, Dense classes
    (channel and unit counts times `width`)."""

    num_classes: int
    width: float
    mean: Sequence[float]
    std: Sequence[float]

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Normalize(self.mean, self.std)(x)
        for channels in (6, 16):
            x = nn.Conv(scaled(channels, self.width), (5, 5), padding="SAME", use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(scaled(120, self.width))(x))
        features = nn.relu(nn.Dense(scaled(84, self.width))(x))
        self.sow("intermediates", "features", features)
        return nn.Dense(self.num_classes, name="classifier")(features)


@dataclasses.dataclass(frozen=True)
class CornerDotParams:
    """size: side of the square in pixels; color: its value in [0, 1] in every channel."""

    size: int = 2
    color: float = 1.0


class CornerDot(Attack):
    """A size x size square in the top-left corner (dirty-label, static poisoning)."""

    name = "corner_dot"
    params_type = CornerDotParams

    def validate(self, config, params: CornerDotParams, image_shape, num_classes) -> None:
        super().validate(config, params, image_shape, num_classes)
        if not 1 <= params.size <= min(image_shape[:2]):
            raise InputError(f"corner_dot: size {params.size}; expected 1 to {min(image_shape[:2])}")

    def build_trigger(self, config, params: CornerDotParams, train, key, clean_model=None) -> Trigger:
        h, w, c = train.image_shape
        mask = np.zeros((h, w, 1), np.float32)
        mask[:params.size, :params.size] = 1.0
        return Trigger.make("masked_pattern", {"mask": mask, "pattern": np.full((h, w, c), params.color, np.float32)})


CORNER_DOT = CornerDot()


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """clp_u2's config; the matrix asks for its `variant` (paper, cpu, smoke): the same here."""
    c = ml_collections.ConfigDict()
    c.defense = "clp_u2"
    c.variant = variant
    c.num_devices = ml_collections.config_dict.placeholder(int)
    c.clp = ml_collections.ConfigDict({"u": 2.0})
    return c


def run_clp_u2(cfg, attack_run, out_dir: Path, mesh) -> dict:
    """Prunes attack_run's model with CLP at cfg.clp.u, evaluates it and saves it in out_dir."""
    variables, pruned = clp(attack_run.module, attack_run.variables, tuple(attack_run.spec.image_shape),
                            CLPConfig(u=float(cfg.clp.u)))
    metrics = with_der(attack_run.evaluate(variables, mesh), attack_run.teacher_metrics)
    rundir.append_history(out_dir, {"step": 1, **metrics})
    return finish_defense_run(out_dir, variables, metrics, teacher_metrics=attack_run.teacher_metrics,
                              pruned_channels=sum(len(v) for v in pruned.values()))
