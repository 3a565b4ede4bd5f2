"""Mean and spread of a matrix's cells over seeds: one row per (dataset, model, attack, defense).

A defense compared on one seed is compared on one draw of the teacher's training, the poisoned
subset, the defense's own randomness and, for DHBE, the generator's latents; the CIFAR-10 runs in
docs/ moved by 1.5 points of C-Acc and 3 of ASR between two seeds of one DHBE cell. When a matrix
runs several seeds (`--config.seeds="(0,1,2)"`), `experiments.run` writes results_seeds.md/.csv
from these functions next to the per-cell results.md. Each seed's DER is against its own
teacher (the seed is part of the teacher's identity), and its mean is the mean of those DERs.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

METRICS = ("C-Acc", "ASR", "ASR*", "RA", "DER")
GROUP_KEYS = ("dataset", "model", "attack", "defense")
SUMMARY_COLUMNS = (*GROUP_KEYS, "seeds", *METRICS, "seconds")
CONVENTIONS = """Mean over the seeds whose cell finished, +- the sample standard deviation (n - 1 in the
denominator; none with one seed); `seeds`: finished / listed. Metrics as in results.md (percent,
except DER; each seed's DER against its own teacher). `seconds`: mean wall time per finished cell.
"""


def _number(value) -> float | None:
    """A table cell ('83.1', 83.1, '-', None) as a float, or None when it holds no number."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation with n - 1) of values; std None for fewer than 2, both None for 0."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize_over_seeds(rows: list[dict]) -> list[dict]:
    """One summary row per (dataset, model, attack, defense) of the matrix's result rows, in the
    order the groups first appear.

    Args:
      rows: `experiments.run` result rows (keys dataset, model, seed, attack, defense, status,
        the metric columns as strings such as '83.1' or '-', and seconds).
    Returns:
      rows with the group keys, `seeds` ('finished/listed'), and for each metric and `seconds` a
      pair `<name> mean` and `<name> std` (floats, or None where no finished seed reports it / fewer
      than two do).
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in GROUP_KEYS), []).append(row)
    summary = []
    for key, members in groups.items():
        done = [r for r in members if r["status"] == "complete"]
        out = dict(zip(GROUP_KEYS, key))
        out["seeds"] = f"{len({r['seed'] for r in done})}/{len({r['seed'] for r in members})}"
        for name in (*METRICS, "seconds"):
            values = [v for v in (_number(r.get(name)) for r in done) if v is not None]
            out[f"{name} mean"], out[f"{name} std"] = mean_std(values)
        summary.append(out)
    return summary


def format_cell(mean: float | None, std: float | None, digits: int) -> str:
    """'83.1 +- 0.4', '83.1' (one seed) or '-' (none)."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} +- {std:.{digits}f}"


def summary_markdown(summary: list[dict]) -> str:
    """The summary rows as a Markdown table with its conventions above it."""
    lines = ["# Results over seeds", "", CONVENTIONS, "| " + " | ".join(SUMMARY_COLUMNS) + " |",
             "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in summary:
        cells = [str(row[k]) for k in (*GROUP_KEYS, "seeds")]
        cells += [format_cell(row[f"{m} mean"], row[f"{m} std"], 3 if m == "DER" else 1) for m in METRICS]
        cells.append(format_cell(row["seconds mean"], row["seconds std"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


GRID_KEYS = ("dataset", "model", "seed", "attack")
GRID_HEADING, TIME_GRID_HEADING = "## At a glance", "## Wall time"  # results.md's two grids
GRID_CONVENTIONS = """C-Acc / ASR (percent) of each finished cell: one row per teacher, its own column first
(`none`), then one column per defense; `-` where the cell has not finished (its status is in the
table above).
"""


def grid_cell(row: dict | None) -> str:
    """'83.1 / 4.2' for a finished cell, its status word ('failed', 'stale', ...) otherwise, '-' if absent."""
    if row is None or row["status"] in ("not run", "skipped"):
        return "-"
    if row["status"] != "complete":
        return str(row["status"])
    return f"{row.get('C-Acc', '-')} / {row.get('ASR', '-')}"


def time_cell(row: dict | None) -> str:
    """A finished cell's wall time in minutes ('45.5', '<0.1' under 3 s; '45.5+' when it is a lower bound, part of a
    resumed cell's time having gone unrecorded), '-' without a recorded time, and `grid_cell`'s
    status word or '-' for a cell that has not finished."""
    if row is None or row["status"] != "complete":
        return grid_cell(row)
    if row.get("seconds") in (None, "", "-"):
        return "-"
    minutes = float(row["seconds"]) / 60
    return (f"{minutes:.1f}" if minutes >= 0.05 else "<0.1") + ("+" if row.get("time_incomplete") else "")


TIME_GRID_CONVENTIONS = """Wall time (minutes) of each finished cell on the machine that ran it (the `seconds` column
/ 60); `+`: a lower bound (a resumed cell whose earlier time went unrecorded); `-` or the status
word where the cell has not finished.
"""


def grid_markdown(rows: list[dict], cell=grid_cell, heading: str = GRID_HEADING,
                  conventions: str = GRID_CONVENTIONS) -> str:
    """The matrix at a glance: a Markdown table with one row per (dataset, model, seed, attack)
    and one column per defense (`none`, the teacher, first), each cell `cell` of its result row.

    Args:
      rows: `experiments.run` result rows (GRID_KEYS, defense, status, C-Acc and ASR as strings,
        seconds and time_incomplete for `time_cell`).
      cell: row (or None where the cell is absent) -> the table entry; `grid_cell` (C-Acc / ASR)
        or `time_cell` (minutes).
      heading, conventions: the section's heading and the paragraph under it.
    Returns:
      the heading, conventions and the table; groups and defenses in the order they first appear.
    """
    defenses = list(dict.fromkeys(["none", *(r["defense"] for r in rows)]))
    cells: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        cells.setdefault(tuple(row[k] for k in GRID_KEYS), {})[row["defense"]] = row
    lines = [heading, "", conventions, "| " + " | ".join([*GRID_KEYS, *defenses]) + " |",
             "|" + "---|" * (len(GRID_KEYS) + len(defenses))]
    for key, by_defense in cells.items():
        lines.append("| " + " | ".join([*(str(k) for k in key), *(cell(by_defense.get(d)) for d in defenses)]) + " |")
    return "\n".join(lines) + "\n"


def time_grid_markdown(rows: list[dict]) -> str:
    """`grid_markdown` of each cell's wall time in minutes (`time_cell`), under TIME_GRID_HEADING."""
    return grid_markdown(rows, cell=time_cell, heading=TIME_GRID_HEADING, conventions=TIME_GRID_CONVENTIONS)


def write_summary(out: Path, rows: list[dict]) -> bool:
    """Writes out/results_seeds.md and .csv when the rows hold more than one seed; True if it wrote."""
    if len({r["seed"] for r in rows}) < 2:
        return False
    summary = summarize_over_seeds(rows)
    (Path(out) / "results_seeds.md").write_text(summary_markdown(summary))
    fields = [*GROUP_KEYS, "seeds"] + [f"{m} {s}" for m in (*METRICS, "seconds") for s in ("mean", "std")]
    with (Path(out) / "results_seeds.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in summary)
    return True
