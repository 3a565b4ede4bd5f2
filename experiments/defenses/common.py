"""What every defense run needs: the backdoored run it starts from, evaluation and plots.

`load_attack_run(run_dir)` reads everything from an attack's run directory (model, trigger,
attack config, dataset); `AttackRun.evaluate(variables)` gives C-Acc (test_acc), ASR, ASR*
(asr_strict) and RA on the test split; `finish_defense_run` saves the purified model with its
metrics and DER against the teacher.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from attacks.backdoor import POISONED_INDICES, backdoor_metrics, load_attack
from attacks.base import AttackConfig
from attacks.poison import TriggeredTest, triggered_test_set
from attacks.triggers import Trigger
from backdoor_core import rundir
from backdoor_core.checkpoint import save_variables
from backdoor_core.data import Split, load_dataset
from backdoor_core.errors import InputError
from backdoor_core.metrics import defense_effectiveness_rating
from backdoor_core.models import ModelSpec, check_variables_fit


@dataclasses.dataclass
class AttackRun:
    """A finished attack run: the backdoored model and what is needed to measure its backdoor.

    `train` is the poisoned training split as the attack trained on it when poisoning was
    static (PBE's setting: the defender holds it without knowing which images are poisoned);
    `poisoned_indices` is ground truth for diagnostics only, never given to a defense.
    """

    run_dir: Path
    record: dict
    spec: ModelSpec
    module: object
    variables: dict
    attack: AttackConfig
    trigger: Trigger
    test: Split
    triggered: TriggeredTest
    dataset_source: str
    poisoned_indices: np.ndarray | None

    def evaluate(self, variables: dict, mesh=None) -> dict:
        """{'test_acc', 'asr', 'asr_strict', 'ra'} of `variables` on this run's test split
        (InputError if they are not variables of this run's model)."""
        check_variables_fit(self.module, variables, self.spec.image_shape, f"evaluate: variables ({self.spec.name})")
        return backdoor_metrics(self.module, variables, self.test, self.triggered, mesh)

    @property
    def teacher_metrics(self) -> dict:
        return self.record.get("metrics", {})


def load_attack_run(run_dir: Path) -> AttackRun:
    """Loads a finished attack run directory; InputError if it is not one or is unfinished."""
    run_dir = Path(run_dir).expanduser().absolute()
    record = rundir.read_record(run_dir)
    if record.get("kind") != "attack":
        raise InputError(f"{run_dir} is a {record.get('kind')!r} run; expected an attack run (experiments.attack)")
    spec, module, variables = rundir.load_model(run_dir)
    attack, trigger = load_attack(run_dir)
    source = record.get("dataset_source")
    if not source:
        raise InputError(f"{run_dir}/record.json names no dataset_source to evaluate on")
    _, test = load_dataset(source)
    indices_path = run_dir / POISONED_INDICES
    indices = np.load(indices_path) if indices_path.is_file() else None
    return AttackRun(run_dir, record, spec, module, variables, attack, trigger, test,
                     triggered_test_set(test, attack, trigger), source, indices)


def with_der(metrics: dict, teacher: dict) -> dict:
    """metrics plus DER against the teacher's (ASR and C-Acc of both)."""
    if not {"asr", "test_acc"} <= set(metrics) or not {"asr", "test_acc"} <= set(teacher):
        return metrics
    der = defense_effectiveness_rating(teacher["asr"], metrics["asr"], teacher["test_acc"], metrics["test_acc"])
    return {**metrics, "der": der}


def finish_defense_run(out_dir: Path, variables: dict, metrics: dict, **fields) -> dict:
    """Saves the purified model and marks the defense run complete with its metrics."""
    save_variables(Path(out_dir) / rundir.MODEL, variables)
    rundir.update_record(out_dir, status="complete", metrics=metrics, **fields)
    return metrics


def plot_history(history: list[dict], keys: tuple[str, ...], path: Path, title: str, x: str = "step") -> None:
    """Line plot of history[key] against history[x] for each key present (PNG at `path`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        rows = [r for r in history if key in r]
        if rows:
            ax.plot([r[x] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel(x)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def image_grid(images: np.ndarray, path: Path, title: str, columns: int = 8) -> None:
    """Saves float images [N, H, W, C] in [0, 1] (or any range, min-max scaled) as a PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images, np.float32)
    if images.min() < 0 or images.max() > 1:
        images = (images - images.min()) / max(float(images.max() - images.min()), 1e-8)
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.1 + 0.4))
    for ax, i in zip(np.ravel(axes), range(rows * columns)):
        ax.axis("off")
        if i < len(images):
            img = images[i]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
