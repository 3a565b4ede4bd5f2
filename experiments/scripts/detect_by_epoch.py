"""Does the adversarial-example observation behind PBE appear as a backdoored model trains longer?

  PYTHONPATH=. python experiments/scripts/detect_by_epoch.py RUN_DIR [--eps 6 32 ...] [--epochs 3 10 30]

RUN_DIR is a training or attack run whose `checkpoints/` kept the epochs of interest (train it
with `--config.train.max_to_keep=<epochs>`). For every kept training state, the model's weights
(params and batch statistics; the optimiser state is ignored) are run through `pbe_jax.detect`
on 500 test images at each EPS (1/255 units, default 6 and 32; PGD-7, step eps/5; every kept epoch unless `--epochs` names some) and one line
is printed per (step, eps): the suspected class, its concentration, the flip rate, the share of
the flips that land on the attack's target (`experiments.detect.target_share`; all-to-all: i -> i + 1), and the class counts. The test accuracy and ASR of
each epoch are in the run's history.jsonl. Used for issue 5's "teacher scale" question on MNIST
(docs/pbe.md).
"""

import argparse
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from attacks.pgd import PGDConfig
from backdoor_core import rundir
from backdoor_core.data import load_dataset
from backdoor_core.models import build_model, ModelSpec
from experiments.detect import target_share
from pbe_jax import DetectConfig, detect


def saved_steps(run_dir: Path) -> list[int]:
    """The optimiser steps of the training states kept under run_dir/checkpoints, ascending."""
    return sorted(int(p.name) for p in (run_dir / rundir.CHECKPOINTS).iterdir() if p.name.isdigit())


def variables_at(run_dir: Path, step: int) -> dict:
    """{'params', 'batch_stats'} of the training state saved at `step` (restored untyped)."""
    state = ocp.StandardCheckpointer().restore((run_dir / rundir.CHECKPOINTS / str(step) / "default").absolute())
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def main(run: str, eps_list: list[float], epochs: list[int] | None = None, n: int = 500) -> None:
    run_dir = Path(run).expanduser()
    record = rundir.read_record(run_dir)
    module = build_model(ModelSpec.from_dict(record["model"]))
    _, test = load_dataset(record.get("dataset_source") or record["dataset"])
    attack = record.get("attack") or {}
    epoch_of = {row["step"]: row["epoch"] for row in rundir.read_history(run_dir) if "epoch" in row and "step" in row}
    steps = [s for s in saved_steps(run_dir) if not epochs or epoch_of.get(s) in epochs]
    if not steps:
        raise SystemExit(f"{run_dir}/checkpoints keeps none of the epochs asked for ({epochs}); "
                         f"kept: {sorted(epoch_of.get(s, s) for s in saved_steps(run_dir))}")
    for step in steps:
        variables = variables_at(run_dir, step)
        for eps in eps_list:
            config = DetectConfig(pgd=PGDConfig(eps=eps / 255, alpha=eps / 5 / 255, steps=7), num_images=n)
            d = detect(module, variables, test.images, config)
            print(f"epoch {epoch_of.get(step, '?')!s:>3} step {step:6d} eps {eps:5.1f} suspected {d.suspected_target} "
                  f"concentration {d.concentration:.3f} flip {d.flip_rate:.3f} on_target {target_share(d.transitions, attack)} "
                  f"counts {np.asarray(d.counts).tolist()}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--eps", type=float, nargs="+", default=[6.0, 32.0])
    parser.add_argument("--epochs", type=int, nargs="+")
    args = parser.parse_args()
    main(args.run, args.eps, args.epochs)
