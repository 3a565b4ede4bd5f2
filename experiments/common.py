"""Helpers shared by the command-line entry points: config conversion and error reporting."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from backdoor_core.data import CHECKOUT  # the shipped config files are found from any working directory
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


def flag_values(argv, name: str) -> list[str]:
    """The values given to flag `--name` in argv (as `--name=V` or `--name V`), in order."""
    return [a.split("=", 1)[1] if a.startswith(f"--{name}=") else argv[i + 2]
            for i, a in enumerate(argv[1:]) if a.startswith(f"--{name}=") or (a == f"--{name}" and i + 2 < len(argv))]


def _config_keys(argv, default: str | None, path: list[str]) -> list[str] | None:
    """The keys at `path` of the config file that `argv` (`--config=FILE[:VARIANT]`) or `default`
    names, or None where it cannot be read (best effort, for an error message only)."""
    import importlib.util

    given = flag_values(argv, "config")
    spec = given[-1] if given else default
    try:
        file, _, variant = spec.partition(":")
        module_spec = importlib.util.spec_from_file_location("_config_for_message", file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        node = module.get_config(variant) if variant else module.get_config()
        for key in path:
            node = node[key]
        return sorted(node.keys())
    except Exception:  # noqa: BLE001 - only the message loses its list
        return None


def unknown_setting_message(error: BaseException, argv, default: str | None = None) -> str | None:
    """One line for a `--config.a.b=v` override that names no setting of the config, or None when
    no `--config.` flag on the command line holds the missing key (then `error` is something else).

    `error` is the KeyError / AttributeError ml_collections raises while it applies the overrides
    (its text: the quoted missing key, maybe a "Did you mean" line); `argv` the command line;
    `default` the config file used without `--config=`. Names the flag that holds the missing key
    and the settings that exist at its level where it can.
    """
    while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(...))
        error = error.args[0]
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    key = (lines[0] if lines else text).strip("\"'")
    hint = " ".join(lines[1:])
    flag = next((a.split("=", 1)[0] for a in argv[1:]
                 if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")[1:]), None)
    if flag is None:
        return None
    message = f"{flag}: the config has no setting {key!r}" + (f" ({hint})" if hint else "")
    parts = flag.split(".")[1:]
    keys = _config_keys(argv, default, parts[:parts.index(key)])
    if keys:
        message += f"; expected one of {', '.join(keys)}"
    return message


def resolve_config_spec(spec: str) -> str:
    """A `--config` value `FILE[:VARIANT]` with FILE as given where it exists, else, for a relative
    FILE that exists in the checkout (the shipped `experiments/configs/...` the docs name), that
    file's absolute path. Raises InputError naming the file where neither exists."""
    file, colon, variant = spec.partition(":")
    if Path(file).expanduser().is_file():
        return spec
    shipped = CHECKOUT / file
    if not Path(file).is_absolute() and shipped.is_file():
        return f"{shipped}{colon}{variant}"
    where = "" if Path(file).is_absolute() else f" in {Path.cwd()} or in the checkout {CHECKOUT}"
    raise InputError(f"--config {spec}: no config file {file}{where}; expected a Python file with get_config(), "
                     "e.g. experiments/configs/attack_base.py")


def resolve_config_argv(argv: list[str]) -> list[str]:
    """argv with the value of each `--config FILE[:VARIANT]` / `--config=...` resolved by
    `resolve_config_spec` (the `--config.NAME=...` overrides untouched)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config_spec(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out) and i > 0:
            out[i + 1] = resolve_config_spec(out[i + 1])
    return out


def define_config_flag(default: str | None, help_text: str):
    """`config_flags.DEFINE_config_file("config", default, help_text)`, whose overrides on the
    command line name settings that exist. With a default file ml_collections applies the
    overrides already here, else while absl parses the flags (`parse_flags`): either way a
    misspelt setting exits with one line 'error: ...' and status 2, not a traceback. The default
    and a `--config` file on the command line (sys.argv, rewritten in place) are found from any
    working directory (`resolve_config_spec`); one that exists nowhere is one line, status 2."""
    from absl import flags
    from ml_collections import config_flags

    try:
        sys.argv[:] = resolve_config_argv(sys.argv)
        default = resolve_config_spec(default) if default is not None else None
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        return config_flags.DEFINE_config_file("config", default, help_text)
    except (KeyError, AttributeError) as e:
        _exit_unknown_setting(e, sys.argv, default)
    except flags.Error as e:  # e.g. a --flagfile that cannot be opened, read while the default applies
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv):
    """absl's flag parsing, for `app.run(..., flags_parser=parse_flags)`, where every bad flag is one
    line 'error: ...' and status 2: an override that names no setting (see `define_config_flag`), a
    value of the wrong type, a `--config` file that cannot be loaded (`config_file_error`), an
    unknown flag (absl's own message, without its pointer to --helpfull)."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {config_file_error(str(e)) or str(e).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    except (KeyError, AttributeError) as e:
        _exit_unknown_setting(e, argv, None)


def config_file_error(text: str) -> str | None:
    """One line for absl's IllegalFlagValueError `text` when ml_collections failed to load a
    `--config FILE[:VARIANT]` (an unknown variant): the flag's value and the error the file raised,
    its traceback dropped; None for another error."""
    if "Error whilst parsing config file" not in text:
        return None
    head = text.split(": Error whilst parsing config file", 1)[0]
    value = head.split("=", 1)[1] if "=" in head else head
    last = [line.strip() for line in text.splitlines() if line.strip()][-1]
    return f"--config {value.strip()}: {last}"


def missing_get_config_message(error: BaseException, argv) -> str | None:
    """One line for the AttributeError ml_collections lets through when the `--config` file in
    argv has no get_config(); None for another error."""
    if "has no attribute 'get_config'" not in str(error):
        return None
    given = flag_values(argv, "config")
    spec = given[-1] if given else "?"
    return f"--config {spec}: the file defines no get_config(); expected a config file like experiments/configs/attack_base.py"


def _exit_unknown_setting(error: BaseException, argv, default: str | None):
    """Exits with status 2 and one line if `error` is a misspelt `--config.` setting or a config file
    without get_config(); else re-raises it."""
    message = unknown_setting_message(error, argv, default) or missing_get_config_message(error, argv)
    if message is None:
        raise error
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def attack_label(attack: dict, missing: str = "-") -> str:
    """A run record's `attack` entry as a table cell: its name, with " (all-to-all)" for that mode
    and " (per-batch)" for that poisoning (such runs are otherwise indistinguishable from the
    default ones: `badnets (all-to-all, per-batch)`); `missing` without one."""
    if not attack:
        return missing
    name = attack.get("name", missing)
    marks = [m for m, on in (("all-to-all", attack.get("mode") == "all_to_all"),
                             ("per-batch", attack.get("poisoning") == "per_batch")) if on]
    return f"{name} ({', '.join(marks)})" if marks else name


def table_path(path: str | None, flag: str = "--out") -> Path | None:
    """The file a table command writes (`~` expanded), or None; InputError if it is a folder,
    checked before any work (writing it used to fail with IsADirectoryError at the end)."""
    if path is None:
        return None
    out = Path(path).expanduser()
    if out.is_dir():
        raise InputError(f"{flag} {path} is a folder; expected a file path for the table (e.g. {out / 'table.md'})")
    return out


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
    except BrokenPipeError:  # the reader of stdout went away (`... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's advice for SIGPIPE
        sys.exit(1)
    except KeyboardInterrupt:  # the second Ctrl-C
        print("interrupted: the work since the run's last checkpoint is lost; run the same command again to resume "
              "from it", file=sys.stderr)
        sys.exit(130)
    if stopped:
        print(f"stopped by {stopped} after saving a checkpoint: run the same command again to resume "
              "(a run that had already finished stays finished)", file=sys.stderr)
        sys.exit(128 + signal.Signals[stopped].value)
