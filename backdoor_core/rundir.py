"""Run directories: self-describing folders of checkpoints, records and histories.

A run directory holds
  record.json     what ran: kind, model spec, dataset, config, versions, status, timings, metrics
  history.jsonl   one JSON object per evaluation, appended as the run goes
  checkpoints/    resumable training states (Orbax)
  model/          the final model variables (Orbax), written when the run completes
Anything a later stage needs is read from here. While a command writes one, the lock file
`.<name>.lock` beside it names the process (`run_lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
from pathlib import Path

from backdoor_core.errors import InputError
from backdoor_core.locks import describe, try_lock, unlock

RECORD = "record.json"
HISTORY = "history.jsonl"
MODEL = "model"
CHECKPOINTS = "checkpoints"


def write_json(path: Path, obj) -> None:
    """Writes `obj` as JSON to `path` atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_record(run_dir: Path) -> dict:
    """The record.json of a run directory; InputError if it is missing or unreadable."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        raise InputError(f"{run_dir} is not a run directory: it has no {RECORD}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is corrupt ({e}); expected a JSON record") from None


def versions() -> dict:
    """Versions of Python and the main libraries, for records."""
    import flax
    import jax
    import optax
    import orbax.checkpoint as ocp

    return {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "orbax": ocp.__version__, "backend": jax.default_backend(),
            "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind, **host_cpu()}


def host_cpu() -> dict:
    """{'cpu': model name, 'avx512': bool} of this host, as far as Linux says (else platform's
    guess): whether a CPU training could repeat another bit for bit depends on the instruction set."""
    info = {"cpu": platform.processor() or platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    info["avx512"] = "avx512f" in text
    return info


def append_history(run_dir: Path, row: dict) -> None:
    """Appends one JSON line to the run's history."""
    with open(Path(run_dir) / HISTORY, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def read_history(run_dir: Path) -> list[dict]:
    """All rows of the run's history (empty list if none)."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_history(run_dir: Path, max_step: int) -> None:
    """Drops history rows written after step `max_step` (they are redone on resume)."""
    rows = [r for r in read_history(run_dir) if r.get("step", 0) <= max_step]
    path = Path(run_dir) / HISTORY
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    os.replace(tmp, path)


def config_mismatch(old: dict, new: dict, prefix: str = "", *, subset: bool = False,
                    defaults: dict | None = None) -> str | None:
    """Describes the first setting that differs between two JSON-like records, or None.

    Nested dicts are compared key by key, so the message names the innermost differing key as a
    dotted path ("defense.dhbe.balance_weight: was 0.0, now 1.0"; a missing key shows as None).
    subset: compare only `new`'s keys and skip its None values (`old` may hold more, e.g. what a
    run derived from its data).
    defaults: a record of the same shape holding each setting's default. A key absent from `old`
    whose value in `new` equals its default is no difference: the project's convention is that a
    new option's default is the old behaviour, so a record written before the option existed
    describes the same run.
    """
    old, new = json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str))
    defaults = json.loads(json.dumps(defaults, default=str)) if isinstance(defaults, dict) else {}
    for key in sorted(new) if subset else sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b or (subset and b is None):
            continue
        if key not in old and key in defaults and b == defaults[key]:
            continue  # an option added after `old` was recorded, left at its default
        if isinstance(a, dict) and isinstance(b, dict):
            sub_defaults = defaults.get(key) if isinstance(defaults.get(key), dict) else None
            found = config_mismatch(a, b, f"{prefix}{key}.", subset=subset, defaults=sub_defaults)
            if found:
                return found
            continue  # only in subset mode: the differing keys are ones `new` does not set
        return f"{prefix}{key}: was {a!r}, now {b!r}"
    return None


def has_saved_state(run_dir: Path) -> bool:
    """Whether the run saved a checkpoint (in `checkpoints/` or another `*checkpoints/` folder, e.g.
    IAD's mask pre-training) or a model (then it is worth keeping)."""
    if not Path(run_dir).is_dir():
        return False
    folders = [p for p in Path(run_dir).iterdir() if p.is_dir() and p.name.endswith(CHECKPOINTS)]
    steps = any(q.name.isdigit() for p in folders for q in p.iterdir())
    return steps or (Path(run_dir) / MODEL).exists()


def run_lock(run_dir: Path) -> Path:
    """The lock file a writer of `run_dir` holds: `.<name>.lock` in its parent (beside the directory,
    so that deleting the directory under a live writer does not free it)."""
    run_dir = Path(run_dir).absolute()
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def open_run(run_dir: Path, record: dict, defaults: dict | None = None):
    """Creates or resumes a run directory; yields (path, resuming).

    A new directory gets `record` (status "running"). An existing one is resumed only if it is
    unfinished and its record's `config` equals `record['config']` (a setting the old record
    lacks counts as equal when it has its value in `defaults`, a record-shaped `config` of
    defaults: see `config_mismatch`); a finished run is never
    overwritten. If the body fails before the run saved anything (no checkpoint, no model), a
    directory created here is removed, so a failed start leaves nothing behind. The directory is
    locked while open (`run_lock`): a run another live process is writing is refused (InputError
    naming that process), not written by two at once; a dead holder's lock is taken over.
    """
    run_dir = Path(run_dir).absolute()
    lock = run_lock(run_dir)
    holder = try_lock(lock)
    if holder is not None:
        raise InputError(f"{run_dir} is being written by another process ({describe(holder)}; lock {lock}); "
                         "wait for it to end or choose another output directory (a lock from another machine whose "
                         "process is known to be gone: delete the lock file)")
    try:
        with _open_unlocked(run_dir, record, defaults) as opened:
            yield opened
    finally:
        unlock(lock)


@contextlib.contextmanager
def _open_unlocked(run_dir: Path, record: dict, defaults: dict | None):
    """`open_run`'s body, the lock held."""
    created = not run_dir.exists()
    if not created:
        if not (run_dir / RECORD).is_file():
            if any(run_dir.iterdir()):
                raise InputError(f"{run_dir} exists and is not a run directory; choose a new --out")
            created = True
        else:
            old = read_record(run_dir)
            if old.get("status") == "complete":
                raise InputError(f"{run_dir} holds a finished run; nothing is overwritten: choose a new output directory")
            diff = config_mismatch(old.get("config", {}), record.get("config", {}), defaults=defaults)
            if diff:
                raise InputError(f"{run_dir} holds an unfinished run with another configuration ({diff}); "
                                 "resume it with the same settings or choose a new output directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    if created:
        write_json(run_dir / RECORD, {**record, "status": "running", "versions": versions()})
    try:
        yield run_dir, not created
    except BaseException:
        if created and not has_saved_state(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def update_record(run_dir: Path, **fields) -> dict:
    """Merges `fields` into record.json (atomically) and returns the new record."""
    record = {**read_record(run_dir), **fields}
    write_json(Path(run_dir) / RECORD, record)
    return record


def load_model(run_dir: Path):
    """(spec, module, variables) of the model saved in a finished run directory.

    Reads the architecture, number of classes and normalisation from record.json and the
    variables from model/; raises InputError/CheckpointError with the path if either is unusable.
    """
    import jax

    from backdoor_core.checkpoint import load_variables
    from backdoor_core.models import ModelSpec, build_model, init_variables

    record = read_record(run_dir)
    if "model" not in record:
        raise InputError(f"{run_dir}/{RECORD} names no model; expected a training, attack or defense run")
    spec = ModelSpec.from_dict(record["model"])
    if not (Path(run_dir) / MODEL).is_dir():
        raise InputError(f"{run_dir} has no saved model (status {record.get('status')!r}); finish or resume the run first")
    like = jax.eval_shape(lambda: init_variables(spec, jax.random.PRNGKey(0)))
    variables = load_variables(Path(run_dir) / MODEL, like, what=f"model {spec.name} (width {spec.width}, {spec.num_classes} classes)")
    return spec, build_model(spec), variables
