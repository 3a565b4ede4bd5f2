"""Is part of DHBE's C-Acc cost a batch-norm mismatch? The `cpu` config keeps the teacher's BN
statistics in the student (student_bn_train=False) while the student's weights move; this probe
re-estimates a finished model's BN statistics on real training images (a diagnostic only: a
data-free defense has none) and measures C-Acc and ASR before and after.

  PYTHONPATH=. python experiments/scripts/dhbe_bn_probe.py RUN_DIR [RUN_DIR ...] [--images 12800]

For each run (a DHBE/DFAD output or an attack run as the control) it prints C-Acc / ASR with the
saved statistics and with statistics re-estimated from `images` clean training images drawn at random
(train-mode passes of batch 256 through the batch-norm layers' running averages, enough passes
for the average to forget the saved values). If the re-estimated ones recover most of the gap to
the teacher, the cost is the statistics, and a data-free re-estimate (on G's images) is worth
trying; if not, it is in the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from backdoor_core.augment import crop_and_flip, to_float
from backdoor_core.data import load_split
from backdoor_core.rundir import load_model, read_record
from experiments.defenses.common import load_attack_run


def reestimate_batch_stats(model, variables: dict, images: np.ndarray, batch: int = 256, passes: int = 3,
                           augment: bool = False) -> dict:
    """variables with batch_stats replaced by running averages over `images` [N, H, W, C] uint8:
    `passes` train-mode sweeps in batches of `batch` (the running averages forget the saved
    values geometrically; three sweeps of 50 batches leave under 1e-6 of them at momentum 0.9);
    with `augment`, each batch is randomly cropped (4 px zero padding) and flipped first, as the
    CIFAR-10 teachers were trained."""
    @jax.jit
    def update(variables, x, key):
        x = to_float(x)
        if augment:
            x = crop_and_flip(key, x, 4, True)
        _, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return {**variables, "batch_stats": new["batch_stats"]}

    key = jax.random.PRNGKey(0)
    for _ in range(passes):
        for start in range(0, len(images) - batch + 1, batch):
            key, sub = jax.random.split(key)
            variables = update(variables, jnp.asarray(images[start:start + batch]), sub)
    return variables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--images", type=int, default=12800)
    parser.add_argument("--augment", action="store_true", help="crop and flip the images as in training")
    args = parser.parse_args()
    print("| run | C-Acc / ASR, saved BN statistics | re-estimated on clean training images |\n|---|---|---|")
    attack_runs, train_images = {}, {}
    for run in args.runs:
        record = read_record(run)
        attack_dir = Path(record.get("teacher_run") or run).expanduser().absolute()
        if attack_dir not in attack_runs:
            attack_runs[attack_dir] = load_attack_run(attack_dir)
            train = load_split(attack_runs[attack_dir].dataset_source, "train")  # sorted by class: draw a sample
            pick = np.random.default_rng(0).permutation(len(train.images))[: args.images]
            train_images[attack_dir] = train.images[pick]
        attack_run = attack_runs[attack_dir]
        _, model, variables = load_model(run)
        cells = []
        for v in (variables, reestimate_batch_stats(model, variables, train_images[attack_dir], augment=args.augment)):
            m = attack_run.evaluate(v)
            cells.append(f"{100 * m['test_acc']:.1f} / {100 * m['asr']:.1f}")
        print(f"| {run.name} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
