"""Imports a backdoored classifier trained with PyTorch as an attack run directory.

  python -m experiments.import_model --config experiments/configs/import_torch.py \
      --config.weights=FILE --config.model=preact_resnet18 --config.dataset=SOURCE \
      --config.attack=badnets "--config.mean=(...)" "--config.std=(...)" --config.out=DIR

Steps: 1. read and convert the state_dict (`backdoor_core.models.torch_import`); 2. build the
attack's trigger from its settings (or load it from `trigger_from`); 3. measure C-Acc, ASR, ASR*
and RA on the dataset's test split; 4. write the run directory every defense reads
(record.json with kind 'attack' and `imported_from`, model/, trigger.npz + trigger.json,
examples.png). There is no poisoned_indices.npy: PBE rebuilds a poisoned training set with the
same attack settings, which is not the set the model was trained on. Nothing existing is
overwritten; a failure before the model is saved leaves no directory.
"""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

from absl import app

from attacks.backdoor import attack_record, backdoor_metrics, prepare_attack
from attacks.poison import triggered_test_set
from attacks.registry import get_attack
from attacks.triggers import load_trigger, save_trigger
from backdoor_core import rundir
from backdoor_core.checkpoint import save_variables
from backdoor_core.data import load_dataset
from backdoor_core.errors import InputError
from backdoor_core.models import build_model
from backdoor_core.models.torch_import import STAGE_SIZES, convert_state_dict, read_state_dict
from backdoor_core.sharding import make_mesh
from experiments.attack import EXAMPLES, attack_config, save_examples
from experiments.common import define_config_flag, output_dir, parse_flags, run_cli


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (the record names the weights it was imported from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_trigger(cfg, config, params, train):
    """Step 2: the trigger of `config`, from cfg.trigger_from or built from its settings."""
    attack = get_attack(config.name)
    if cfg.trigger_from:
        return load_trigger(output_dir(cfg.trigger_from))
    if attack.needs_clean_model or attack.custom_training or attack.trigger_drawn_from_key(params):
        how = ("drawn at random when the attack ran" if attack.trigger_drawn_from_key(params)
               else "made with a clean model or trained with the model")
        raise InputError(f"attack {config.name}'s trigger is {how}, so its settings cannot rebuild the one this "
                         "model was trained with; give --config.trigger_from=DIR (a folder with its trigger.json "
                         "and trigger.npz)" + (", or an image file as params.blended.pattern"
                                               if config.name == "blended" else ""))
    import jax

    return attack.build_trigger(config, params, train, jax.random.fold_in(jax.random.PRNGKey(config.seed), 1), None)


def import_model(cfg) -> dict:
    """Runs the steps of the module docstring; returns the imported model's metrics."""
    if not cfg.weights:
        raise InputError("--config.weights is not set; expected a PyTorch state_dict (.pt/.pth) or an .npz of one")
    if cfg.model not in STAGE_SIZES:
        raise InputError(f"--config.model={cfg.model!r}; expected one of {', '.join(STAGE_SIZES)}")
    if not cfg.mean or not cfg.std:
        raise InputError("--config.mean and --config.std are not set; expected the per-channel normalisation the "
                         "PyTorch training used, e.g. BackdoorBench's CIFAR-10 '(0.4914, 0.4822, 0.4465)' and "
                         "'(0.247, 0.243, 0.261)'")
    out = output_dir(cfg.out).absolute()
    if out.exists():
        raise InputError(f"{out} exists; nothing is overwritten: choose a new --config.out")
    config = attack_config(cfg)
    weights = Path(cfg.weights).expanduser()
    state = read_state_dict(weights)
    train, test = load_dataset(cfg.dataset)
    attack, params = prepare_attack(config, train.image_shape, train.num_classes)
    spec, variables = convert_state_dict(state, cfg.model, train.image_shape, cfg.mean, cfg.std)
    if spec.num_classes != train.num_classes:
        raise InputError(f"the imported model has {spec.num_classes} outputs and {cfg.dataset} has "
                         f"{train.num_classes} classes; expected the dataset it was trained on")
    trigger = import_trigger(cfg, config, params, train)
    mesh = make_mesh(cfg.num_devices)
    module = build_model(spec)
    metrics = backdoor_metrics(module, variables, test, triggered_test_set(test, config, trigger), mesh)
    description = attack_record(config, attack, params)
    record = {"kind": "attack", "attack": description, "config": {"attack": description},
              "model": spec.to_dict(), "dataset_source": str(cfg.dataset), "class_names": list(train.class_names),
              "clean_run": None, "imported_from": {"weights": str(weights.absolute()), "sha256": sha256(weights),
                                                   "layout": f"PyTorch {cfg.model}",
                                                   "trigger_from": cfg.trigger_from}}
    with rundir.open_run(out, record) as (run_dir, _):
        save_variables(run_dir / rundir.MODEL, variables)
        save_trigger(run_dir, trigger)
        rundir.update_record(run_dir, status="complete", metrics=metrics)
    save_examples(run_dir / EXAMPLES, types.SimpleNamespace(run_dir=run_dir, trigger=trigger), test, config,
                  cfg.num_examples, mesh)
    print(f"imported: {run_dir}  " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def main():
    config = define_config_flag("experiments/configs/import_torch.py", "import config file")
    app.run(flags_parser=parse_flags, main=lambda argv: run_cli(lambda: import_model(config.value)))


if __name__ == "__main__":
    main()
