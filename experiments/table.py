"""Results tables from finished run directories (training, attack and defense runs).

  python -m experiments.table --runs ~/runs/cifar10/* [--out docs/results/table.md]

Attack and clean-training runs give one row each: dataset, model, attack, poisoned images,
epochs, C-Acc, ASR, ASR*, RA and the training wall time (sum of the epochs' times). Defense runs
give the teacher's C-Acc/ASR next to the purified model's C-Acc, ASR, ASR*, RA and DER, and the
defense's wall time where its history records it. Metrics are the final model's (no selection):
C-Acc on the clean test set; ASR on triggered test images whose true class is not the target;
ASR* (the DHBE code's stricter ASR) only over those the model classifies correctly when clean;
RA the share of triggered images still given their true label; DER = (max(0, dASR) -
max(0, dACC) + 1) / 2. All in percent, except DER.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backdoor_core import rundir
from backdoor_core.errors import InputError
from experiments.common import attack_label, table_path

MODEL_COLUMNS = ("run", "dataset", "model", "attack", "poisoned", "epochs", "C-Acc", "ASR", "ASR*", "RA", "wall")
DEFENSE_COLUMNS = ("run", "attack", "defense", "teacher C-Acc", "teacher ASR", "C-Acc", "ASR", "ASR*", "RA", "DER",
                   "wall")


def pct(value) -> str:
    """A fraction in [0, 1] as a percentage with one decimal ('-' when missing)."""
    return "-" if value is None else f"{100 * float(value):.1f}"


def wall_time(history: list[dict]) -> str:
    """Wall time of a run from its history: sum of epoch times, or the last elapsed_s."""
    epochs = [r["epoch_time_s"] for r in history if "epoch_time_s" in r]
    if epochs:
        seconds = sum(epochs)
    else:
        elapsed = [r["elapsed_s"] for r in history if "elapsed_s" in r]
        if not elapsed:
            return "-"
        seconds = elapsed[-1]
    return f"{seconds / 60:.1f} min"


def model_name(record: dict) -> str:
    """'preact_resnet18 x0.25' from a record's model spec."""
    model = record.get("model", {})
    return f"{model.get('name', '?')} x{model.get('width', 1.0):g}"


def final_metrics(record: dict, history: list[dict]) -> dict:
    """The run's final metrics: record['metrics'] or the last history row with test_acc."""
    if record.get("metrics"):
        return record["metrics"]
    rows = [r for r in history if "test_acc" in r]
    return rows[-1] if rows else {}


def run_row(run_dir: Path) -> tuple[str, dict]:
    """('model' | 'defense', row dict) for one finished run directory."""
    record = rundir.read_record(run_dir)
    history = rundir.read_history(run_dir)
    metrics = final_metrics(record, history)
    attack = record.get("attack") or {}
    if record.get("kind") == "defense":
        teacher = record.get("teacher_metrics", {})
        return "defense", {"run": run_dir.name, "attack": attack_label(attack), "defense": record.get("defense"),
                           "teacher C-Acc": pct(teacher.get("test_acc")), "teacher ASR": pct(teacher.get("asr")),
                           "C-Acc": pct(metrics.get("test_acc")), "ASR": pct(metrics.get("asr")),
                           "ASR*": pct(metrics.get("asr_strict")), "RA": pct(metrics.get("ra")),
                           "DER": "-" if metrics.get("der") is None else f"{metrics['der']:.3f}",
                           "wall": wall_time(history)}
    epochs = max((r.get("epoch", 0) for r in history), default=0)
    return "model", {"run": run_dir.name, "dataset": record.get("dataset", "?"), "model": model_name(record),
                     "attack": attack_label(attack, "none"), "poisoned": attack.get("num_poisoned", "-"),
                     "epochs": epochs, "C-Acc": pct(metrics.get("test_acc")), "ASR": pct(metrics.get("asr")),
                     "ASR*": pct(metrics.get("asr_strict")), "RA": pct(metrics.get("ra")), "wall": wall_time(history)}


def markdown(rows: list[dict], columns: tuple[str, ...]) -> str:
    """rows as a Markdown table with the given columns."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "-")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def tables(run_dirs: list[Path]) -> str:
    """The models table and the defenses table (each only if it has rows), as Markdown."""
    groups = {"model": [], "defense": []}
    for run_dir in run_dirs:
        kind, row = run_row(run_dir)
        groups[kind].append(row)
    parts = []
    if groups["model"]:
        parts.append(markdown(groups["model"], MODEL_COLUMNS))
    if groups["defense"]:
        parts.append(markdown(groups["defense"], DEFENSE_COLUMNS))
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True,
                        help="run directories (unfinished ones and other folders are skipped; none finished: exit 2)")
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args(argv)
    try:
        out = table_path(args.out)
    except InputError as e:
        parser.error(str(e))
    run_dirs = []
    for run in args.runs:
        path = Path(run).expanduser()
        if not (path / rundir.RECORD).is_file():
            continue  # logs or other folders beside the runs
        try:
            if rundir.read_record(path).get("status") == "complete":
                run_dirs.append(path)
            else:
                print(f"skipped unfinished run {path}", file=sys.stderr)
        except InputError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
    if not run_dirs:  # nothing to tabulate: say so instead of printing an empty table (and write no --out)
        print(f"error: none of the {len(args.runs)} path(s) given is a finished run directory (a folder whose "
              f"{rundir.RECORD} says status complete), e.g. {args.runs[0]}", file=sys.stderr)
        return 2
    text = tables(run_dirs)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
