"""Erases the backdoor of an attack run with a defense, into a new run directory.

  python -m experiments.erase --defense dhbe --run ~/runs/badnets_cifar10 \
      [--config experiments/configs/erase_dhbe.py:cpu] [--config.dhbe.iterations=N] [--out DIR]

Without --config the defense's own config file is used with its `paper` variant (the papers'
settings), and `--config.X=...` overrides apply to it. The output directory (default:
RUN_DIR-DEFENSE) gets record.json, history.jsonl, checkpoints/, the purified model/, curves and
sample grids. Running the same command again resumes an unfinished run; a finished one is never
overwritten.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from absl import app, flags

from backdoor_core import rundir
from backdoor_core.errors import InputError
from backdoor_core.sharding import make_mesh
from experiments.common import define_config_flag, flag_values, output_dir, parse_flags, run_cli
from experiments.defenses import DEFENSES, config_module, defense_function
from experiments.defenses.common import load_attack_run


def default_config(defense: str):
    """The `paper` variant of the defense's config module (experiments/configs/erase_<defense>.py;
    DFAD shares DHBE's; a plugin defense's own module)."""
    return importlib.import_module(config_module(defense)).get_config("paper")


def erase_run(defense: str, run: str, cfg=None, out: str | None = None) -> dict:
    """Loads the attack run, opens the defense's run directory and runs the defense."""
    if not defense:
        raise InputError(f"no --defense given; expected one of {', '.join(DEFENSES)}")
    defense_fn = defense_function(defense)
    if not run:
        raise InputError("no --run given; expected the directory of a finished attack run")
    cfg = cfg if cfg is not None else default_config(defense)
    check_config_is_for(defense, cfg)
    attack_run = load_attack_run(output_dir(run))
    out_dir = output_dir(out) if out else Path(str(attack_run.run_dir) + f"-{defense}")
    mesh = make_mesh(cfg.get("num_devices"))
    record = {"kind": "defense", "defense": defense, "teacher_run": str(attack_run.run_dir),
              "model": attack_run.spec.to_dict(), "dataset": attack_run.record.get("dataset"),
              "dataset_source": attack_run.dataset_source, "attack": attack_run.record.get("attack"),
              "teacher_metrics": attack_run.teacher_metrics, "config": {"defense": recorded_config(cfg)}}
    with rundir.open_run(out_dir, record, recorded_defaults(defense)) as (out_dir, _):
        metrics = defense_fn(cfg, attack_run, out_dir, mesh)
    shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"{defense}: {out_dir}  {shown or metrics}")
    return metrics


def check_config_is_for(defense: str, cfg) -> None:
    """Raises InputError when `cfg` names another defense (its `defense` field) than the one the
    defense's own config module names (DFAD shares DHBE's): another defense's file given as --config
    used to end in an AttributeError for the missing section."""
    own = default_config(defense).get("defense")
    given = cfg.get("defense")
    if own is not None and given is not None and given != own:
        raise InputError(f"--config is a config for defense {given!r}; expected one for {defense!r} "
                         f"(module {config_module(defense)}, with a variant and overrides)")


def recorded_config(cfg) -> dict:
    """The defense config as recorded in the run's record (for the resume check and the matrix's
    stale-cell check): session-length settings (stop_after) may differ between attempts."""
    settings = cfg.to_dict()
    settings.pop("stop_after", None)
    return settings


def recorded_defaults(defense: str) -> dict:
    """The record `config` of the defense's default config: what a setting an old record lacks
    (an option added since) is compared with when a run resumes or a matrix cell is reused."""
    return {"defense": recorded_config(default_config(defense))}


def implied_config_file(argv) -> str | None:
    """'FILE:paper' for the config module of the defense that `--defense NAME` in argv names (its
    file, found without importing it), so that `--config.X=...` overrides work without --config;
    None without --defense. Raises InputError for an unknown defense name."""
    names = flag_values(argv, "defense")
    if not names:
        return None
    module = config_module(names[-1])
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a plugin's module that cannot be found: erase_run reports it
        return None
    return f"{spec.origin}:paper" if spec is not None and spec.origin else None


def main():
    """Parses the flags (defined here, not at import, so entry points can be imported together)."""
    defense = flags.DEFINE_string("defense", None, f"one of {', '.join(DEFENSES)}")
    run = flags.DEFINE_string("run", None, "the attack run directory to purify")
    out = flags.DEFINE_string("out", None, "output run directory (default RUN-DEFENSE)")
    try:
        implied = implied_config_file(sys.argv)
    except InputError as e:  # before absl, which would call the overrides unknown flags
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    config = define_config_flag(implied, "defense config file[:variant] (default: the --defense's own, `paper` variant)")
    app.run(flags_parser=parse_flags,
            main=lambda argv: run_cli(lambda: erase_run(defense.value, run.value, config.value, out.value)))


if __name__ == "__main__":
    main()
