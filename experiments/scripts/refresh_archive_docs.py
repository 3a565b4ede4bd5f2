"""Re-tabulates the CIFAR-10 archive and puts the result where the docs show it.

  python experiments/scripts/refresh_archive_docs.py [--readme README.md]

Runs the README's archive command (`experiments.run` with matrix_cifar10_cpu, the archive in
docs/results/cifar10/cells, reuse_only: nothing is trained) into a temporary folder, copies its
results.md and plots to docs/results/cifar10/matrix_archive_{results.md,bars.png,curves.png},
and replaces the README's "| attack | none | dhbe | ..." grid with the new one (the dataset,
model and seed columns, one value each, left out). Run from the repository root after new cells
were archived; review the diff and the README's prose around the grid before committing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ARCHIVE = Path("docs/results/cifar10")
GRID_HEADER = "| attack | none | dhbe |"
COPIES = {"results.md": "matrix_archive_results.md", "plots/asr_cacc.png": "matrix_archive_bars.png",
          "plots/curves.png": "matrix_archive_curves.png"}


def grid_without_ids(results_md: str) -> str:
    """The 'At a glance' grid of a matrix results.md (its last table; the full table comes first)
    with its dataset, model and seed columns dropped."""
    start = results_md.rindex("| dataset | model | seed | attack |")
    lines = results_md[start:].strip().splitlines()
    lines = lines[:next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]
    return "\n".join("|" + "|".join(line.strip("|").split("|")[3:]) + "|" for line in lines)


def replace_grid(readme: str, grid: str) -> str:
    """readme with its CIFAR-10 grid (from GRID_HEADER to the next blank line) replaced by grid."""
    if GRID_HEADER not in readme:
        raise SystemExit(f"no line starting {GRID_HEADER!r} in the README: nothing to replace")
    i = readme.index(GRID_HEADER)
    j = readme.index("\n\n", i)
    return readme[:i] + grid + readme[j:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table"
        subprocess.run([sys.executable, "-m", "experiments.run", "--config", "experiments/configs/matrix_cifar10_cpu.py",
                        f"--config.archive={ARCHIVE / 'cells'}", "--config.reuse_only=True", f"--config.out={out}",
                        "--config.release_weights=True"],  # the whole matrix: complete rows drop their weights
                       check=True)
        for source, dest in COPIES.items():
            shutil.copyfile(out / source, ARCHIVE / dest)
        readme = Path(args.readme)
        readme.write_text(replace_grid(readme.read_text(), grid_without_ids((out / "results.md").read_text())))
    print(f"updated {args.readme} and {', '.join(str(ARCHIVE / d) for d in COPIES.values())}")


if __name__ == "__main__":
    main()
