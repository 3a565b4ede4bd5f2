"""Re-tabulates the CIFAR-10 archive and puts the result where the docs show it.

  python experiments/scripts/refresh_archive_docs.py [--readme README.md]

Runs the README's archive command (`experiments.run` with matrix_cifar10_cpu, the archive in
docs/results/cifar10/cells, reuse_only: nothing is trained) into a temporary folder, copies its
results.md and plots to docs/results/cifar10/matrix_archive_{results.md,bars.png,curves.png},
and replaces the README's "| attack | none | dhbe | ..." grid (C-Acc / ASR) and its
"| attack (minutes) | none | ..." grid (wall time per cell) with the new ones (the dataset, model
and seed columns, one value each, left out). Run from the repository root after new cells
were archived; review the diff and the README's prose around the grid before committing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.summary import GRID_HEADING, TIME_GRID_HEADING

ARCHIVE = Path("docs/results/cifar10")
GRID_HEADER = "| attack | none | dhbe |"
TIME_GRID_HEADER = "| attack (minutes) | none | dhbe |"
COPIES = {"results.md": "matrix_archive_results.md", "plots/asr_cacc.png": "matrix_archive_bars.png",
          "plots/curves.png": "matrix_archive_curves.png"}


def grid_without_ids(results_md: str, heading: str = GRID_HEADING) -> str:
    """The grid under `heading` of a matrix results.md ('## At a glance': C-Acc / ASR; '## Wall
    time': minutes) with its dataset, model and seed columns dropped."""
    if heading not in results_md:
        raise SystemExit(f"no {heading!r} section in the matrix's results.md")
    start = results_md.index("| dataset | model | seed | attack |", results_md.index(heading))
    lines = results_md[start:].strip().splitlines()
    lines = lines[:next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]
    return "\n".join("|" + "|".join(line.strip("|").split("|")[3:]) + "|" for line in lines)


def replace_grid(readme: str, grid: str, header: str = GRID_HEADER) -> str:
    """readme with its CIFAR-10 grid (from the line starting `header` to the next blank line)
    replaced by grid."""
    if header not in readme:
        raise SystemExit(f"no line starting {header!r} in the README: nothing to replace")
    i = readme.index(header)
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
        results = (out / "results.md").read_text()
        times = grid_without_ids(results, TIME_GRID_HEADING).replace("| attack |", "| attack (minutes) |", 1)
        text = replace_grid(readme.read_text(), grid_without_ids(results))
        readme.write_text(replace_grid(text, times, TIME_GRID_HEADER))
    print(f"updated {args.readme} and {', '.join(str(ARCHIVE / d) for d in COPIES.values())}")


if __name__ == "__main__":
    main()
