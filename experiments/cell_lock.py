"""One process per matrix cell, so that several `experiments.run` processes can share one `out`
(e.g. one per GPU, or a teachers-only run beside the defenses' run) without two of them running,
and corrupting, the same cell.

A cell's lock is `out/.locks/<teachers|defenses>-<cell name>.lock`, taken before the cell runs and
removed after it, whatever its outcome (`backdoor_core.locks`: atomic creation, a dead holder's
lock taken over). Within the cell, `rundir.open_run` locks the run directory itself as well.
"""

from __future__ import annotations

from pathlib import Path

LOCK_DIR = ".locks"


def lock_path(out: Path, run_dir: Path) -> Path:
    """The lock file of the cell whose run directory is `run_dir` (under `out`)."""
    rel = run_dir.relative_to(out)
    return out / LOCK_DIR / ("-".join(rel.parts) + ".lock")
