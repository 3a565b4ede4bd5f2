"""The training entry point: runs on the shipped data; bad input gives one clear line."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backdoor_core.errors import InputError
from experiments.configs import train_base
from experiments.train import train_clean

ROOT = Path(__file__).resolve().parents[1]


def test_train_cli_on_shipped_data(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config.width=0.25", "--config.num_devices=1",
                           "--config.train.epochs=1", f"--config.out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"finished: {out}" in proc.stdout
    record = json.loads((out / "record.json").read_text())
    assert record["model"]["name"] == "small_cnn" and record["dataset"] == "mnist_subset"
    assert record["metrics"]["test_acc"] > 0.7


def test_unknown_training_setting(tmp_path):
    cfg = train_base.get_config()
    cfg.train.unlock()
    cfg.train.learning_rates = 0.1
    cfg.out = str(tmp_path / "run")
    with pytest.raises(InputError, match="unknown TrainConfig setting.*learning_rates"):
        train_clean(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,message", [
    ("--config.dataset=imagenet_not_here", "error: unknown dataset 'imagenet_not_here'"),
    ("--config.model=resnet9000", "error: unknown model 'resnet9000'"),
])
def test_cli_bad_names_give_one_line(tmp_path, override, message):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "experiments.train", override, f"--config.out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    # ml_collections applies a default config file's overrides while the flag is defined ...
    (["experiments.train", "--config.trian.epochs=3"],
     "error: --config.trian.epochs: the config has no setting 'trian' (Did you mean \"train\" instead of \"trian\"?); "
     "expected one of dataset, model, num_devices, out, stop_after_steps, train, width"),
    (["experiments.attack", "--config.params.badnets.patch_size=4"],
     "error: --config.params.badnets.patch_size: the config has no setting 'patch_size'; "
     "expected one of color, margin, pattern, position, size"),
    # ... and those of a file given on the command line while absl parses the flags
    (["experiments.erase", "--defense", "dhbe", "--run", "RUN", "--config", "experiments/configs/erase_dhbe.py:cpu",
      "--config.dhbe.ngff=3"], "error: --config.dhbe.ngff: the config has no setting 'ngff' (Did you mean \"ngf\""),
    # a config file that exists neither in the working directory nor in the checkout, an unknown
    # variant (absl's "FATAL Flags parsing error" with ml_collections' traceback and the flags' help),
    # a value of the wrong type, another defense's config file (an AttributeError)
    (["experiments.attack", "--config=experiments/configs/attack_nope.py:cpu"],
     "error: --config experiments/configs/attack_nope.py:cpu: no config file experiments/configs/attack_nope.py in "),
    (["experiments.erase", "--defense", "pbe", "--run", "RUN", "--config", "experiments/configs/erase_pbe.py:nosuch"],
     "erase_pbe.py:nosuch: ValueError: unknown PBE config variant 'nosuch'; expected one of ['cpu', 'paper', 'smoke']"),
    (["experiments.train", "--config.train.epochs=x"],
     "error: flag --config.train.epochs=x: invalid literal for int() with base 10: 'x'"),
    (["experiments.attack", "--config=experiments/configs/attack_base.py:cpu"],
     "attack_base.py:cpu: TypeError: get_config() takes 0 positional arguments but 1 was given"),
    (["experiments.train", "--flagfile=nope.txt"], "error: ERROR:: Unable to open flagfile"),
    (["experiments.erase", "--defense", "pbe", "--run", "RUN", "--config", "experiments/configs/erase_dhbe.py:smoke"],
     "error: --config is a config for defense 'dhbe'; expected one for 'pbe' (module experiments.configs.erase_pbe"),
])
def test_a_bad_config_gives_one_line(tmp_path, args, message):
    # It used to end a traceback from inside ml_collections (KeyError / AttributeError). Run from
    # another folder than the checkout: the default config files and the shipped ones the docs name
    # (experiments/configs/...) are found from there too (a traceback until 2026-12-06).
    out = tmp_path / "run"
    args = [a.replace("RUN", str(tmp_path / "no_run")) for a in args]
    proc = subprocess.run([sys.executable, "-m", *args, f"--config.out={out}" if "erase" not in args[0] else
                           f"--out={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_config_file_in_the_working_directory_comes_before_the_checkouts(tmp_path, monkeypatch):
    from experiments.common import CHECKOUT, resolve_config_argv, resolve_config_spec

    monkeypatch.chdir(tmp_path)
    shipped = "experiments/configs/erase_pbe.py"
    assert resolve_config_spec(f"{shipped}:cpu") == f"{CHECKOUT / shipped}:cpu"
    (tmp_path / shipped).parent.mkdir(parents=True)
    (tmp_path / shipped).write_text("def get_config(variant=None):\n    return None\n")  # the user's own copy
    assert resolve_config_spec(f"{shipped}:cpu") == f"{shipped}:cpu"
    argv = ["erase", "--config", "experiments/configs/erase_dhbe.py", "--config.dhbe.iterations=2",
            "--config=experiments/configs/erase_aft.py:paper"]
    assert resolve_config_argv(argv) == ["erase", "--config", str(CHECKOUT / "experiments/configs/erase_dhbe.py"),
                                         "--config.dhbe.iterations=2",
                                         f"--config={CHECKOUT / 'experiments/configs/erase_aft.py'}:paper"]
    with pytest.raises(InputError, match="no config file /nowhere/x.py; expected"):
        resolve_config_spec("/nowhere/x.py")


def test_a_negative_stop_is_refused_before_the_run(tmp_path):
    # --config.stop_after_steps=-1 used to leave a run directory "stopped" before its first step.
    for entry in ("experiments.train", "experiments.attack"):
        out = tmp_path / entry
        proc = subprocess.run([sys.executable, "-m", entry, "--config.stop_after_steps=-1", f"--config.out={out}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "run: stop_after_steps = -1; expected None (run to the end) or an integer >= 0" in proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()


COMMANDS = ("attack", "train", "erase", "run", "detect", "table", "import_model", "export_model", "list", "bench")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_runs_as_a_module(tmp_path, command):
    # `python -m experiments.X --help` from outside the checkout prints the command's usage: a module
    # without its `if __name__ == "__main__"` call (experiments.detect lost it for a moment on
    # 2026-12-06) printed nothing and exited 0.
    proc = subprocess.run([sys.executable, "-m", f"experiments.{command}", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode in (0, 1)  # absl's --help exits 1, argparse's 0
    first_line = importlib.import_module(f"experiments.{command}").__doc__.strip().splitlines()[0]
    assert first_line.rstrip(".") in " ".join(proc.stdout.split()) or "models (" in proc.stdout, proc.stdout[:500]


def test_erase_overrides_apply_to_the_defenses_own_config_without_a_config_flag(tmp_path):
    # `--config.X=...` without --config was "Unknown command line flag"; an unknown or missing
    # --defense is named as such.
    from experiments.erase import implied_config_file

    assert implied_config_file(["erase", "--defense", "clp"]) == f"{ROOT / 'experiments/configs/erase_clp.py'}:paper"
    assert implied_config_file(["erase", "--defense=dfad"]) == f"{ROOT / 'experiments/configs/erase_dhbe.py'}:paper"
    assert implied_config_file(["erase", "--run", "x"]) is None
    with pytest.raises(InputError, match="unknown defense 'nosuch'; expected one of dhbe"):
        implied_config_file(["erase", "--defense", "nosuch"])
    for args, message in [(["--defense", "clp", "--config.clp.uu=2"], "error: --config.clp.uu: the config has no setting 'uu'"),
                          (["--defense", "nosuch", "--config.num_devices=1"], "error: unknown defense 'nosuch'"),
                          ([], "error: no --defense given; expected one of dhbe")]:
        proc = subprocess.run([sys.executable, "-m", "experiments.erase", "--run", str(tmp_path / "none"), *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
