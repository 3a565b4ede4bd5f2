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
