"""Trains a backdoored classifier with any registered attack.

  python -m experiments.attack --config experiments/configs/attack_base.py \
      --config.attack=badnets --config.dataset=SOURCE --config.model=NAME [--config.out=DIR]
  python -m experiments.attack --attack badnets --dataset SOURCE --model NAME [--out DIR]   # the same

Writes a run directory: record.json (with the attack under 'attack'), history.jsonl (test_acc,
asr, asr_strict, ra per epoch), checkpoints/, model/, trigger.npz + trigger.json,
poisoned_indices.npy (static poisoning only) and examples.png (clean vs triggered test images
with the model's predictions). Bad settings stop with one line before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app

from attacks.backdoor import BackdoorResult, prepare_attack, train_backdoor
from attacks.base import AttackConfig, TrainedModel
from attacks.poison import triggered_test_set
from attacks.registry import get_attack
from backdoor_core import rundir
from backdoor_core.data import load_dataset
from backdoor_core.errors import InputError
from backdoor_core.models import MODELS
from backdoor_core.sharding import make_mesh
from backdoor_core.train import TrainConfig, predict
from experiments.common import (apply_shorthands, dataclass_from_config, define_config_flag, define_shorthands,
                                output_dir, parse_flags, run_cli)

EXAMPLES = "examples.png"


def attack_config(cfg) -> AttackConfig:
    """The AttackConfig of a CLI config (params from cfg.params[cfg.attack]), checked without data
    (with the config's num_examples)."""
    get_attack(cfg.attack)  # unknown names fail here, before any loading
    n = cfg.get("num_examples", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"num_examples = {n!r}; expected a non-negative integer (0: no {EXAMPLES})")
    params = cfg.params[cfg.attack].to_dict() if cfg.attack in cfg.params else {}
    config = AttackConfig(name=cfg.attack, target=cfg.target, mode=cfg.mode, poison_ratio=cfg.poison_ratio,
                          ratio_of=cfg.ratio_of, seed=cfg.seed, params=params, poisoning=cfg.poisoning)
    return config.validate()


def save_examples(path: Path, result: BackdoorResult, test, config: AttackConfig, n: int, mesh=None) -> None:
    """A 2 x n PNG grid: clean test images (top) and triggered ones (bottom), with predictions;
    nothing for n = 0."""
    if n == 0:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, module, variables = rundir.load_model(result.run_dir)
    triggered = triggered_test_set(test, config, result.trigger)
    pick = np.random.default_rng(0).choice(len(triggered.labels), min(n, len(triggered.labels)), replace=False)
    rows = [("clean", triggered.clean_images[pick]), ("triggered", triggered.images[pick])]
    fig, axes = plt.subplots(2, len(pick), figsize=(1.6 * len(pick), 4.4), squeeze=False)
    names = test.class_names
    for r, (title, images) in enumerate(rows):
        preds = predict(module, variables, images, mesh=mesh)
        for c, i in enumerate(pick):
            ax = axes[r, c]
            ax.imshow(images[c].squeeze(-1) if images.shape[-1] == 1 else images[c], cmap="gray", vmin=0, vmax=255)
            truth = triggered.labels[i] if r == 0 else triggered.targets[i]
            ax.set_title(f"{title}\npred {names[preds[c]]}", fontsize=7, color="green" if preds[c] == truth else "red")
            ax.axis("off")
    fig.suptitle(f"{config.name}: top clean (green = correct), bottom triggered (green = target)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_clean_model(clean_run: str, train) -> TrainedModel:
    """The clean model an optimised trigger (TrojanNN, LC, LF) is made on: the run directory of an
    `experiments.train` run whose classes are those of `train` (the attack's training split).
    Raises InputError for an attack or defense run (a backdoored model: the trigger would be
    optimised on its backdoor) or another number of classes; a model trained on another dataset
    of the same shape is only reported, as it may be deliberate (a surrogate model)."""
    run_dir = output_dir(clean_run)
    record = rundir.read_record(run_dir)
    if record.get("kind", "train") != "train":
        raise InputError(f"--clean_run {clean_run} holds a backdoored model (a run of kind {record.get('kind')!r}); "
                         "expected a clean model trained by experiments.train")
    model = TrainedModel(*rundir.load_model(run_dir))
    if model.spec.num_classes != train.num_classes:
        raise InputError(f"--clean_run {clean_run} classifies {model.spec.num_classes} classes, the dataset has "
                         f"{train.num_classes}; expected a clean model of this dataset")
    if record.get("dataset") != train.name:
        print(f"note: the clean model {clean_run} was trained on {record.get('dataset')!r}, the attack runs on "
              f"{train.name!r}", file=sys.stderr)
    return model


def run_attack(cfg) -> BackdoorResult:
    """Loads cfg.dataset, trains cfg.model backdoored by cfg.attack into cfg.out, plots examples."""
    config = attack_config(cfg)
    train_config = dataclass_from_config(TrainConfig, cfg.train).validate()
    if cfg.model not in MODELS:
        raise InputError(f"unknown model {cfg.model!r}; expected one of {', '.join(MODELS)}")
    mesh = make_mesh(cfg.num_devices)
    train, test = load_dataset(cfg.dataset)
    clean_model = load_clean_model(cfg.clean_run, train) if cfg.clean_run else None
    prepare_attack(config, train.image_shape, train.num_classes)  # data-dependent checks, before any output
    record = {"dataset_source": str(cfg.dataset), "class_names": list(train.class_names),
              "clean_run": cfg.clean_run}
    result = train_backdoor(config, cfg.model, cfg.width, train, test, train_config, output_dir(cfg.out), mesh=mesh,
                            clean_model=clean_model, record=record, stop_after_steps=cfg.stop_after_steps)
    if result.fit.complete:
        save_examples(result.run_dir / EXAMPLES, result, test, config, cfg.num_examples, mesh)
    last = result.fit.history[-1] if result.fit.history else {}
    state = "finished" if result.fit.complete else "stopped (resumable)"
    print(f"{state}: {result.run_dir}  " + "  ".join(f"{k}={last.get(k, float('nan')):.4f}"
                                                     for k in ("test_acc", "asr", "asr_strict", "ra")))
    return result


def main():
    """Parses --config (defined here, not at import, so entry points can be imported together)."""
    config = define_config_flag("experiments/configs/attack_base.py", "attack config file")
    short = define_shorthands(("attack", "dataset", "model", "width", "out", "clean_run"))
    app.run(flags_parser=parse_flags, main=lambda argv: run_cli(lambda: run_attack(
        apply_shorthands(config.value, {k: v.value for k, v in short.items()}, sys.argv))))


if __name__ == "__main__":
    main()
