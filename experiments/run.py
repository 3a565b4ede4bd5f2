"""Runs a whole experiment matrix end to end: datasets x models x attacks x seeds -> backdoored
teachers, each erased by every defense, evaluated, tabulated and plotted.

  python -m experiments.run --config experiments/configs/matrix_quickstart.py [--config.out=DIR]
  python -m experiments.run --config experiments/configs/matrix_cifar10_cpu.py --config.defenses="('dhbe','clp')"

An `attacks` entry is an attack's name (all-to-one, the attack's default poisoning) or NAME with
options after colons: a mode, 'badnets:all_to_all' (dirty-label attacks only), and/or the poisoning
'per_batch' (`attacks.base.POISONING`; the official PBE code's teacher recipe), e.g.
'badnets_checker:per_batch' or 'badnets:all_to_all:per_batch', so that these variants of an attack
can sit in one matrix; the tables label such a row `badnets (all-to-all, per-batch)`.
`attack_overrides` keyed by the attack's name apply to every variant, then any keyed by the
cell's attack part ('badnets-all_to_all', 'badnets_checker-per_batch').

Layout under `out`: teachers/<dataset>-<model>-<attack>-s<seed>/ (attack runs; <attack> is
NAME-MODE for a mode other than all-to-one, then -per_batch for that poisoning; a clean model
<dataset>-<model>-clean-s<seed> where TrojanNN, LC or LF need one), defenses/<teacher>-<defense>/,
cells.jsonl (one line per cell run: status, seconds, error), results.csv, results.md (with several
seeds also results_seeds.md/.csv: mean +- std over seeds per attack and defense) and plots/:
asr_cacc.png (C-Acc and ASR before and after each defense), curves.png (every cell's C-Acc and
ASR along its run) and trigger_gallery.png (test images clean, triggered by each attack, and the
change; dataset images, so keep it out of public repositories where the data's licence says
so). Every cell is an ordinary run directory, so a cell that already finished is reused (and a
half-finished one resumes) when the matrix runs again - unless it is a defense cell that
finished with another configuration than the matrix's (its defense config changed since): that
cell is reported as `stale` and left untouched (a setting its record lacks, an option added
since, counts as unchanged while it is left at its default); a cell that fails is reported in cells.jsonl and
results.md, and the matrix goes on (its dependants are skipped).
Several matrix processes may share one `out` (one per GPU, or a teachers-only run beside a
defenses run): each cell is locked while it runs (`experiments.cell_lock`, out/.locks/), a cell
another live process holds is reported `busy` and its dependants skipped; a later run picks
them up.
With `--config.defenses="()"` only the teachers are trained (or reused).
With `--config.reuse_only=True` nothing is trained: the table is assembled from the cells that
already exist (e.g. run directories made on another machine, linked into `out`).
With `--config.plots=False` the tables are written without the plots (`out/plots/` is left as
it was): drawing them reloads every teacher for the trigger gallery, a second or more per run.

Matrices that take several sessions on machines that do not keep `out` between them: with
`--config.archive=DIR` every finished cell is also copied, without its checkpoints, into
DIR/teachers/<name>/ or DIR/defenses/<name>/ (record.json, history.jsonl, a teacher's trigger
files, and cell.json: its cells.jsonl row), a few kB to commit; a later run with the same archive
counts an archived cell as finished (same staleness check as a run directory) and tabulates and
plots it from those files. A teacher is taken from the archive only while none of its defense
cells still has to run; otherwise it is trained again (its checkpoint is not archived), and the
fresh run replaces its archived copy. A teacher trained again is seldom the same model (another
machine or backend): its archived defense cells, which name their teacher by its metrics
(`teacher_metrics`), then run again on it, so that a row never mixes two teachers. A finished
defense run directory in `out` made on another teacher is reported 'stale', not overwritten.
To spare that retraining, a teacher whose defense cells are not all finished is archived with
its weights (model/, poisoned_indices.npy, its trigger files whatever their size; and the clean
model it was made with, if any: about 3 MB each for PreAct-ResNet-18 x1/4): the next machine runs
the remaining cells on the archived teacher (`--config.archive_weights=False` archives results
only). The weights leave the archive in a run with `--config.release_weights=True`, for each
teacher whose cells of that run's config have all finished: only a run over the whole row may
say the row is complete (a run of some of its defenses cannot), so this is asked for, not
automatic (`experiments/scripts/refresh_archive_docs.py` does it with the whole CIFAR-10 matrix).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import shutil
import time
import traceback
from pathlib import Path

import ml_collections
from absl import app
from tqdm import tqdm

from attacks.backdoor import POISONED_INDICES, poisoning_kind
from attacks.base import MODES, POISONING
from attacks.registry import get_attack
from attacks.triggers import TRIGGER_JSON, TRIGGER_NPZ
from backdoor_core import rundir
from backdoor_core.errors import InputError, is_seed
from backdoor_core.interrupt import stop_requested
from backdoor_core.locks import describe, try_lock, unlock
from experiments.cell_lock import lock_path
from experiments.common import attack_label, define_config_flag, output_dir, parse_flags, run_cli
from experiments.defenses import config_module
from experiments.plots import plot_before_after, plot_curves, plot_trigger_gallery
from experiments.summary import grid_markdown, time_grid_markdown, write_summary
from experiments.table import run_row

CELLS = "cells.jsonl"
RESULTS_COLUMNS = ("dataset", "model", "seed", "attack", "defense", "status", "C-Acc", "ASR", "ASR*", "RA", "DER",
                   "seconds", "run")
ARCHIVE_CELL = "cell.json"
ARCHIVE_MAX_BYTES = 1 << 20  # a trigger file larger than this (a generator's weights) is not archived
CONVENTIONS = """Metrics (percent, except DER; final models, never selected with test labels): C-Acc on the
clean test set; ASR on triggered test images whose true class is not the target; ASR* only over
those the model classifies correctly when clean (DHBE's convention); RA the share of triggered
images still given their true label; DER = (max(0, dASR) - max(0, dACC) + 1) / 2 against the
teacher. `seconds`: wall time of the cell, summed over the attempts this matrix recorded (reused
cells keep it); `+` marks a cell resumed after an attempt that left no record (a killed process):
its time is missing, so the figure is a lower bound.
"""


def load_config(path_or_module: str, variant: str | None = None):
    """get_config([variant]) of a config module (`experiments.configs.X`) or file path."""
    module_name = path_or_module.removesuffix(".py").replace("/", ".") if path_or_module.endswith(".py") else path_or_module
    module = importlib.import_module(module_name)
    return module.get_config(variant) if variant is not None else module.get_config()


def apply_overrides(cfg: ml_collections.ConfigDict, overrides, where: str = "") -> ml_collections.ConfigDict:
    """cfg with nested overrides ({'train': {'epochs': 2}}) applied; InputError on unknown keys."""
    for key, value in dict(overrides or {}).items():
        if key not in cfg:
            raise InputError(f"matrix override '{where}{key}': no such setting in the cell's config")
        if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(cfg[key], ml_collections.ConfigDict):
            apply_overrides(cfg[key], value, f"{where}{key}.")
        else:
            cfg[key] = value
    return cfg


def defense_config(matrix_cfg, defense: str, seed: int = 0) -> ml_collections.ConfigDict:
    """A matrix cell's defense config: the defense's config module at its variant
    (`defense_variants[defense]` if the matrix names one, else `variant`), then the matrix seed,
    then the matrix's overrides. An unknown variant or override is an InputError."""
    variant = (matrix_cfg.get("defense_variants") or {}).get(defense, matrix_cfg.variant)
    try:
        cfg = load_config(config_module(defense), variant)
    except ValueError as e:  # the config modules' get_config: unknown variant
        raise InputError(f"matrix config: defense {defense}: {e}") from None
    return apply_overrides(seed_defense(cfg, seed), matrix_cfg.defense_overrides.get(defense), f"{defense}.")


def seed_defense(cfg: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """cfg with every seed of the defense's own randomness set to the matrix seed: DHBE's `seed`
    (generators, latents), PBE's and AFT/FT's `seed` (start subset, batch order, augmentation,
    PGD) and AFT/FT's `clean_seed` (which 5% clean split). The detection probe's image sample
    stays fixed. Every default is 0, so seed 0 leaves a config as it was."""
    if "seed" in cfg:
        cfg.seed = seed
    if "clean_seed" in cfg:
        cfg.clean_seed = seed
    for section in ("pbe", "aft"):
        if section in cfg and "seed" in cfg[section]:
            cfg[section].seed = seed
    return cfg


def entry_options(entry) -> tuple[str, str, str]:
    """(attack name, mode, poisoning) of a matrix `attacks` entry: 'NAME' (all-to-one, default
    poisoning) or NAME followed by ':OPTION's, each a mode of `attacks.base.MODES` or a poisoning
    of `attacks.base.POISONING`, at most one of each ('badnets:all_to_all:per_batch'); InputError
    for anything else."""
    if not isinstance(entry, str) or not entry.partition(":")[0]:
        raise InputError(f"matrix config: attacks entry {entry!r}; expected an attack name, optionally with "
                         f"':MODE' (e.g. 'badnets:all_to_all') and/or ':per_batch'")
    name, *options = entry.split(":")
    modes = [o for o in options if o in MODES]
    poisonings = [o for o in options if o in POISONING]
    unknown = [o for o in options if o not in MODES and o not in POISONING]
    if unknown:
        raise InputError(f"matrix config: attacks entry {entry!r}: mode {unknown[0]!r}; expected NAME or NAME:MODE "
                         f"with MODE one of {', '.join(MODES)} (and/or a poisoning, one of {', '.join(POISONING)})")
    if len(modes) > 1 or len(poisonings) > 1:
        raise InputError(f"matrix config: attacks entry {entry!r} gives {'two modes' if len(modes) > 1 else 'two poisonings'}; "
                         "expected at most one mode and one poisoning")
    return name, (modes or ["all_to_one"])[0], (poisonings or ["default"])[0]


def cell_attack(entry) -> str:
    """The attack's part of a teacher cell's name: the attack's name for all-to-one and the default
    poisoning, else with -MODE and/or -per_batch ('badnets-all_to_all', 'badnets_checker-per_batch'),
    so that each variant of one attack has its own cells."""
    name, mode, poisoning = entry_options(entry)
    return "-".join([name] + [mode] * (mode != "all_to_one") + [poisoning] * (poisoning != "default"))


def teacher_name(dataset: str, model: str, attack: str, seed: int) -> str:
    """A teacher cell's folder name; `attack` is a matrix `attacks` entry (or 'clean')."""
    return f"{dataset}-{model}-{cell_attack(attack)}-s{seed}"


def settings_only(config: dict) -> dict:
    """A run record's `config` ({section: settings}) without the sections' variant labels (`cpu`,
    `paper`...): two runs with the same settings are the same cell whatever their variant was called."""
    return {k: {n: v for n, v in section.items() if n != "variant"} if isinstance(section, dict) else section
            for k, section in config.items()}


def teacher_settings(cfg, with_attack: bool = True) -> dict:
    """What a teacher's record.json `config` must hold for `cfg` (an experiments.attack config):
    the training recipe and, with_attack, the attack's settings (a clean teacher has none)."""
    from backdoor_core.train import TrainConfig

    from experiments.attack import attack_config
    from experiments.common import dataclass_from_config

    settings = {"train": dataclasses.asdict(dataclass_from_config(TrainConfig, cfg.train))}
    if with_attack:
        attack = attack_config(cfg)
        settings["attack"] = {"name": attack.name, "mode": attack.mode, "target": attack.target,
                              "poison_ratio": attack.poison_ratio, "ratio_of": attack.ratio_of, "seed": attack.seed,
                              "params": dict(attack.params),
                              "poisoning": poisoning_kind(get_attack(attack.name), attack)}
    return settings


def is_complete(run_dir: Path) -> bool:
    """Whether run_dir holds a finished run."""
    try:
        return rundir.read_record(run_dir).get("status") == "complete"
    except InputError:
        return False


def teacher_identity(run_dir: Path | None) -> dict | None:
    """The metrics ({'test_acc', 'asr', ...}) of the finished attack run in run_dir, or None if
    there is none: what a defense record's `teacher_metrics` names its teacher by. A teacher
    trained again (a new machine, a GPU instead of a CPU) gets other metrics; the same training
    repeated deterministically gets the same ones. (Two different teachers with equal metrics to
    the last test image would pass for one: not a concern at CIFAR-10's 10,000 test images.)"""
    if run_dir is None or not is_complete(run_dir):
        return None
    return rundir.read_record(run_dir).get("metrics") or None


def teacher_mismatch(used: dict | None, teacher: dict | None) -> str:
    """'' when a defense cell whose record names `used` as its teacher's metrics was run on
    `teacher` (or either is unknown); otherwise how the two differ (C-Acc and ASR, in %)."""
    if not used or not teacher or used == teacher:
        return ""
    pct = lambda m, k: f"{100 * m[k]:.2f}" if isinstance(m.get(k), (int, float)) else "?"
    return (f"its teacher had C-Acc {pct(used, 'test_acc')} / ASR {pct(used, 'asr')}, "
            f"this one {pct(teacher, 'test_acc')} / {pct(teacher, 'asr')}")


def archive_cell(run_dir: Path, dest: Path, cell_row: dict, weights: bool = False) -> bool:
    """Copies the finished run `run_dir` without its checkpoints into `dest`: record.json,
    history.jsonl, trigger.json/trigger.npz when present and under ARCHIVE_MAX_BYTES, and
    `cell_row` (its cells.jsonl row, minus the path) as cell.json; with `weights` (a teacher whose
    defense cells are not all finished) also what a defense needs to run on it elsewhere: the
    model/ folder, trigger files of any size and poisoned_indices.npy (`strip_weights` removes
    them again). The copy is assembled beside dest and then swapped in, so an interrupted copy
    never leaves a half-written entry. Returns whether dest changed (an identical copy is left
    alone)."""
    files = {}
    for name in (rundir.RECORD, rundir.HISTORY, TRIGGER_JSON, TRIGGER_NPZ) + ((POISONED_INDICES,) if weights else ()):
        path = run_dir / name
        if path.is_file() and (weights or name in (rundir.RECORD, rundir.HISTORY)
                               or path.stat().st_size <= ARCHIVE_MAX_BYTES):
            files[name] = path.read_bytes()
    keep = {k: v for k, v in cell_row.items() if k in ("status", "seconds") or (k == "time_incomplete" and v)}
    files[ARCHIVE_CELL] = (json.dumps(keep, sort_keys=True) + "\n").encode()
    model = run_dir / rundir.MODEL if weights and (run_dir / rundir.MODEL).is_dir() else None
    expected_names = set(files) | ({rundir.MODEL} if model else set())
    # A finished run's model/ never changes: an archived one with the same record is the same.
    if dest.is_dir() and {p.name for p in dest.iterdir()} == expected_names and all(
            (dest / name).read_bytes() == data for name, data in files.items()):
        return False
    tmp = dest.with_name(dest.name + ".tmp-archive")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    if model is not None:
        shutil.copytree(model, tmp / rundir.MODEL)
    old = dest.with_name(dest.name + ".old-archive")
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return True


def has_weights(archived: Path | None) -> bool:
    """Whether the archived teacher `archived` carries its weights (`archive_cell(weights=True)`)."""
    return archived is not None and is_complete(archived) and (archived / rundir.MODEL).is_dir()


def strip_weights(archived: Path) -> bool:
    """Removes from the archived teacher `archived` what `archive_cell(weights=True)` added (model/,
    oversized trigger files, poisoned_indices.npy), once no defense cell needs it. The model
    folder is renamed before it is deleted, so an interruption never leaves half a model. Returns
    whether anything was removed."""
    if not archived.is_dir():
        return False
    removed = False
    for path in sorted(archived.iterdir()):
        small = path.is_file() and (path.name in (rundir.RECORD, rundir.HISTORY, ARCHIVE_CELL, TRIGGER_JSON) or (
            path.name == TRIGGER_NPZ and path.stat().st_size <= ARCHIVE_MAX_BYTES))
        if small:
            continue
        if path.is_dir():
            doomed = path.with_name(path.name + ".strip-archive")
            path.rename(doomed)
            shutil.rmtree(doomed)
        else:
            path.unlink()
        removed = True
    return removed


class Matrix:
    """Runs the cells of one matrix config and records each cell's outcome in cells.jsonl."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.out = output_dir(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / CELLS
        self.archive = Path(cfg.archive).expanduser() if cfg.get("archive") else None
        # Archive teachers with unfinished defense cells with their weights (a few MB each), and
        # (release_weights) drop them once this config's cells of the teacher have all finished.
        self.keep_weights = bool(cfg.get("archive_weights", True))
        self.release = bool(cfg.get("release_weights", False))
        self.previous = {}
        self.reload_log()

    def reload_log(self) -> None:
        """Reads cells.jsonl into `previous` (each cell's last recorded row): at start, and again
        when a cell finished by another matrix process sharing `out` needs its row."""
        if self.log_path.is_file():
            for line in self.log_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line another process is appending right now
                    continue
                self.previous[row["run"]] = row

    def recorded(self, run_dir: Path) -> dict:
        """The last cells.jsonl row of run_dir ({} if none), re-reading the log if this process has none."""
        if str(run_dir) not in self.previous:
            self.reload_log()
        return self.previous.get(str(run_dir), {})

    def archived(self, run_dir: Path) -> Path | None:
        """Where the archive keeps run_dir (a cell under `out`), or None without an archive."""
        return self.archive / run_dir.relative_to(self.out) if self.archive is not None else None

    def finished(self, run_dir: Path, expected_config: dict | None = None, expected_subset: dict | None = None,
                 archived_ok: bool = True, defaults: dict | None = None,
                 teacher: dict | None = None, weights: bool = False) -> dict | None:
        """The row of a cell that needs no run: run_dir finished ('complete', reused; copied into the
        archive if there is one), else, with archived_ok, its archived copy finished ('complete',
        `archived`); either is 'stale' instead when its record's `config` differs from
        `expected_config` or disagrees with a setting of `expected_subset`
        (`rundir.config_mismatch(..., subset=True)`): neither reused nor overwritten. A setting the
        record lacks counts as equal when the expected value is its default in `defaults` (a record
        of the same shape): options added after a cell ran, left at their defaults, keep it. With
        `teacher` (the metrics of the teacher the cell has to purify, `teacher_identity`), a defense
        cell finished on another teacher (its record's `teacher_metrics` differ) is 'stale' in
        run_dir, and its archived copy does not count: the cell runs again and replaces it.
        `weights`: a finished run_dir is archived with its weights (`archive_cell`). None if the
        cell has to run."""
        key = str(run_dir)
        archived = self.archived(run_dir)
        for source in (run_dir, archived if archived_ok else None):
            if source is None or not is_complete(source):
                continue
            recorded = rundir.read_record(source).get("config", {})
            diff = None
            if expected_config is not None:
                diff = rundir.config_mismatch(settings_only(recorded), settings_only(expected_config),
                                              defaults=settings_only(defaults) if defaults else None)
            if diff is None and expected_subset is not None:
                diff = rundir.config_mismatch(recorded, expected_subset, subset=True, defaults=defaults)
            if diff:
                return {"run": str(source), "status": "stale",
                        "error": f"finished with another configuration ({diff}); move it away to rerun"}
            other_teacher = teacher_mismatch(rundir.read_record(source).get("teacher_metrics"), teacher)
            if other_teacher and source == run_dir:
                return {"run": str(source), "status": "stale",
                        "error": f"finished on another teacher ({other_teacher}); move it away to rerun"}
            if other_teacher:  # archived on a teacher since trained again: run it on this one
                continue
            if source == run_dir:
                old = self.recorded(run_dir)
                row = {"run": key, "status": "complete", "seconds": old.get("seconds"), "reused": True,
                       "time_incomplete": bool(old.get("time_incomplete"))}
                if archived is not None:
                    archive_cell(run_dir, archived, row, weights=weights)
                return row
            cell = json.loads((source / ARCHIVE_CELL).read_text()) if (source / ARCHIVE_CELL).is_file() else {}
            return {"run": str(source), "status": "complete", "seconds": cell.get("seconds"), "reused": True,
                    "archived": True, "time_incomplete": bool(cell.get("time_incomplete"))}
        return None

    def cell(self, run_dir: Path, fn, expected_config: dict | None = None, expected_subset: dict | None = None,
             archived_ok: bool = True, defaults: dict | None = None, teacher: dict | None = None,
             weights: bool = False) -> dict:
        """Runs fn() unless the cell is finished (`finished`); logs and returns {'run', 'status',
        'seconds', 'error'}; a cell that finishes here is copied into the archive if there is one."""
        key = str(run_dir)
        done = self.finished(run_dir, expected_config, expected_subset, archived_ok, defaults, teacher, weights)
        if done is not None:
            return done
        if self.cfg.get("reuse_only"):
            return {"run": key, "status": "not run", "error": "reuse_only: no finished run here"}
        if stop_requested():  # Ctrl-C / SIGTERM: the cell in flight stopped at a checkpoint; start no other
            return {"run": key, "status": "not run", "error": f"{stop_requested()}: the matrix was stopped"}
        lock = lock_path(self.out, run_dir)
        holder = try_lock(lock)
        if holder is not None:  # another matrix process on this `out` is running the cell
            return {"run": key, "status": "busy",
                    "error": f"another process runs it ({describe(holder)}, lock {lock})"}
        try:
            # The cell may have finished in another process between the check above and the lock.
            done = self.finished(run_dir, expected_config, expected_subset, archived_ok, defaults, teacher, weights)
            return done if done is not None else self.run_cell(run_dir, fn, weights)
        finally:
            unlock(lock)

    def run_cell(self, run_dir: Path, fn, weights: bool = False) -> dict:
        """Runs fn() for the cell run_dir (its lock held), logs the outcome to cells.jsonl and returns
        its row; a cell that finishes is copied into the archive if there is one (with `weights`,
        its weights too)."""
        key = str(run_dir)
        earlier, incomplete = self.earlier_attempts(run_dir)
        start = time.perf_counter()
        try:
            fn()
            status = "complete" if is_complete(run_dir) else "stopped"
            row = {"run": key, "status": status, "seconds": round(earlier + time.perf_counter() - start, 1)}
        except Exception as e:  # a failing cell is reported; the matrix goes on
            row = {"run": key, "status": "failed", "seconds": round(earlier + time.perf_counter() - start, 1),
                   "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            # Bad input (a missing dataset, a refused setting) is its one line; anything else a bug,
            # shown with its traceback.
            tqdm.write(f"cell failed: {key}: {e}" if isinstance(e, InputError) else
                       f"cell failed: {key}\n{traceback.format_exc(limit=8)}")
        if incomplete:
            row["time_incomplete"] = True
        with self.log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.previous[key] = row
        if row["status"] == "complete" and self.archive is not None:
            archive_cell(run_dir, self.archived(run_dir), row, weights=weights)
        return row

    def earlier_attempts(self, run_dir: Path) -> tuple[float, bool]:
        """(seconds the recorded earlier attempts of this cell took, whether some attempt's time is
        missing). A cell with saved state resumes: its last recorded attempt, if it stopped or
        failed, carries the time so far; if there is none, or it is not one of those, the attempt
        that saved the state ended without a record (its process was killed)."""
        if not rundir.has_saved_state(run_dir):
            return 0.0, False
        prior = self.recorded(run_dir)
        if prior.get("status") in ("stopped", "failed"):
            return float(prior.get("seconds") or 0.0), bool(prior.get("time_incomplete"))
        return 0.0, True

    def teacher_config(self, dataset: str, model: str, width: float, attack: str, seed: int, clean_run: str | None):
        """The experiments.attack config of a teacher cell; `attack` is a matrix `attacks` entry
        (`entry_options`). The matrix's `attack_overrides` for the attack's name apply to every
        variant, then those for the cell's name ('badnets-all_to_all'), if any."""
        name, mode, poisoning = entry_options(attack)
        spec = self.cfg.datasets[dataset]
        cfg = load_config(spec.attack_config)
        cfg.dataset, cfg.model, cfg.width, cfg.attack, cfg.mode, cfg.seed = spec.source, model, width, name, mode, seed
        cfg.poisoning = poisoning
        cfg.train.seed = seed
        cfg.clean_run = clean_run
        apply_overrides(cfg, spec.get("overrides"))
        apply_overrides(cfg, self.cfg.attack_overrides.get(name))
        if cell_attack(attack) != name:
            apply_overrides(cfg, self.cfg.attack_overrides.get(cell_attack(attack)))
        if cfg.mode != mode:  # the cell's name and table label say `mode`
            raise InputError(f"matrix config: an override sets the mode of attack {attack!r} to {cfg.mode!r}; "
                             f"give the mode in the attacks entry instead ('{name}:{cfg.mode}')")
        if cfg.poisoning != poisoning:
            raise InputError(f"matrix config: an override sets the poisoning of attack {attack!r} to "
                             f"{cfg.poisoning!r}; give it in the attacks entry instead ('{attack}:{cfg.poisoning}')")
        return cfg

    def teacher_defaults(self, dataset: str, attack: str) -> dict | None:
        """What a teacher's record `config` holds for `attack` (a matrix `attacks` entry) under the
        dataset's attack config file left at its defaults (no matrix overrides): the `defaults` of
        the stale check."""
        cfg = load_config(self.cfg.datasets[dataset].attack_config)
        cfg.attack, cfg.mode, cfg.poisoning = entry_options(attack)
        try:
            return teacher_settings(cfg)
        except InputError:
            return None

    def defense_config(self, defense: str, seed: int = 0):
        """See `defense_config`."""
        return defense_config(self.cfg, defense, seed)

    def defense_cells(self, teacher_dir: Path, seed: int) -> list[tuple]:
        """(defense, its cell directory, its config or the InputError of a bad override, the recorded
        settings a finished cell must have (None for a bad override), its recorded defaults) for each
        of the matrix's defenses on the teacher in teacher_dir."""
        from experiments.erase import recorded_config, recorded_defaults

        cells = []
        for defense in self.cfg.defenses:
            try:
                dcfg = self.defense_config(defense, seed)
                expected = {"defense": recorded_config(dcfg)}
            except InputError as e:
                dcfg, expected = e, None
            cells.append((defense, self.out / "defenses" / f"{teacher_dir.name}-{defense}", dcfg, expected,
                          recorded_defaults(defense)))
        return cells

    def clean_cell(self, dataset: str, model: str, width: float, seed: int, defaults: dict | None,
                   teacher_ready: bool, defenses_done: bool) -> str:
        """Trains (or reuses) the clean model an attack optimised on a clean model (LC, TrojanNN, LF)
        needs and returns its run directory. `defaults`: the teacher's (`teacher_defaults`).
        `teacher_ready`: the teacher is finished, so the archived clean model serves without its
        weights unless `defenses_done` is False (PBE's rebuilt LC poisoning reads it,
        `pbe.clean_run_dir`)."""
        from experiments.train import train_clean

        clean_dir = self.out / "teachers" / teacher_name(dataset, model, "clean", seed)
        # The teachers' config (same recipe and overrides); train_clean reads only the dataset, model,
        # width, train, num_devices, stop_after_steps and out fields.
        clean_cfg = self.teacher_config(dataset, model, width, "badnets", seed, None)
        clean_cfg.out = str(clean_dir)
        try:
            clean_expected = teacher_settings(clean_cfg, with_attack=False)
        except InputError:  # a bad training override: train_clean reports it as the cell's failure
            clean_expected = None
        clean_archived_ok = teacher_ready or has_weights(self.archived(clean_dir))
        clean = self.cell(clean_dir, lambda: train_clean(clean_cfg), expected_subset=clean_expected,
                          archived_ok=clean_archived_ok, defaults=defaults,
                          weights=self.keep_weights and not (teacher_ready and defenses_done))
        return clean["run"]

    def teacher_cell(self, dataset: str, model: str, width: float, attack: str, seed: int,
                     defenses_done: bool) -> tuple[dict, str | None]:
        """Trains (or reuses) the backdoored teacher of one matrix row, after the clean model it
        needs, if any (`clean_cell`): (its cell row, the clean model's run directory or None). An
        archived teacher serves while no defense cell has to run on it (`defenses_done`), or with its
        weights; one with defense cells still to run is archived with its weights."""
        from experiments.attack import run_attack

        teacher_dir = self.out / "teachers" / teacher_name(dataset, model, attack, seed)
        archived_ok = (bool(self.cfg.get("reuse_only")) or defenses_done or has_weights(self.archived(teacher_dir)))
        defaults = self.teacher_defaults(dataset, attack)
        try:
            tcfg = self.teacher_config(dataset, model, width, attack, seed, None)
            tcfg.out = str(teacher_dir)
            expected = teacher_settings(tcfg)
        except InputError as e:  # a bad override: the cell fails before anything runs
            return {"run": str(teacher_dir), "status": "failed", "error": str(e)}, None
        clean_run = None
        if get_attack(entry_options(attack)[0]).needs_clean_model:
            # The clean model matters only to a teacher that has to be trained (and to PBE's rebuilt
            # LC poisoning): the archived one serves the others.
            teacher_ready = self.finished(teacher_dir, expected_subset=expected, archived_ok=archived_ok,
                                          defaults=defaults) is not None
            clean_run = tcfg.clean_run = self.clean_cell(dataset, model, width, seed, defaults, teacher_ready,
                                                          defenses_done)
        try:
            return self.cell(teacher_dir, lambda: run_attack(tcfg), expected_subset=expected, archived_ok=archived_ok,
                             defaults=defaults, weights=self.keep_weights and not defenses_done), clean_run
        except InputError as e:
            return {"run": str(teacher_dir), "status": "failed", "error": str(e)}, clean_run

    def defense_cell(self, defense: str, defense_dir: Path, dcfg, expected: dict | None, defaults: dict | None,
                     teacher: dict) -> dict:
        """Runs (or reuses) one defense cell (an entry of `defense_cells`) on `teacher` (its cell
        row): 'failed' for a bad override, 'skipped' while the teacher is not finished."""
        from experiments.erase import erase_run

        if isinstance(dcfg, InputError):
            return {"run": str(defense_dir), "status": "failed", "error": str(dcfg)}
        if teacher["status"] != "complete":
            return {"run": str(defense_dir), "status": "skipped", "error": "teacher not finished"}
        try:
            return self.cell(defense_dir, lambda: erase_run(defense, teacher["run"], dcfg, str(defense_dir)),
                             expected_config=expected, defaults=defaults,
                             teacher=teacher_identity(Path(teacher["run"])))
        except InputError as e:
            return {"run": str(defense_dir), "status": "failed", "error": str(e)}

    def run(self) -> list[dict]:
        """Runs (or reuses) every cell: per dataset, model, attack and seed the teacher (after its
        clean model, if it needs one), then each defense on it; returns the result rows."""
        plan = [(d, m.name, float(m.width), a, int(s)) for d in self.cfg.datasets for m in self.cfg.models
                for a in self.cfg.attacks for s in self.cfg.seeds]
        rows = []
        bar = tqdm(total=len(plan) * (1 + len(self.cfg.defenses)), desc="matrix cells", position=0)
        for dataset, model, width, attack, seed in plan:
            teacher_dir = self.out / "teachers" / teacher_name(dataset, model, attack, seed)
            name, mode, poisoning = entry_options(attack)
            ids = {"dataset": dataset, "model": f"{model} x{width:g}", "seed": seed,
                   "attack": attack_label({"name": name, "mode": mode, "poisoning": poisoning})}
            cells = self.defense_cells(teacher_dir, seed)
            archived_teacher = teacher_identity(self.archived(teacher_dir))
            defenses_done = all(
                expected is None or self.finished(ddir, expected_config=expected, defaults=defaults,
                                                  teacher=archived_teacher) is not None
                for _, ddir, _, expected, defaults in cells)
            teacher, clean_run = self.teacher_cell(dataset, model, width, attack, seed, defenses_done)
            rows.append(self.result_row(ids, "none", teacher))
            bar.update(1)
            outcomes = []
            for cell in cells:
                outcome = self.defense_cell(*cell, teacher)
                rows.append(self.result_row(ids, cell[0], outcome))
                outcomes.append(outcome["status"])
                bar.update(1)
            if self.release and teacher["status"] == "complete" and all(s == "complete" for s in outcomes):
                self.release_weights(teacher_dir, clean_run)
        bar.close()
        return rows

    def release_weights(self, teacher_dir: Path, clean_run: str | None) -> None:
        """Once every defense cell of the teacher in teacher_dir has finished, its archived copy
        drops its weights, and so does the archived clean model it was made with (`clean_run`)
        when no other archived teacher still keeping weights was made with it."""
        if self.archive is None:
            return
        strip_weights(self.archived(teacher_dir))
        if clean_run is None:
            return
        clean_name = Path(clean_run).name
        others = [d for d in (self.archive / "teachers").iterdir() if d != self.archived(teacher_dir)
                  and has_weights(d) and Path(str(rundir.read_record(d).get("clean_run") or "")).name == clean_name]
        if not others:
            strip_weights(self.archive / "teachers" / clean_name)

    @staticmethod
    def result_row(ids: dict, defense: str, outcome: dict) -> dict:
        """One results row: the cell's identity, status and (if finished) its metrics."""
        row = {**ids, "defense": defense, "status": outcome["status"], "seconds": outcome.get("seconds"),
               "run": outcome["run"], "error": outcome.get("error", ""),
               "time_incomplete": bool(outcome.get("time_incomplete"))}
        if outcome["status"] == "complete":
            _, table_row = run_row(Path(outcome["run"]))
            row.update({k: table_row.get(k, "-") for k in ("C-Acc", "ASR", "ASR*", "RA", "DER")})
        return row


def write_results(out: Path, rows: list[dict], plots: bool = True) -> None:
    """results.csv, results.md (with the metric conventions, and at its end the C-Acc / ASR grid of
    `experiments.summary.grid_markdown` and the wall-time grid of `time_grid_markdown`), with several seeds results_seeds.md/.csv
    (mean +- std per attack and defense, `experiments.summary`), and, if `plots`, the plots: asr_cacc.png
    (before/after bars), curves.png and trigger_gallery.png (`experiments.plots`)."""
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*RESULTS_COLUMNS, "error", "time_incomplete"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Results", "", CONVENTIONS, "| " + " | ".join(RESULTS_COLUMNS[:-1]) + " |",
             "|" + "---|" * (len(RESULTS_COLUMNS) - 1)]
    for row in rows:
        cells = [str(row.get(c) if row.get(c) is not None else "-") for c in RESULTS_COLUMNS[:-1]]
        if row.get("time_incomplete") and row.get("seconds") is not None:
            cells[RESULTS_COLUMNS.index("seconds")] += "+"
        if row["status"] not in ("complete",):
            cells[RESULTS_COLUMNS.index("status")] = f"{row['status']}: {row.get('error', '')}"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", grid_markdown(rows), "", time_grid_markdown(rows)]
    (out / "results.md").write_text("\n".join(lines))
    write_summary(out, rows)
    if not plots:
        return
    plot_before_after(out / "plots" / "asr_cacc.png", rows)
    plot_curves(out / "plots" / "curves.png", rows)
    plot_trigger_gallery(out / "plots" / "trigger_gallery.png", rows, warn=tqdm.write)


def model_entries(models) -> tuple:
    """The matrix's `models` as ConfigDicts {name, width (float, default 1.0)}, checked: an entry
    may be a registry name ("preact_resnet18") or a mapping (a ConfigDict from a config file, or a
    dict from the command line: --config.models="({'name': 'small_cnn', 'width': 0.5},)")."""
    from backdoor_core.models import MODELS

    entries = []
    for entry in models:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not hasattr(entry, "keys") or "name" not in entry.keys():
            raise InputError(f"matrix config: models entry {entry!r}; expected a model name or a mapping with "
                             "'name' (and 'width'), e.g. {'name': 'preact_resnet18', 'width': 0.25}")
        unknown = sorted(set(entry.keys()) - {"name", "width"})
        if unknown:
            raise InputError(f"matrix config: models entry {dict(entry)!r} has unknown key(s) {unknown}; "
                             "expected 'name' and 'width'")
        if entry["name"] not in MODELS:
            raise InputError(f"matrix config: unknown model {entry['name']!r}; expected one of {', '.join(MODELS)}")
        try:
            width = float(entry.get("width", 1.0))
        except (TypeError, ValueError):
            width = None
        if width is None or not width > 0:
            raise InputError(f"matrix config: model {entry['name']} width {entry.get('width')!r}; "
                             "expected a positive multiplier")
        entries.append(ml_collections.ConfigDict({"name": str(entry["name"]), "width": width}))
    return tuple(entries)


def run_matrix(cfg) -> list[dict]:
    """Validates the matrix config, runs it, writes and prints the results."""
    # `defenses` may be empty: the matrix then trains (or reuses) its teachers only, e.g. on a
    # lent GPU, for a later run of the defenses (experiments/scripts/gpu_teachers.sh).
    for name in ("datasets", "models", "attacks", "seeds"):
        if not cfg.get(name):
            raise InputError(f"matrix config: {name} is empty; expected at least one entry")
    for seed in cfg.seeds:
        if not is_seed(seed):
            raise InputError(f"matrix config: seed {seed!r} in seeds; expected non-negative integers")
    from experiments.defenses import DEFENSES

    for defense in cfg.defenses:
        if defense not in DEFENSES:
            raise InputError(f"matrix config: unknown defense {defense!r}; expected one of {', '.join(DEFENSES)}")
    for entry in cfg.attacks:
        name, mode, poisoning = entry_options(entry)
        if get_attack(name).clean_label and mode != "all_to_one":
            raise InputError(f"matrix config: attacks entry {entry!r}: {name} is clean-label; it supports only "
                             "mode 'all_to_one'")
        if poisoning == "per_batch" and get_attack(name).per_batch_refusal():
            raise InputError(f"matrix config: attacks entry {entry!r}: {get_attack(name).per_batch_refusal()}")
    for defense in cfg.defenses:
        defense_config(cfg, defense)  # unknown variants and overrides fail here, before any output
    cfg.models = model_entries(cfg.models)
    if cfg.get("archive") and Path(cfg.archive).expanduser().exists() and not Path(cfg.archive).expanduser().is_dir():
        raise InputError(f"matrix config: archive {cfg.archive} is a file; expected a folder (made if missing)")
    matrix = Matrix(cfg)
    rows = matrix.run()
    write_results(matrix.out, rows, plots=bool(cfg.get("plots", True)))
    print((matrix.out / "results.md").read_text())
    if len(cfg.seeds) > 1:  # write_results wrote the summary over seeds
        print((matrix.out / "results_seeds.md").read_text())
    return rows


def main():
    config = define_config_flag("experiments/configs/matrix_quickstart.py", "matrix config")
    app.run(flags_parser=parse_flags, main=lambda argv: run_cli(lambda: run_matrix(config.value)))


if __name__ == "__main__":
    main()
