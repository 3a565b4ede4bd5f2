"""The erase entry point: DHBE and DFAD on a finished attack run write complete run directories;
bad input gives one clear error and leaves nothing behind."""

import importlib
import json

import pytest

from backdoor_core import rundir
from backdoor_core.errors import InputError
from experiments.configs import erase_dhbe
from experiments.erase import erase_run


def smoke(iterations=6):
    """The smoke variant made tiny; for DHBE it equals test_dhbe.TINY (one compiled iteration)."""
    cfg = erase_dhbe.get_config("smoke")
    cfg.num_devices = 1
    cfg.dhbe.update(dict(iterations=iterations, batch_size=8, student_steps=2, ngf=8, nz=16, nz_trigger=16,
                         balance_weight=0.5))
    cfg.eval_every = cfg.checkpoint_every = 3
    return cfg


@pytest.mark.parametrize("defense", ["dhbe", "dfad"])
def test_dhbe_and_dfad_write_a_complete_run(badnets_run, tmp_path, defense):
    out = tmp_path / defense
    metrics = erase_run(defense, str(badnets_run), smoke(), str(out))
    assert {"test_acc", "asr", "asr_strict", "ra", "der"} <= set(metrics)
    record = rundir.read_record(out)
    assert record["status"] == "complete" and record["defense"] == defense
    assert record["teacher_run"] == str(badnets_run) and record["metrics"] == metrics
    assert record["config"]["defense"]["dhbe"]["iterations"] == 6
    spec, _, _ = rundir.load_model(out)
    assert spec.name == "small_cnn"
    pictures = {"metrics.png", "losses.png", "synthetic_samples.png"}
    pictures |= {"patch_triggers.png", "full_triggers.png"} if defense == "dhbe" else set()
    assert pictures <= {p.name for p in out.iterdir()}
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if "asr" in r] == [3, 6]
    if defense == "dfad":  # distillation only: no trigger generator, no R
        assert all(r["R"] == 0.0 and r["loss_Gp"] == 0.0 for r in history)
    with pytest.raises(InputError, match="holds a finished run"):
        erase_run(defense, str(badnets_run), smoke(), str(out))


def test_bad_erase_input(badnets_run, tmp_path, mnist_subset):
    with pytest.raises(InputError, match="unknown defense 'nope'"):
        erase_run("nope", str(badnets_run), smoke(), str(tmp_path / "a"))
    with pytest.raises(InputError, match="not a run directory"):
        erase_run("dhbe", str(tmp_path), smoke(), str(tmp_path / "b"))
    cfg = smoke()
    cfg.dhbe.patch_size = 99
    with pytest.raises(InputError, match="patch_size = 99"):
        erase_run("dhbe", str(badnets_run), cfg, str(tmp_path / "c"))
    assert not any((tmp_path / n).exists() for n in "abc")


@pytest.mark.parametrize("defense,setting,value,message", [
    ("pbe", "num_images", 0, "detect: num_images = 0"), ("aft", "batch_size", -1, "detect: batch_size = -1"),
    ("pbe", "eps", -1.0, "PGD config: eps = -1.0")])
def test_bad_detection_settings_fail_before_the_run(badnets_run, tmp_path, defense, setting, value, message):
    """Detection is PBE's and AFT's last step: a bad detection setting is refused at the start,
    before any fine-tuning, and leaves no run directory (it used to fail after the whole run)."""
    cfg = importlib.import_module(f"experiments.configs.erase_{defense}").get_config("smoke")
    cfg.num_devices = 1
    cfg.detect[setting] = value
    with pytest.raises(InputError, match=message):
        erase_run(defense, str(badnets_run), cfg, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("defense,setting,value,message", [
    ("dhbe", "eval_every", 0, "DHBE run: eval_every = 0; expected an integer >= 1"),  # was ZeroDivisionError
    ("dhbe", "log_every", 0, "DHBE run: log_every = 0"), ("dhbe", "checkpoint_every", -5, "checkpoint_every = -5"),
    ("dhbe", "stop_after", -1, "DHBE run: stop_after = -1; expected None"),  # was a run stopped before it began
    ("pbe", "stop_after", -1, "PBE run: stop_after_rounds = -1"),
    ("aft", "stop_after", -2, "AFT run: stop_after_epochs = -2")])
def test_bad_run_counts_fail_before_the_run(badnets_run, tmp_path, defense, setting, value, message):
    cfg = smoke() if defense == "dhbe" else \
        importlib.import_module(f"experiments.configs.erase_{defense}").get_config("smoke")
    cfg.num_devices = 1
    cfg[setting] = value
    with pytest.raises(InputError, match=message):
        erase_run(defense, str(badnets_run), cfg, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
