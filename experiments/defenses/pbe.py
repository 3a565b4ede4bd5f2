"""PBE and AFT as erase-CLI defenses: purify an attack run's model, log rounds, detect, plot.

  python -m experiments.erase --defense pbe --run RUN_DIR --config experiments/configs/erase_pbe.py:cpu
  python -m experiments.erase --defense aft --run RUN_DIR --config experiments/configs/erase_aft.py:cpu

PBE's defender holds the poisoned training set: it is rebuilt here from the attack run's
dataset source, attack config and saved trigger (`poisoned_training_set`). Static attacks give
exactly the attack's set (checked against poisoned_indices.npy); attacks that poison on the fly
(WaNet) or in their own loop (IAD) get a static set with their trained trigger on poison_ratio
of the images, relabelled (the official code's WaNet branch forgets the trigger; not copied).
The ground-truth poisoned indices feed PBE's diagnostics only. AFT's clean set is a random
`clean_fraction` of the clean training split. Both runs also record the detection result
(`pbe_jax.detect`) of the teacher and of the purified model on unlabelled test images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from attacks.backdoor import poisoning_kind
from attacks.base import TrainedModel
from attacks.pgd import PGDConfig, make_pgd_fn, pgd_dataset
from attacks.poison import poison_split
from attacks.registry import get_attack
from backdoor_core import rundir
from backdoor_core.data import Split, load_dataset
from backdoor_core.errors import InputError
from experiments.common import dataclass_from_config
from experiments.defenses.common import AttackRun, finish_defense_run, image_grid, plot_history, with_der
from pbe_jax import AFTConfig, AugmentConfig, DetectConfig, PBEConfig, aft, clean_subset, detect, pbe

METRICS = ("test_acc", "asr", "asr_strict", "ra")


def finetune_settings(cls, cfg):
    """`cls` (PBEConfig or AFTConfig) from cfg.<pbe|aft> plus the shared cfg.pgd and cfg.augment."""
    section = cfg.pbe if cls is PBEConfig else cfg.aft
    config = dataclass_from_config(cls, section)
    return dataclasses.replace(config, pgd=dataclass_from_config(PGDConfig, cfg.pgd).validate(),
                               augment=dataclass_from_config(AugmentConfig, cfg.augment))


def detect_settings(cfg) -> DetectConfig | None:
    """DetectConfig from cfg.detect (None when detection is disabled)."""
    d = cfg.detect
    if not d.enabled:
        return None
    pgd = PGDConfig(eps=d.eps, alpha=d.alpha, steps=d.steps)
    return DetectConfig(pgd=pgd, num_images=d.num_images, batch_size=d.batch_size, seed=d.seed).validate()


def clean_run_dir(run_dir: Path, record: dict) -> Path:
    """The clean model's run directory an attack run (LC, TrojanNN) was made with: the path its
    record names, or, when that is gone (runs moved to another machine or folder, e.g. a matrix's
    teachers/ copied from a GPU), the directory of the same name beside the attack run."""
    recorded = record.get("clean_run")
    if not recorded:
        raise InputError(f"{run_dir}/record.json names no clean_run; rebuilding this attack's poisoned set "
                         "needs the clean model it was made with")
    path = Path(recorded).expanduser()
    if path.is_dir():
        return path
    beside = Path(run_dir).parent / path.name
    if beside.is_dir():
        return beside
    raise InputError(f"the clean model of {run_dir} is neither at {path} (its record's clean_run) nor at {beside}; "
                     "expected its run directory at one of them")


def poisoned_training_set(attack_run: AttackRun, mesh=None) -> tuple[Split, np.ndarray, str]:
    """(poisoned training split, its poisoned indices, how it was obtained) for PBE's defender."""
    train, _ = load_dataset(attack_run.dataset_source)
    attack, config, trigger = get_attack(attack_run.attack.name), attack_run.attack, attack_run.trigger
    if poisoning_kind(attack, config) != "static":  # no poisoned set on disk: WaNet, IAD, per-batch
        poisoned, indices = poison_split(train, config, trigger, clean_label=attack.clean_label)
        return poisoned, indices, "materialised: trained trigger on poison_ratio of the images (attack poisons per batch)"
    clean = None
    if attack.poison_needs_clean_model:  # LC: its static poisoning needs the clean model it was built with
        clean = TrainedModel(*rundir.load_model(clean_run_dir(attack_run.run_dir, attack_run.record)))
    poisoned, indices = attack.poison(train, config, trigger, clean_model=clean, mesh=mesh)
    if attack_run.poisoned_indices is not None and not np.array_equal(indices, attack_run.poisoned_indices):
        raise InputError(f"the poisoned training set rebuilt for {attack_run.run_dir} differs from the attack's "
                         f"({len(indices)} vs {len(attack_run.poisoned_indices)} poisoned images); "
                         "was the dataset or the attack code changed since the attack ran?")
    return poisoned, indices, "rebuilt: identical to the attack's (poisoned_indices.npy)"


def run_pbe(cfg, attack_run: AttackRun, out_dir: Path, mesh) -> dict:
    """PBE with cfg's settings on attack_run's model and poisoned training set; final metrics."""
    config = finetune_settings(PBEConfig, cfg).validate()  # settings checked before any data is read; sizes below
    detect_config = detect_settings(cfg)  # checked now, not after the run: detection is its last step
    train, indices, how = poisoned_training_set(attack_run, mesh)
    config.validate(len(train))
    variables, history = pbe(attack_run.module, attack_run.variables, train, config,
                             eval_fn=lambda v: attack_run.evaluate(v, mesh), mesh=mesh, run_dir=out_dir,
                             ground_truth=indices, stop_after_rounds=cfg.get("stop_after"))
    rounds = [r for r in history if r.get("event") == "round"]
    if not rounds or rounds[-1]["rounds_done"] < config.rounds:
        return {"stopped_after_rounds": rounds[-1]["rounds_done"] if rounds else 0}
    summary = [{k: r[k] for k in ("round", "subset_size", "subset_poison_share", *METRICS) if k in r} for r in rounds]
    plot_history([r for r in history if r.get("event") in ("start", "round")],
                 (*METRICS, "next_subset_poison_share"), out_dir / "metrics.png",
                 f"PBE on {attack_run.attack.name}", x="rounds_done")
    _adversarial_grid(attack_run, config.pgd, train, out_dir, mesh)
    return _finish(cfg, attack_run, out_dir, variables, rounds[-1], mesh, detect_config, poisoned_set=how,
                   rounds=summary)


def run_aft(cfg, attack_run: AttackRun, out_dir: Path, mesh) -> dict:
    """AFT (or FT: no adversarial epochs) on a random cfg.clean_fraction of the clean training split."""
    config = finetune_settings(AFTConfig, cfg).validate()  # settings checked before any data is read; sizes below
    detect_config = detect_settings(cfg)  # checked now, not after the run: detection is its last step
    clean = clean_subset(load_dataset(attack_run.dataset_source)[0], cfg.clean_fraction, cfg.clean_seed)
    config.validate(len(clean))
    variables, history = aft(attack_run.module, attack_run.variables, clean, config,
                             eval_fn=lambda v: attack_run.evaluate(v, mesh), mesh=mesh, run_dir=out_dir,
                             stop_after_epochs=cfg.get("stop_after"))
    if history[-1].get("epoch", 0) < config.epochs:
        return {"stopped_after_epochs": history[-1].get("epoch", 0)}
    plot_history(history, METRICS, out_dir / "metrics.png", f"{cfg.defense.upper()} on {attack_run.attack.name}", x="epoch")
    return _finish(cfg, attack_run, out_dir, variables, history[-1], mesh, detect_config, clean_set_size=len(clean))


def _finish(cfg, attack_run: AttackRun, out_dir: Path, variables: dict, last_row: dict, mesh,
            detect_config: DetectConfig | None, **fields) -> dict:
    """Final metrics (from the last evaluation, DER against the teacher), detection, saved model."""
    metrics = with_der({k: last_row[k] for k in METRICS if k in last_row}, attack_run.teacher_metrics)
    detection = {}
    if detect_config is not None:
        for name, v in (("teacher", attack_run.variables), ("purified", variables)):
            detection[name] = detect(attack_run.module, v, attack_run.test.images, detect_config, mesh=mesh).to_dict()
    return finish_defense_run(out_dir, variables, metrics, teacher_metrics=attack_run.teacher_metrics,
                              detection=detection, **fields)


def _adversarial_grid(attack_run: AttackRun, pgd_config: PGDConfig, train: Split, out_dir: Path, mesh, n: int = 16):
    """PNG grid: training images (top rows) and the teacher's PGD adversarial examples of them."""
    pick = np.random.default_rng(0).choice(len(train), n, replace=False)
    pgd_fn = make_pgd_fn(attack_run.module, attack_run.variables, pgd_config, mesh)
    adversarial = pgd_dataset(pgd_fn, train.images[pick], train.labels[pick], jax.random.PRNGKey(0), batch_size=n)
    grid = np.concatenate([train.images[pick].astype(np.float32) / 255.0, adversarial])
    image_grid(grid, out_dir / "adversarial_examples.png", "training images / teacher's PGD examples", columns=n // 2)
