"""The matrix's plots: C-Acc and ASR before and after each defense, every cell's training curve,
and a gallery of the attacks' triggers.

  asr_cacc.png        one panel per teacher: bars of C-Acc and ASR (%) for the teacher and each
                      defense, with the issues' success bounds (ASR 5%, teacher C-Acc - 3) drawn.

  curves.png          one panel per cell (rows: dataset/model/seed/attack; columns: the teacher
                      and each defense): C-Acc and ASR (%) along the run, read from the cell's
                      history.jsonl (teachers and FT/AFT per epoch, PBE per round, DHBE/DFAD per
                      iteration, CLP before/after; a defense whose history has no start row
                      starts at 0 from its teacher's final values). No images: safe to
                      publish for any dataset.
  trigger_gallery.png the same few test images clean (top row), then per attack triggered and
                      the change |x' - x| (each image rescaled to its own maximum). These are
                      dataset images: keep the file with the runs, out of public repositories
                      whose data licence forbids it.

All read only the result rows and finished run directories, so they can be redrawn from a matrix's `out` at any time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backdoor_core import rundir
from backdoor_core.errors import CheckpointError, InputError

X_KEYS = (("epoch", "epoch"), ("rounds_done", "PBE rounds done"), ("step", "iteration / step"))


def curve_points(history: list[dict]) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
    """(x label, x [n], C-Acc % [n], ASR % [n]) of the history rows that carry both test_acc and
    asr, x being the first of epoch / rounds_done / step that every such row has; None if there
    is no such row. Where a row also carries `average_test_acc` and `average_asr` (DHBE with
    `average_start`: the result is the average of the students, not the last student), those are
    its point, so the curve ends at the run's recorded result."""
    rows = [r for r in history if "test_acc" in r and "asr" in r]
    result = lambda r, m: float(r[f"average_{m}"] if "average_test_acc" in r and "average_asr" in r else r[m])
    for key, label in X_KEYS:
        if rows and all(key in r for r in rows):
            x = np.array([float(r[key]) for r in rows])
            return (label, x, 100 * np.array([result(r, "test_acc") for r in rows]),
                    100 * np.array([result(r, "asr") for r in rows]))
    return None


def _grid(rows: list[dict]) -> tuple[list[tuple], list[str]]:
    """(the (dataset, model, seed, attack) groups in order, the defenses in order, 'none' first)."""
    groups = list(dict.fromkeys((r["dataset"], r["model"], r["seed"], r["attack"]) for r in rows))
    defenses = list(dict.fromkeys(["none", *(r["defense"] for r in rows)]))
    return groups, defenses


def cell_curves(rows: list[dict]) -> dict[tuple, tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """{(dataset, model, seed, attack, defense): curve_points} for the finished or stopped cells of
    the matrix's result rows; a defense curve without a start row (DHBE, CLP) begins at x = 0 with
    its teacher's final C-Acc and ASR."""
    curves = {}
    for r in rows:
        if r["status"] in ("complete", "stopped") and Path(r["run"]).is_dir():
            points = curve_points(rundir.read_history(Path(r["run"])))
            if points is not None:
                curves[(r["dataset"], r["model"], r["seed"], r["attack"], r["defense"])] = points
    for key, (label, x, cacc, asr) in list(curves.items()):
        teacher = curves.get((*key[:4], "none"))
        if key[4] != "none" and teacher is not None and x[0] > 0:
            curves[key] = (label, np.r_[0.0, x], np.r_[teacher[2][-1], cacc], np.r_[teacher[3][-1], asr])
    return curves


def before_after(rows: list[dict]) -> tuple[list[tuple], list[str], np.ndarray, np.ndarray]:
    """(the (dataset, model, seed, attack) groups, the defenses ('none' first), C-Acc % [G, D],
    ASR % [G, D]) of the matrix's result rows, NaN where a cell has not finished or has no ASR."""
    groups, defenses = _grid(rows)
    cacc = np.full((len(groups), len(defenses)), np.nan)
    asr = np.full_like(cacc, np.nan)
    for r in rows:
        if r["status"] == "complete" and r.get("ASR", "-") != "-" and r.get("C-Acc", "-") != "-":
            i = groups.index((r["dataset"], r["model"], r["seed"], r["attack"]))
            j = defenses.index(r["defense"])
            cacc[i, j], asr[i, j] = float(r["C-Acc"]), float(r["ASR"])
    return groups, defenses, cacc, asr


def plot_before_after(path: Path, rows: list[dict], asr_target: float = 5.0, cacc_drop: float = 3.0) -> bool:
    """asr_cacc.png: one panel per teacher (dataset/model/seed/attack) with a pair of bars, C-Acc
    and ASR (%), for the teacher ('none') and each defense, a dotted line at ASR = `asr_target`
    and a dashed one at the teacher's C-Acc - `cacc_drop` (the issues' success bounds); defenses
    without a finished cell are left empty. False if no cell has finished."""
    groups, defenses, cacc, asr = before_after(rows)
    keep = ~np.all(np.isnan(cacc), axis=1)
    if not keep.any():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g, k in zip(groups, keep) if k]
    cacc, asr = cacc[keep], asr[keep]
    cols = min(3, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(0.55 * len(defenses) * cols + 1, 2.1 * nrows),
                             squeeze=False, sharey=True)
    x = np.arange(len(defenses))
    for k, group in enumerate(groups):
        ax = axes[k // cols, k % cols]
        ax.bar(x - 0.2, np.nan_to_num(cacc[k]), 0.4, label="C-Acc", color="tab:blue")
        ax.bar(x + 0.2, np.nan_to_num(asr[k]), 0.4, label="ASR", color="tab:orange")
        for j in np.flatnonzero(np.isnan(cacc[k])):
            ax.text(x[j], 8, "-", ha="center", fontsize=9, color="gray")
        ax.axhline(asr_target, color="tab:orange", ls=":", lw=0.8)
        if not np.isnan(cacc[k, 0]):
            ax.axhline(cacc[k, 0] - cacc_drop, color="tab:blue", ls="--", lw=0.8)
        ax.set_xticks(x, ["teacher" if d == "none" else d for d in defenses], fontsize=6, rotation=45)
        ax.set_ylim(0, 100)
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title(f"{group[3]} ({group[0]}, seed {group[2]})", fontsize=7)
    for k in range(len(groups), nrows * cols):
        axes[k // cols, k % cols].axis("off")
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"C-Acc and ASR (%) before (teacher) and after each defense; dotted: ASR {asr_target:g}%, "
                 f"dashed: teacher C-Acc - {cacc_drop:g}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_curves(path: Path, rows: list[dict]) -> bool:
    """curves.png (module docstring) from the matrix's result rows; False if no cell has a curve."""
    curves = cell_curves(rows)
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, defenses = _grid(rows)
    defenses = [d for d in defenses if any(k[4] == d for k in curves)]
    fig, axes = plt.subplots(len(groups), len(defenses), figsize=(2.4 * len(defenses), 1.9 * len(groups)),
                             squeeze=False)
    for i, group in enumerate(groups):
        for j, defense in enumerate(defenses):
            ax = axes[i, j]
            points = curves.get((*group, defense))
            if points is None:
                ax.axis("off")
                continue
            label, x, cacc, asr = points
            ax.plot(x, cacc, "-o", ms=2, lw=1, label="C-Acc")
            ax.plot(x, asr, "--o", ms=2, lw=1, label="ASR")
            ax.set_ylim(0, 100)
            ax.set_title(f"{group[3]} / {'teacher' if defense == 'none' else defense}", fontsize=7)
            ax.set_xlabel(label, fontsize=6)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("C-Acc (solid) and ASR (dashed), % along each run", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def gallery_images(run_dir: Path, test, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean uint8 [n, H, W, C], triggered uint8 [n, H, W, C]): n test images drawn with a fixed
    seed among those not of the attack's target class (the ASR set), triggered by the trigger
    saved in the attack run `run_dir`."""
    from attacks.backdoor import load_attack
    from attacks.poison import poison_target, triggered_test_set

    config, trigger = load_attack(run_dir)
    eligible = np.flatnonzero(test.labels != poison_target(test.labels, config, test.num_classes))
    pick = np.sort(np.random.default_rng(0).permutation(eligible)[:n])
    picked = triggered_test_set(test.subset(pick), config, trigger)
    return picked.clean_images, picked.images


def plot_trigger_gallery(path: Path, rows: list[dict], n: int = 6, warn=print) -> bool:
    """trigger_gallery.png (module docstring) for the finished teachers among `rows`; a teacher
    whose trigger cannot be read is left out with a warning. False if no teacher was drawn."""
    from backdoor_core.data import load_dataset

    datasets, panels = {}, []
    for r in rows:
        if r["defense"] != "none" or r["status"] != "complete":
            continue
        run_dir = Path(r["run"])
        try:
            source = rundir.read_record(run_dir).get("dataset_source")
            if source not in datasets:
                datasets[source] = load_dataset(source)[1]
            panels.append((r["attack"], *gallery_images(run_dir, datasets[source], n)))
        except (InputError, CheckpointError, OSError) as e:
            warn(f"trigger gallery: {run_dir.name} left out ({e})")
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(p[1]) for p in panels)
    # one clean row on top when every attack drew the same images (same target), else one each
    shared = all(p[1].shape == panels[0][1].shape and np.array_equal(p[1], panels[0][1]) for p in panels)
    per_attack = 2 if shared else 3
    fig, axes = plt.subplots(int(shared) + per_attack * len(panels), cols,
                             figsize=(1.1 * cols, 1.15 * (int(shared) + per_attack * len(panels))), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def show(ax, image, title=None):
        ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
        if title:
            ax.set_title(title, fontsize=6, loc="left")

    if shared:
        for c, image in enumerate(panels[0][1]):
            show(axes[0, c], image, "clean" if c == 0 else None)
    for p, (attack, clean, triggered) in enumerate(panels):
        top = int(shared) + per_attack * p
        change = np.abs(triggered.astype(np.float32) - clean.astype(np.float32))
        scale = np.maximum(change.reshape(len(change), -1).max(axis=1), 1.0)
        for c in range(len(clean)):
            if not shared:
                show(axes[top, c], clean[c], f"{attack}: clean" if c == 0 else None)
            show(axes[top + per_attack - 2, c], triggered[c], attack if c == 0 else None)
            show(axes[top + per_attack - 1, c], (255 * change[c] / scale[c]).astype(np.uint8),
                 "|change|, rescaled" if c == 0 else None)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
