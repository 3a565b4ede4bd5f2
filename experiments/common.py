"""Helpers shared by the command-line entry points: config conversion and error reporting."""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path
from typing import Callable

from backdoor_core.errors import InputError


def dataclass_from_config(cls, cfg) -> object:
    """Builds frozen dataclass `cls` from a ConfigDict, naming any unknown key."""
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown {cls.__name__} setting(s) {unknown}; expected some of {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


# Short flags of `experiments.attack` and `experiments.train`: `--attack NAME` is
# `--config.attack=NAME`, and so on (the and BackdoorBench's spelling of the command).
SHORTHANDS = {"attack": "the attack to train with", "dataset": "dataset source (folder, .tar.gz or .npz)",
              "model": "model registry name", "width": "width multiplier", "out": "output run directory",
              "clean_run": "run directory of a clean model (TrojanNN, LC, LF)"}


def define_shorthands(names) -> dict:
    """Defines the absl flags `--NAME` for `names` (keys of SHORTHANDS); {name: flag holder}."""
    from absl import flags

    return {name: flags.DEFINE_string(name, None, f"{SHORTHANDS[name]}; the same as --config.{name}")
            for name in names}


def apply_shorthands(cfg, values: dict, argv) -> object:
    """cfg with each given shorthand (`values`: name -> string or None) written to cfg.<name>,
    converted to the type of the config's value. A shorthand also given as `--config.<name>` in
    `argv` with another value is an InputError: which one was meant is not for us to guess."""
    for name, value in values.items():
        if value is None:
            continue
        current = cfg[name]
        try:
            value = float(value) if isinstance(current, float) else value
        except ValueError:
            raise InputError(f"--{name}={value!r}; expected a number") from None
        given = any(a == f"--config.{name}" or a.startswith(f"--config.{name}=") for a in argv)
        if given and current != value:
            raise InputError(f"--{name}={value} and --config.{name}={current} disagree; give one of them")
        cfg[name] = value
    return cfg


def output_dir(path: str) -> Path:
    """An output path with ~ expanded."""
    return Path(path).expanduser()


def run_cli(fn: Callable[[], object]) -> None:
    """Runs `fn` for a command line; bad input exits with one line 'error: ...' and status 2.

    A Ctrl-C or SIGTERM while `fn` runs makes the long loops checkpoint and return unfinished
    (`backdoor_core.interrupt`); the command then says so and exits with 128 + the signal's
    number (130, 143), as a shell does for a process the signal killed. Otherwise returns None,
    so that absl's app.run exits with status 0 (it passes a returned object to sys.exit, which
    prints it and exits with 1).
    """
    from absl import logging

    from backdoor_core.host_memory import keep_freed_memory
    from backdoor_core.interrupt import stop_on_signals

    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
    try:
        keep_freed_memory()  # only with BACKDOOR_MALLOC=keep; before XLA's threads first allocate
        with stop_on_signals() as stop_requested:
            fn()
            stopped = stop_requested()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # the second Ctrl-C
        print("interrupted: the work since the run's last checkpoint is lost; run the same command again to resume "
              "from it", file=sys.stderr)
        sys.exit(130)
    if stopped:
        print(f"stopped by {stopped} after saving a checkpoint: run the same command again to resume "
              "(a run that had already finished stays finished)", file=sys.stderr)
        sys.exit(128 + signal.Signals[stopped].value)
