"""experiments.table and experiments.detect on a finished BadNets run, and the loop-unrolling switch."""

import json

import numpy as np
import pytest

from attacks.pgd import PGDConfig
from backdoor_core import rundir
from backdoor_core.sharding import unroll_loops
from experiments import detect, table


def test_table_row_matches_the_run_record(badnets_run, tmp_path):
    record = rundir.read_record(badnets_run)
    out = tmp_path / "t.md"
    assert table.main(["--runs", str(badnets_run), str(tmp_path / "missing"), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| run | dataset | model | attack |")
    rows = [line for line in lines[2:] if line.startswith("|")]
    assert len(rows) == 1  # the missing folder is skipped, not an error
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[3] == "badnets"
    assert cells[6] == f"{100 * record['metrics']['test_acc']:.1f}"
    assert cells[7] == f"{100 * record['metrics']['asr']:.1f}"
    assert cells[5] == "2"  # epochs


def test_table_without_a_finished_run_is_one_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert table.main(["--runs", str(tmp_path / "missing"), str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: none of the 2 path(s) given is a finished run directory")
    assert not out.exists()


def test_attack_cells_tell_all_to_all_from_all_to_one():
    from experiments.common import attack_label

    assert attack_label({"name": "badnets", "mode": "all_to_all", "target": 0}) == "badnets (all-to-all)"
    assert attack_label({"name": "badnets", "mode": "all_to_one", "target": 0}) == "badnets"
    assert attack_label({"name": "blended"}) == "blended"  # records from before `mode` existed
    assert attack_label({"name": "badnets", "poisoning": "per_batch"}) == "badnets (per-batch)"
    assert attack_label({"name": "badnets", "mode": "all_to_all", "poisoning": "per_batch"}) == \
        "badnets (all-to-all, per-batch)"
    assert attack_label({"name": "badnets", "poisoning": "static"}) == "badnets"
    assert attack_label({}) == "-" and attack_label(None, "none") == "none"  # a clean training run


def test_wall_time_prefers_epoch_times_then_elapsed():
    assert table.wall_time([{"epoch_time_s": 60}, {"epoch_time_s": 30}]) == "1.5 min"
    assert table.wall_time([{"elapsed_s": 30}, {"elapsed_s": 120}]) == "2.0 min"
    assert table.wall_time([{"step": 1}]) == "-"


def test_detect_cli_reports_one_row_per_run_and_errors_per_run(badnets_run, tmp_path, capsys):
    out = tmp_path / "d.md"
    rc = detect.main(["--runs", str(badnets_run), str(tmp_path), "--num_images", "64", "--out", str(out),
                      "--num_devices", "1"])
    assert rc == 1  # the second path is no run: reported in its row, the first still detected
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [("error" in r) for r in rows] == [False, True]
    good = rows[0]
    assert good["attack"] == "badnets" and good["true_target"] == 0
    assert 0 <= good["suspected"] < 10 and sum(good["counts"]) > 0
    assert 0.0 < good["concentration"] <= 1.0 and 0.0 < good["flip_rate"] <= 1.0
    assert "badnets" in out.read_text()
    # The flipped images by (class before, class after): its columns are the counts, nothing stays.
    transitions = np.array(good["transitions"])
    np.testing.assert_array_equal(transitions.sum(0), good["counts"])
    assert np.trace(transitions) == 0 and (transitions.sum(1) <= good["input_counts"]).all()
    assert good["target_share"] == round(good["counts"][0] / sum(good["counts"]), 4)  # all-to-one: target 0's share


def test_detect_cli_compares_each_row_with_a_reference_model(badnets_run, tmp_path, capsys):
    import shutil

    twin = tmp_path / "twin"  # the same model under another path: a second reference
    shutil.copytree(badnets_run, twin)
    out = tmp_path / "d.md"
    # Both runs are references: each is compared with the other only (leave one out), and the same
    # model on the same images under the same attack has excess exactly 0.
    assert detect.main(["--runs", str(badnets_run), str(twin), "--eps", "32", "--num_images", "64",
                        "--reference", str(badnets_run), str(twin), "--out", str(out)]) == 0
    first, second = json.loads(out.with_suffix(".json").read_text())
    assert first["counts"] == second["counts"] and first["run"] == badnets_run.name and second["run"] == "twin"
    for row in (first, second):
        assert row["reference_share"] == row["concentration"] > 0 and row["excess"] == row["shift"] == 0.0
    assert out.read_text().splitlines()[0].endswith("| reference_share | excess | shift_class | shift |")
    # A run that is the only reference has nothing to be compared with.
    out.unlink()
    assert detect.main(["--runs", str(badnets_run), "--eps", "32", "--num_images", "64", "--reference",
                        str(badnets_run), "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["reference_share"] == row["excess"] == row["shift_class"] == row["shift"] == "-"
    # References of different datasets are refused; a run of another dataset than theirs is an error row.
    other = tmp_path / "other"
    shutil.copytree(badnets_run, other)
    rundir.update_record(other, dataset="cifar10")
    out.unlink()
    with pytest.raises(SystemExit) as exc:
        detect.main(["--runs", str(badnets_run), "--eps", "32", "--num_images", "64", "--reference", str(twin),
                     str(other), "--out", str(out)])
    assert exc.value.code == 2 and "different datasets (cifar10, digits)" in capsys.readouterr().err
    assert not out.exists()
    assert detect.main(["--runs", str(other), str(badnets_run), "--eps", "32", "--num_images", "64", "--reference",
                        str(twin), "--out", str(out)]) == 1
    mismatched, matched = json.loads(out.with_suffix(".json").read_text())
    assert mismatched == {"run": "other", "error": "trained on cifar10, the --reference models on digits; "
                                                   "expected the same dataset"}
    assert matched["excess"] == 0.0
    # An unusable reference is refused once, before any run is attacked, and nothing is written.
    out.unlink()
    with pytest.raises(SystemExit) as exc:
        detect.main(["--runs", str(badnets_run), "--reference", str(twin), str(tmp_path / "none"), "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"--reference {tmp_path / 'none'}:" in err and not out.exists()


def test_reference_columns_measure_the_row_against_the_references_envelope():
    row = {"run": "r", "eps": "6", "suspected": 2, "concentration": 0.6, "counts": [1, 1, 3]}
    assert detect.with_reference(row, [{"counts": [2, 6, 2]}]) == \
        {**row, "reference_share": 0.2, "excess": 0.4, "shift_class": 2, "shift": 0.4}
    # The data's own sink: the excess falls below 0 and the shift points elsewhere (class 0: 0.2 - 0).
    assert detect.with_reference(row, [{"counts": [0, 0, 4]}]) == \
        {**row, "reference_share": 1.0, "excess": -0.4, "shift_class": 0, "shift": 0.2}
    # Several references: per class the largest share (shares, not counts: 3/4 > 4/10), so the
    # envelope is (0.8, 0.4, 0.75) and no class exceeds it: the shift is the least negative gap.
    assert detect.with_reference(row, [{"counts": [2, 4, 4]}, {"counts": [1, 0, 3]}, {"counts": [8, 2, 0]}]) == \
        {**row, "reference_share": 0.75, "excess": -0.15, "shift_class": 2, "shift": -0.15}
    unusable = {"reference_share": "-", "excess": "-", "shift_class": "-", "shift": "-"}
    assert detect.with_reference(row, []) == {**row, **unusable}  # no reference to compare with
    assert detect.with_reference(row, [{"counts": [2, 6, 2]}, {"counts": [0, 0, 0]}]) == {**row, **unusable}
    assert detect.with_reference(row, [{"counts": [1] * 10}]) == {**row, **unusable}  # another number of classes
    assert detect.with_reference({"run": "r", "error": "x"}, [{"counts": [1, 1, 1]}]) == {"run": "r", "error": "x"}


def test_target_share_follows_the_attack_mode():
    # 3 classes, 10 flips: 5 go i -> i + 1 (0 -> 1 once, 1 -> 2 and 2 -> 0 twice each), 3 land on 0, 4 on 2.
    transitions = np.array([[0, 1, 2], [1, 0, 2], [2, 2, 0]])
    assert detect.target_share(transitions, {"name": "badnets", "mode": "all_to_all"}) == 0.5  # (1 + 2 + 2) / 10
    assert detect.target_share(transitions, {"name": "badnets", "mode": "all_to_one", "target": 0}) == 0.3
    assert detect.target_share(transitions, {"name": "badnets", "target": 2}) == 0.4
    assert detect.target_share(transitions, {}) == "-"  # a clean run has no target
    assert detect.target_share(np.zeros((3, 3), int), {"name": "badnets", "target": 0}) == "-"  # nothing flipped


@pytest.mark.parametrize("norm, budgets, labels", [("linf", ["1", "32"], ["1", "32"]),
                                                   ("l2", ["0.05", "3"], ["L2 0.05", "L2 3"])])
def test_detect_cli_gives_one_row_per_budget(badnets_run, tmp_path, norm, budgets, labels):
    out = tmp_path / "d.md"
    assert detect.main(["--runs", str(badnets_run), "--norm", norm, "--eps", *budgets, "--num_images", "64",
                        "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["run"], r["eps"]) for r in rows] == [(badnets_run.name, label) for label in labels]
    small, large = rows
    assert large["flip_rate"] > small["flip_rate"]  # the budget reached PGD: the larger ball flips more
    assert out.read_text().splitlines()[0].startswith("| run | images | eps |")


def test_detect_budgets_are_pbe_steps_in_each_norms_units():
    # L-inf radii are in 1/255 units (PBE's 6 -> its 6/255 and 1.2/255), L2 radii in pixel units
    assert detect.pgd_config(6, "linf", 7) == PGDConfig(eps=6 / 255, alpha=1.2 / 255, steps=7)
    assert detect.pgd_config(2, "l2", 10) == PGDConfig(eps=2.0, alpha=0.4, steps=10, norm="l2")
    assert (detect.budget_label(6, "linf"), detect.budget_label(0.5, "l2")) == ("6", "L2 0.5")


@pytest.mark.parametrize("images", ["synthetic", "noise"])
def test_detect_cli_runs_without_data(badnets_run, tmp_path, monkeypatch, images):
    # Data-free inputs: the run's dataset is never opened.
    monkeypatch.setattr(detect, "load_dataset", lambda *_: pytest.fail("data-free detection read the dataset"))
    out = tmp_path / "d.md"
    # 64/255: uniform noise sits deep in one class of the digit model; 6/255 flips none of it.
    assert detect.main(["--runs", str(badnets_run), "--images", images, "--synthetic_steps", "3", "--eps", "64",
                        "--num_images", "40", "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["images"] == images and row["attack"] == "badnets"
    assert 0 < sum(row["counts"]) <= 40 and 0.0 < row["flip_rate"] <= 1.0
    # The unattacked images' own predictions: all 40 counted, the top class named with its share.
    top = int(np.argmax(row["input_counts"]))
    assert sum(row["input_counts"]) == 40 and row["input_top"] == f"{top} ({row['input_counts'][top] / 40:.2f})"


def test_detect_cli_rejects_bad_arguments_before_any_work(badnets_run, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        detect.main(["--runs", str(badnets_run), "--eps", "6", "0"])
    assert exc.value.code == 2 and "--eps 0: expected positive radii" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        detect.main(["--runs", str(badnets_run), "--images", "synthetic", "--synthetic_steps", "-1"])
    assert exc.value.code == 2 and "--synthetic_steps -1: expected a non-negative" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        detect.main(["--runs", str(badnets_run), "--norm", "l2", "--eps", "-1"])
    assert exc.value.code == 2 and "--eps -1: expected positive radii in [0, 1]-pixel units" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        detect.main(["--runs", str(badnets_run), "--steps", "0"])
    assert exc.value.code == 2 and "--steps 0: expected at least 1" in capsys.readouterr().err
    # each refused once, before any model is loaded (a bad seed was an error row per run; a folder as
    # --out an IsADirectoryError after the whole table; a threshold over 1 flagged nothing)
    for args, message in [(["--seed", "-1"], "detect: seed = -1; expected a non-negative integer"),
                          (["--threshold", "1.5"], "--threshold 1.5: expected a concentration in (0, 1]"),
                          (["--out", str(tmp_path)], f"--out {tmp_path} is a folder; expected a file path"),
                          (["--num_devices", "9"], "--num_devices 9: expected 1 to 4 (the devices of this host)")]:
        with pytest.raises(SystemExit) as exc:
            detect.main(["--runs", str(badnets_run), *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("error") == 1
    with pytest.raises(SystemExit) as exc:
        table.main(["--runs", str(badnets_run), "--out", str(tmp_path)])
    assert exc.value.code == 2 and f"--out {tmp_path} is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("forced, expected", [("1", True), ("0", False)])
def test_unroll_switch_env_override(monkeypatch, forced, expected):
    monkeypatch.setenv("BACKDOOR_UNROLL", forced)
    assert unroll_loops() is expected


def test_unroll_on_cpu_by_default(monkeypatch):
    monkeypatch.delenv("BACKDOOR_UNROLL", raising=False)
    assert unroll_loops() is True  # the tests run on XLA:CPU


def test_refresh_script_swaps_the_readme_grid_for_the_new_one_without_id_columns():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "experiments" / "scripts" / "refresh_archive_docs.py"
    spec = importlib.util.spec_from_file_location("refresh_archive_docs", path)
    refresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(refresh)
    results = ("| dataset | model | seed | attack | defense | status |\n|---|---|---|---|---|---|\n"
               "| cifar10 | m x0.25 | 0 | sig | none | complete |\n\n## At a glance\n\n"
               "| dataset | model | seed | attack | none | dhbe |\n|---|---|---|---|---|---|\n"
               "| cifar10 | m x0.25 | 0 | sig | 83.9 / 81.4 | 79.9 / 84.1 |\n\n## Wall time\n\n"
               "| dataset | model | seed | attack | none | dhbe |\n|---|---|---|---|---|---|\n"
               "| cifar10 | m x0.25 | 0 | sig | 3.5 | 85.5+ |\n")
    grid = refresh.grid_without_ids(results)
    assert grid == "| attack | none | dhbe |\n|---|---|---|\n| sig | 83.9 / 81.4 | 79.9 / 84.1 |"
    assert refresh.grid_without_ids(results, "## Wall time") == "| attack | none | dhbe |\n|---|---|---|\n| sig | 3.5 | 85.5+ |"
    readme = "text\n\n| attack | none | dhbe |\n|---|---|---|\n| sig | - | - |\n\nafter\n"
    assert refresh.replace_grid(readme, grid) == f"text\n\n{grid}\n\nafter\n"
    times = "| attack (minutes) | none | dhbe |\n|---|---|---|\n| sig | 3.5 | 85.5+ |"
    both = readme + "\n" + times.replace("3.5 | 85.5+", "- | -") + "\n\nend\n"
    assert refresh.replace_grid(refresh.replace_grid(both, grid), times, refresh.TIME_GRID_HEADER) == \
        f"text\n\n{grid}\n\nafter\n\n{times}\n\nend\n"
    with pytest.raises(SystemExit, match="no line starting"):
        refresh.replace_grid("no grid here\n", grid)
    with pytest.raises(SystemExit, match="no '## Wall time' section"):
        refresh.grid_without_ids(results[:results.index("## Wall time")], "## Wall time")


def test_partial_trigger_probe_moves_from_the_clean_to_the_triggered_images(badnets_run):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "experiments" / "scripts" / "partial_trigger_probe.py"
    spec = importlib.util.spec_from_file_location("partial_trigger_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    clean = np.array([[[[0], [255]]]], np.uint8)  # [1, 1, 2, 1]
    triggered = np.array([[[[255], [255]]]], np.uint8)  # the first pixel painted white
    half = probe.partial_triggers(clean, triggered, 0.5)
    np.testing.assert_allclose(half, [[[[0.5], [1.0]]]])
    assert probe.change_sizes(clean, half) == pytest.approx((0.5, 0.5))
    # On the BadNets model: no trigger sends (nearly) nothing to the target, the whole one its ASR
    t, module, variables = probe.load(badnets_run)
    none, whole = probe.probe(t, module, variables, [0.0, 1.0])
    metrics = rundir.read_record(badnets_run)["metrics"]
    assert none["l2"] == none["linf"] == 0.0 and whole["linf"] > 0.5
    assert none["target_share"] < 0.2 and whole["target_share"] == pytest.approx(metrics["asr"], abs=0.02)
    np.testing.assert_allclose(probe.cosines(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]),
                                             np.array([[2.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])), [1.0, -2 ** -0.5, 0.0])
    aligned = probe.pgd_alignment(t, module, variables, eps=64, num_images=32)
    assert 0 < aligned["flip_rate"] <= 1 and 0 <= aligned["target_share"] <= 1
    assert all(-1 <= aligned[k] <= 1 for k in ("cos_other", "cos_all"))
