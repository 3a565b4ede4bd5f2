"""Training a backdoored model and measuring its backdoor (C-Acc, ASR, ASR*, RA).

`train_backdoor` runs an attack end to end into a run directory:
  1. look the attack up, parse and check its parameters against the data (`prepare_attack`);
  2. build the trigger (or reload it when resuming an unfinished run);
  3. poison: statically (`Attack.poison`), on the fly (`Attack.batch_transform` passed to
     `fit`; with `AttackConfig.poisoning = "per_batch"`, `attacks.poison.per_batch_transform` of
     the attack's fixed trigger), or hand everything to the attack's own training
     (`Attack.train_backdoored`);
  4. train with `backdoor_core.fit.fit`, evaluating C-Acc (test_acc), ASR, ASR* (asr_strict)
     and RA (DESIGN.md's conventions) after every epoch;
  5. write trigger.npz/trigger.json, poisoned_indices.npy (ground truth, never for defenses)
     and the attack's record (record.json['attack']).
`load_attack(run_dir)` gives later stages the attack config and trigger back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from attacks.base import Attack, AttackConfig, BackdoorJob, TrainedModel
from attacks.poison import TriggeredTest, per_batch_transform, triggered_test_set
from attacks.registry import get_attack
from attacks.triggers import TRIGGER_JSON, Trigger, load_trigger, save_trigger
from backdoor_core import rundir
from backdoor_core.data import Split
from backdoor_core.errors import InputError, check_run_counts
from backdoor_core.fit import FitResult, check_split_fits, fit
from backdoor_core.metrics import (attack_success_rate, clean_accuracy, robust_accuracy,
                                   strict_attack_success_rate)
from backdoor_core.models import build_model, spec_for_data
from backdoor_core.train import TrainConfig, predict

POISONED_INDICES = "poisoned_indices.npy"


@dataclasses.dataclass
class BackdoorResult:
    """What `train_backdoor` returns: the fit result, the trigger and the poisoned indices.

    poisoned_indices is None when poisoning happened on the fly (a random share of each batch).
    """

    fit: FitResult
    trigger: Trigger
    poisoned_indices: np.ndarray | None
    run_dir: Path


def prepare_attack(config: AttackConfig, image_shape: tuple[int, int, int], num_classes: int):
    """Step 1: (attack, params) for `config`, checked against the data; InputError if unusable."""
    attack = get_attack(config.name)
    params = attack.params(config)
    attack.validate(config, params, tuple(image_shape), num_classes)
    return attack, params


def backdoor_metrics(module, variables: dict, test: Split, triggered: TriggeredTest, mesh=None) -> dict:
    """{'test_acc': C-Acc, 'asr': ASR, 'asr_strict': ASR*, 'ra': RA} of a model (DESIGN.md's conventions)."""
    clean_preds = predict(module, variables, test.images, mesh=mesh)
    trig_preds = predict(module, variables, triggered.images, mesh=mesh)
    labels, targets = triggered.labels, triggered.targets
    return {"test_acc": clean_accuracy(clean_preds, test.labels),
            "asr": attack_success_rate(trig_preds, labels, targets),
            "asr_strict": strict_attack_success_rate(trig_preds, clean_preds[triggered.indices], labels, targets),
            "ra": robust_accuracy(trig_preds, labels, targets)}


def backdoor_eval_fn(module, test: Split, config: AttackConfig, trigger: Trigger, mesh=None):
    """variables -> backdoor_metrics on `test` (the triggered test set is built once, here)."""
    triggered = triggered_test_set(test, config, trigger)
    return lambda variables: backdoor_metrics(module, variables, test, triggered, mesh)


def poisoning_kind(attack: Attack, config: AttackConfig) -> str:
    """How a run of `attack` under `config` poisons, as record.json['attack']['poisoning'] says it:
    'custom' (its own training, IAD), 'on_the_fly' (WaNet), 'per_batch' or 'static'."""
    if attack.custom_training:
        return "custom"
    if attack.on_the_fly:
        return "on_the_fly"
    return "per_batch" if config.poisoning == "per_batch" else "static"


def attack_record(config: AttackConfig, attack: Attack, params) -> dict:
    """The JSON description of an attack for record.json['attack']."""
    return {**config.to_dict(), "params": dataclasses.asdict(params), "clean_label": attack.clean_label,
            "poisoning": poisoning_kind(attack, config)}


def attack_record_defaults(attack: Attack) -> dict:
    """`attack_record` of `attack` at its default settings: what a setting an older record lacks
    (one added since) is compared with when an unfinished run resumes (`rundir.open_run`)."""
    default = AttackConfig(name=attack.name)
    return attack_record(default, attack, attack.params(default))


def _initial_trigger(attack: Attack, config: AttackConfig, params, train: Split, run_dir: Path,
                     clean_model: TrainedModel | None) -> Trigger:
    """Step 2: the trigger saved by an unfinished run in run_dir, else a freshly built one."""
    if (run_dir / rundir.RECORD).is_file():
        old = rundir.read_record(run_dir)
        if old.get("status") == "complete":
            raise InputError(f"{run_dir} holds a finished run; nothing is overwritten: choose a new output directory")
        if (run_dir / TRIGGER_JSON).is_file():
            return load_trigger(run_dir)
    if attack.needs_clean_model and clean_model is None:
        raise InputError(f"attack {attack.name} needs a clean trained model (its trigger is optimised on one); "
                         "give the run directory of a clean model")
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    return attack.build_trigger(config, params, train, key, clean_model)


def train_backdoor(config: AttackConfig, model: str, width: float, train: Split, test: Split,
                   train_config: TrainConfig, run_dir: Path, *, mesh=None,
                   clean_model: TrainedModel | None = None, record: dict | None = None,
                   stop_after_steps: int | None = None, progress: bool = True) -> BackdoorResult:
    """Trains `model` (registry name, width multiplier) on `train` poisoned by `config` into run_dir.

    See the module docstring for the steps. `record` adds fields to record.json. Resuming an
    unfinished run reuses its saved trigger; a changed attack or training config is refused.
    """
    check_run_counts("attack run", stop_after_steps=stop_after_steps)
    attack, params = prepare_attack(config, train.image_shape, train.num_classes)
    spec = spec_for_data(model, train.images, train.num_classes, width)
    check_split_fits(test, spec, what="test data")
    run_dir = Path(run_dir).expanduser().absolute()
    trigger = _initial_trigger(attack, config, params, train, run_dir, clean_model)
    description = attack_record(config, attack, params)
    record = {**(record or {}), "kind": "attack", "attack": description, "config": {"attack": description}}
    defaults = {"attack": attack_record_defaults(attack)}
    module = build_model(spec)
    indices = None
    if attack.custom_training:
        job = BackdoorJob(config, params, spec, train, test, train_config, run_dir, mesh,
                          jax.random.fold_in(jax.random.PRNGKey(config.seed), 2), record, clean_model,
                          stop_after_steps, progress, defaults)
        result, trigger = attack.train_backdoored(job)
    else:
        transform, poisoned = None, train
        if attack.on_the_fly:
            transform = attack.batch_transform(config, params, trigger, train.num_classes)
        elif config.poisoning == "per_batch":
            transform = per_batch_transform(config, trigger, train.num_classes)
        else:
            poisoned, indices = attack.poison(train, config, trigger, params=params, clean_model=clean_model, mesh=mesh)
            record["attack"] = {**description, "num_poisoned": len(indices)}
        result = fit(spec, poisoned, train_config, run_dir, mesh=mesh, batch_transform=transform, record=record,
                     defaults=defaults,
                     eval_fn=backdoor_eval_fn(module, test, config, trigger, mesh),
                     stop_after_steps=stop_after_steps, progress=progress)
    save_trigger(result.run_dir, trigger)
    if indices is not None:
        np.save(result.run_dir / POISONED_INDICES, indices)
    return BackdoorResult(result, trigger, indices, result.run_dir)


def load_attack(run_dir: Path) -> tuple[AttackConfig, Trigger]:
    """(attack config, trigger) of an attack run directory; InputError if it is not one."""
    record = rundir.read_record(run_dir)
    if "attack" not in record:
        raise InputError(f"{run_dir} is not an attack run: its record has no 'attack' entry")
    return AttackConfig.from_dict(record["attack"]), load_trigger(run_dir)
