"""Trains a clean classifier on any supported dataset source.

  python -m experiments.train --config experiments/configs/train_mnist.py \
      [--config.dataset=SOURCE] [--config.model=NAME] [--config.train.epochs=N] [--config.out=DIR]
  (--dataset, --model, --width and --out are short for --config.dataset and so on)

Writes a run directory (record.json, history.jsonl, checkpoints/, model/). Running the same
command again resumes an unfinished run; a finished one is never overwritten.
"""

from __future__ import annotations

import sys

from absl import app

from backdoor_core.data import load_dataset
from backdoor_core.errors import InputError
from backdoor_core.fit import FitResult, fit
from backdoor_core.models import MODELS, build_model, spec_for_data
from backdoor_core.sharding import make_mesh
from backdoor_core.train import TrainConfig, clean_eval_fn
from experiments.common import (apply_shorthands, dataclass_from_config, define_config_flag, define_shorthands,
                                output_dir, parse_flags, run_cli)


def train_clean(cfg) -> FitResult:
    """Loads cfg.dataset, builds cfg.model at cfg.width and trains it into cfg.out."""
    config = dataclass_from_config(TrainConfig, cfg.train).validate()
    if cfg.model not in MODELS:  # checked before the (slow) dataset load
        raise InputError(f"unknown model {cfg.model!r}; expected one of {', '.join(MODELS)}")
    mesh = make_mesh(cfg.num_devices)
    train, test = load_dataset(cfg.dataset)
    spec = spec_for_data(cfg.model, train.images, train.num_classes, cfg.width)
    record = {"dataset_source": str(cfg.dataset), "class_names": list(train.class_names)}
    result = fit(spec, train, config, output_dir(cfg.out), mesh=mesh,
                 eval_fn=clean_eval_fn(build_model(spec), test, mesh), record=record,
                 stop_after_steps=cfg.stop_after_steps)
    state = "finished" if result.complete else "stopped (resumable)"
    last = result.history[-1] if result.history else {}
    print(f"{state}: {result.run_dir}  test_acc={last.get('test_acc', float('nan')):.4f}")
    return result


def main():
    """Parses --config (defined here, not at import, so entry points can be imported together)."""
    config = define_config_flag("experiments/configs/train_base.py", "training config file")
    short = define_shorthands(("dataset", "model", "width", "out"))
    app.run(flags_parser=parse_flags, main=lambda argv: run_cli(lambda: train_clean(
        apply_shorthands(config.value, {k: v.value for k, v in short.items()}, sys.argv))))


if __name__ == "__main__":
    main()
