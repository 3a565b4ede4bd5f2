"""experiments.run: a tiny matrix on shipped digits; finished cells are reused, a failing cell is
reported without stopping the others, and the table has one row per cell."""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from backdoor_core.errors import InputError
from backdoor_core.locks import try_lock, unlock
from experiments.cell_lock import lock_path
from experiments.configs import matrix_quickstart
from experiments.plots import (before_after, cell_curves, curve_points, gallery_images, plot_before_after,
                               plot_trigger_gallery)
from experiments.run import CELLS, Matrix, apply_overrides, run_matrix


@pytest.fixture
def tiny_matrix(tmp_path, mnist_subset):
    train, test = mnist_subset
    keep = np.random.default_rng(1).permutation(len(train))[:1200]
    np.savez(tmp_path / "digits.npz", x_train=train.images[keep], y_train=train.labels[keep],
             x_test=test.images[:300], y_test=test.labels[:300])
    c = matrix_quickstart.get_config()
    c.out = str(tmp_path / "matrix")
    c.datasets = ml_collections.ConfigDict({"digits": dict(
        source=str(tmp_path / "digits.npz"), attack_config="experiments.configs.attack_base",
        overrides=dict(num_devices=1, num_examples=0, train=dict(epochs=1, batch_size=64, learning_rate=0.05)))})
    c.attacks = ("badnets",)
    c.defenses = ("clp", "ft")
    # FT with a batch larger than its 5% clean set (60 images) fails with an InputError.
    c.defense_overrides = ml_collections.ConfigDict({"ft": dict(num_devices=1, aft=dict(batch_size=512)),
                                                     "clp": dict(num_devices=1)})
    c.plots = False  # ~1.4 s a run_matrix call here; the tests of the plots turn them on
    return c


def read_cells(out):
    return [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]


def test_matrix_runs_reports_failures_and_resumes(tiny_matrix, tmp_path):
    out = tmp_path / "matrix"
    tiny_matrix.plots = True
    rows = run_matrix(tiny_matrix)
    assert [(r["defense"], r["status"]) for r in rows] == [("none", "complete"), ("clp", "complete"), ("ft", "failed")]
    assert "fewer than one batch" in rows[2]["error"]
    assert rows[1]["ASR"] != "-" and float(rows[0]["C-Acc"]) > 50
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and [r["defense"] for r in table] == ["none", "clp", "ft"]
    md = (out / "results.md").read_text()
    assert md.count("| digits |") == 3 + 2 and "failed: InputError" in md  # 3 cells, 1 row in each grid
    grid = md[md.index("## At a glance"):md.index("## Wall time")]
    assert f"| digits | {rows[0]['model']} | 0 | badnets | {rows[0]['C-Acc']} / {rows[0]['ASR']} | " \
           f"{rows[1]['C-Acc']} / {rows[1]['ASR']} | failed |" in grid
    minutes = [f"{r['seconds'] / 60:.1f}" if r["seconds"] >= 3 else "<0.1" for r in rows[:2]]
    assert f"| digits | {rows[0]['model']} | 0 | badnets | {minutes[0]} | {minutes[1]} | failed |" in md[md.index("## Wall time"):]
    plots = {f: (out / "plots" / f).read_bytes() for f in ("asr_cacc.png", "curves.png", "trigger_gallery.png")}
    assert all(plots.values())
    assert not (out / "results_seeds.md").exists()  # one seed: nothing to summarise over
    teacher = out / "teachers" / "digits-small_cnn-badnets-s0"
    assert (teacher / "model").is_dir() and not (teacher / "examples.png").exists()  # num_examples = 0
    tiny_matrix.plots = False  # from here on the tables only: the plots stay as the first run drew them
    first = read_cells(out)
    assert [c["status"] for c in first] == ["complete", "complete", "failed"]

    again = run_matrix(tiny_matrix)  # finished cells reused; only the failed one runs again
    cells = read_cells(out)
    assert len(cells) == 4 and cells[-1]["run"].endswith("-ft") and cells[-1]["status"] == "failed"
    assert [r["C-Acc"] for r in again[:2]] == [r["C-Acc"] for r in rows[:2]]
    assert again[0]["seconds"] == first[0]["seconds"]  # the reused cell keeps its first wall time

    tiny_matrix.defense_overrides.clp.clp = dict(u=2.0)  # CLP's config changed: its finished cell is stale
    stale = run_matrix(tiny_matrix)
    assert stale[1]["status"] == "stale" and "defense.clp.u: was 3.0, now 2.0" in stale[1]["error"]
    assert stale[0]["status"] == "complete" and len(read_cells(out)) == 5  # the failed FT cell ran again
    assert "stale: finished with another configuration" in (out / "results.md").read_text()
    del tiny_matrix.defense_overrides.clp["clp"]

    # A cell recorded before an option existed (here: its record lacks CLP's `u`) is the same cell
    # while the option is left at its default, and stale once it is set to something else.
    # The same for a teacher's attack parameter. (FT left out: its failing cell would run again.)
    def drop_setting(run, *keys):
        record_path = out / run / "record.json"
        record = json.loads(record_path.read_text())
        section = record["config"]
        for key in keys[:-1]:
            section = section[key]
        del section[keys[-1]]
        record_path.write_text(json.dumps(record))

    drop_setting("defenses/digits-small_cnn-badnets-s0-clp", "defense", "clp", "u")
    drop_setting("teachers/digits-small_cnn-badnets-s0", "attack", "params", "size")
    tiny_matrix.defenses = ("clp",)
    assert [r["status"] for r in run_matrix(tiny_matrix)] == ["complete", "complete"]
    tiny_matrix.defense_overrides.clp.clp = dict(u=2.0)
    assert "defense.clp.u: was None, now 2.0" in run_matrix(tiny_matrix)[1]["error"]
    del tiny_matrix.defense_overrides.clp["clp"]
    tiny_matrix.attack_overrides = ml_collections.ConfigDict({"badnets": dict(params=dict(badnets=dict(size=4)))})
    assert "attack.params.size: was None, now 4" in run_matrix(tiny_matrix)[0]["error"]
    tiny_matrix.attack_overrides = ml_collections.ConfigDict()
    tiny_matrix.defenses = ("clp", "ft")
    assert len(read_cells(out)) == 5

    # The teacher's attack changed (here its poison ratio): the finished teacher is stale too,
    # not reused, and its defenses wait for a teacher with today's settings.
    tiny_matrix.attack_overrides = ml_collections.ConfigDict({"badnets": dict(poison_ratio=0.2)})
    changed = run_matrix(tiny_matrix)
    assert changed[0]["status"] == "stale" and "attack.poison_ratio: was 0.1, now 0.2" in changed[0]["error"]
    assert [r["status"] for r in changed[1:]] == ["skipped", "skipped"] and len(read_cells(out)) == 5
    tiny_matrix.attack_overrides = ml_collections.ConfigDict()

    tiny_matrix.reuse_only = True  # tabulate only: the unfinished cell is listed, not run
    tiny_matrix.defenses = ("clp", "ft", "pbe")
    listed = run_matrix(tiny_matrix)
    assert [r["status"] for r in listed] == ["complete", "complete", "not run", "not run"]
    assert len(read_cells(out)) == 5 and not (out / "defenses" / "digits-small_cnn-badnets-s0-pbe").exists()
    assert "not run: reuse_only: no finished run here" in (out / "results.md").read_text()  # tables still written
    assert {f: (out / "plots" / f).read_bytes() for f in plots} == plots  # plots=False drew none of them


def test_an_archive_carries_finished_cells_to_a_machine_without_the_runs(tiny_matrix, tmp_path):
    """A matrix spread over sessions whose machines lose `out`: finished cells are archived without
    checkpoints, a fresh `out` tabulates them without training, a pending defense brings its
    teacher back, and an archived cell with other settings is stale, not reused."""
    import shutil

    archive = tmp_path / "archive"
    tiny_matrix.defenses = ("clp",)
    tiny_matrix.archive = str(archive)
    tiny_matrix.archive_weights = False  # results only (weights: the next two tests)
    first = run_matrix(tiny_matrix)
    assert [r["status"] for r in first] == ["complete", "complete"]
    teacher = archive / "teachers" / "digits-small_cnn-badnets-s0"
    assert sorted(p.name for p in teacher.iterdir()) == ["cell.json", "history.jsonl", "record.json",
                                                          "trigger.json", "trigger.npz"]
    assert sorted(p.name for p in (archive / "defenses" / "digits-small_cnn-badnets-s0-clp").iterdir()) == [
        "cell.json", "history.jsonl", "record.json"]
    assert json.loads((teacher / "cell.json").read_text())["seconds"] == first[0]["seconds"]

    shutil.rmtree(tmp_path / "matrix")  # a new machine: only the (committed) archive is left
    tiny_matrix.plots = True  # drawn from the archive alone
    again = run_matrix(tiny_matrix)
    assert [(r["status"], r["C-Acc"], r["ASR"], r["seconds"]) for r in again] == [
        (r["status"], r["C-Acc"], r["ASR"], r["seconds"]) for r in first]
    assert all(r["run"].startswith(str(archive)) for r in again)
    out = tmp_path / "matrix"
    assert not (out / "cells.jsonl").exists() and not (out / "teachers").exists()  # nothing ran
    assert (out / "plots" / "curves.png").is_file() and (out / "plots" / "trigger_gallery.png").is_file()
    tiny_matrix.plots = False

    # A defense without an archived cell needs the teacher's weights: the teacher trains again
    # (here deterministically to the same model), the archived CLP cell is still reused.
    tiny_matrix.defenses = ("clp", "ft")
    tiny_matrix.defense_overrides.ft = dict(num_devices=1, aft=dict(batch_size=16, epochs=1))
    grown = run_matrix(tiny_matrix)
    assert [r["status"] for r in grown] == ["complete", "complete", "complete"]
    assert grown[0]["run"] == str(out / "teachers" / "digits-small_cnn-badnets-s0")
    assert grown[1]["run"].startswith(str(archive)) and grown[0]["C-Acc"] == first[0]["C-Acc"]
    assert (archive / "defenses" / "digits-small_cnn-badnets-s0-ft" / "record.json").is_file()
    assert [c["run"].rsplit("/", 1)[-1] for c in read_cells(out)] == ["digits-small_cnn-badnets-s0",
                                                                      "digits-small_cnn-badnets-s0-ft"]

    shutil.rmtree(out)
    tiny_matrix.defense_overrides.clp.clp = dict(u=2.0)  # CLP's settings changed since it was archived
    stale = run_matrix(tiny_matrix)
    assert [r["status"] for r in stale] == ["complete", "stale", "complete"]
    assert "defense.clp.u: was 3.0, now 2.0" in stale[1]["error"] and not (out / "teachers").exists()
    assert json.loads((archive / "defenses" / "digits-small_cnn-badnets-s0-clp" / "record.json").read_text())[
        "config"]["defense"]["clp"]["u"] == 3.0  # the archived cell is left as it was


def test_a_defense_cell_made_on_another_teacher_is_not_reused(tiny_matrix, tmp_path):
    """A row never mixes teachers: an archived defense cell whose teacher differs from the archived
    one (say, trained on a GPU and since replaced) brings the teacher back and runs again on it,
    replacing its archived copy; a finished run directory in `out` made on another teacher is
    stale and left as it was."""
    archive = tmp_path / "archive"
    tiny_matrix.defenses = ("clp",)
    tiny_matrix.archive = str(archive)
    tiny_matrix.archive_weights = False  # the teacher is trained again on the next machine
    first = run_matrix(tiny_matrix)
    archived_clp = archive / "defenses" / "digits-small_cnn-badnets-s0-clp" / "record.json"
    record = json.loads(archived_clp.read_text())
    teacher_metrics = json.loads((archive / "teachers" / "digits-small_cnn-badnets-s0" / "record.json")
                                 .read_text())["metrics"]
    assert record["teacher_metrics"] == teacher_metrics
    record["teacher_metrics"] = {**teacher_metrics, "test_acc": teacher_metrics["test_acc"] - 0.25}
    archived_clp.write_text(json.dumps(record))

    out = tmp_path / "matrix"
    shutil.rmtree(out)  # a new machine
    again = run_matrix(tiny_matrix)
    assert [r["status"] for r in again] == ["complete", "complete"]
    assert [r["run"] for r in again] == [str(out / "teachers" / "digits-small_cnn-badnets-s0"),
                                         str(out / "defenses" / "digits-small_cnn-badnets-s0-clp")]
    assert [(r["C-Acc"], r["ASR"]) for r in again] == [(r["C-Acc"], r["ASR"]) for r in first]
    assert json.loads(archived_clp.read_text())["teacher_metrics"] == teacher_metrics  # replaced

    clp_record = out / "defenses" / "digits-small_cnn-badnets-s0-clp" / "record.json"
    record = json.loads(clp_record.read_text())
    record["teacher_metrics"] = {**teacher_metrics, "asr": 0.0}
    clp_record.write_text(json.dumps(record))
    stale = run_matrix(tiny_matrix)
    assert [r["status"] for r in stale] == ["complete", "stale"]
    assert "finished on another teacher" in stale[1]["error"] and "ASR 0.00" in stale[1]["error"]
    assert json.loads(clp_record.read_text())["teacher_metrics"]["asr"] == 0.0  # not overwritten


def test_an_unfinished_row_keeps_its_teachers_weights_in_the_archive(tiny_matrix, tmp_path):
    """A session that ends before a teacher's defense cells all finish leaves the teacher's weights
    in the archive: the next machine runs the rest on them without training it again, and the
    weights leave the archive once the row is complete, in a run asked to release them."""
    archive = tmp_path / "archive"
    tiny_matrix.archive = str(archive)
    first = run_matrix(tiny_matrix)  # FT's batch is larger than its clean set: that cell fails
    assert [r["status"] for r in first] == ["complete", "complete", "failed"]
    teacher = archive / "teachers" / "digits-small_cnn-badnets-s0"
    assert (teacher / "model").is_dir() and (teacher / "poisoned_indices.npy").is_file()

    out = tmp_path / "matrix"
    shutil.rmtree(out)  # a new machine
    tiny_matrix.defense_overrides.ft = dict(num_devices=1, aft=dict(batch_size=16, epochs=1))
    rest = run_matrix(tiny_matrix)
    assert [r["status"] for r in rest] == ["complete", "complete", "complete"]
    assert rest[0]["run"] == str(teacher) and not (out / "teachers").exists()  # not trained again
    # The row is complete, but only a run asked to (one over the whole row) releases the weights.
    assert (teacher / "model").is_dir()
    tiny_matrix.release_weights = True
    assert [r["status"] for r in run_matrix(tiny_matrix)] == ["complete", "complete", "complete"]
    assert [(r["C-Acc"], r["ASR"]) for r in rest[:2]] == [(r["C-Acc"], r["ASR"]) for r in first[:2]]
    ft = json.loads((out / "defenses" / "digits-small_cnn-badnets-s0-ft" / "record.json").read_text())
    assert ft["teacher_run"] == str(teacher) and ft["teacher_metrics"] == json.loads(
        (teacher / "record.json").read_text())["metrics"]
    assert sorted(p.name for p in teacher.iterdir()) == ["cell.json", "history.jsonl", "record.json",
                                                          "trigger.json", "trigger.npz"]  # row complete


def test_the_clean_model_of_an_unfinished_row_stays_in_the_archive_with_it(tiny_matrix, tmp_path):
    """LF's teacher is made with a clean model: while its row is unfinished both keep their
    weights in the archive, so neither trains again on the next machine; both drop them once the
    row is complete (in a run asked to release them)."""
    archive = tmp_path / "archive"
    tiny_matrix.archive = str(archive)
    tiny_matrix.attacks = ("lf",)
    # 10 trigger updates instead of LF's 200 (~9 s here): this test is about the archive, not the trigger
    tiny_matrix.attack_overrides = ml_collections.ConfigDict({"lf": dict(params=dict(lf=dict(steps=10)))})
    first = run_matrix(tiny_matrix)
    assert [r["status"] for r in first] == ["complete", "complete", "failed"]
    teachers = archive / "teachers"
    lf, clean = teachers / "digits-small_cnn-lf-s0", teachers / "digits-small_cnn-clean-s0"
    assert (lf / "model").is_dir() and (clean / "model").is_dir()

    out = tmp_path / "matrix"
    shutil.rmtree(out)
    tiny_matrix.defense_overrides.ft = dict(num_devices=1, aft=dict(batch_size=16, epochs=1))
    tiny_matrix.release_weights = True
    rest = run_matrix(tiny_matrix)
    assert [r["status"] for r in rest] == ["complete", "complete", "complete"]
    assert not (out / "teachers").exists()  # neither the clean model nor the teacher trained again
    assert not (lf / "model").exists() and not (clean / "model").exists()
    assert (lf / "record.json").is_file() and (clean / "record.json").is_file()


def test_unknown_matrix_entries_fail_before_running(tiny_matrix, tmp_path):
    tiny_matrix.defenses = ("clp", "nope")
    with pytest.raises(InputError, match="unknown defense 'nope'"):
        run_matrix(tiny_matrix)
    assert not (tmp_path / "matrix").exists()
    tiny_matrix.defenses = ("clp",)
    models = tiny_matrix.models
    tiny_matrix.models = (ml_collections.ConfigDict(dict(name="resnet_nope", width=1.0)),)
    with pytest.raises(InputError, match="unknown model 'resnet_nope'"):
        run_matrix(tiny_matrix)
    for entry, message in [("resnet_nope", "unknown model 'resnet_nope'"),  # a name, as on a command line
                           ({"nam": "small_cnn"}, "models entry {'nam': 'small_cnn'}; expected a model name or"),
                           ({"name": "small_cnn", "widht": 0.5}, r"unknown key\(s\) \['widht'\]"),
                           ({"name": "small_cnn", "width": "x"}, "model small_cnn width 'x'; expected a positive"),
                           ({"name": "small_cnn", "width": 0}, "model small_cnn width 0; expected a positive")]:
        tiny_matrix.models = (entry,)
        with pytest.raises(InputError, match=message):
            run_matrix(tiny_matrix)
    tiny_matrix.models = models
    attacks = tiny_matrix.attacks
    for entry, message in [("badnets:sideways", "mode 'sideways'; expected NAME or NAME:MODE with MODE one of"),
                           (":all_to_all", "expected an attack name, optionally with ':MODE'"),
                           ("sig:all_to_all", "sig is clean-label; it supports only mode 'all_to_one'"),
                           ("nope:all_to_all", "nope"),
                           ("wanet:per_batch", "wanet is already poisoned per batch"),
                           ("sig:per_batch", "sig is clean-label"),
                           ("badnets:per_batch:per_batch", "gives two poisonings"),
                           ("badnets:all_to_all:all_to_one", "gives two modes")]:
        tiny_matrix.attacks = ("badnets", entry)
        with pytest.raises(InputError, match=message):
            run_matrix(tiny_matrix)
    tiny_matrix.attacks = attacks
    variant = tiny_matrix.variant
    tiny_matrix.variant = "foo"
    with pytest.raises(InputError, match="defense clp: unknown CLP config variant 'foo'"):
        run_matrix(tiny_matrix)
    tiny_matrix.variant = variant
    seeds = tiny_matrix.seeds
    tiny_matrix.seeds = (0, -1)
    with pytest.raises(InputError, match="seed -1 in seeds"):
        run_matrix(tiny_matrix)
    tiny_matrix.seeds = seeds
    (tmp_path / "cells.txt").write_text("not a folder")
    tiny_matrix.archive = str(tmp_path / "cells.txt")
    with pytest.raises(InputError, match="is a file; expected a folder"):
        run_matrix(tiny_matrix)
    assert not (tmp_path / "matrix").exists()


def test_an_all_to_all_row_sits_beside_the_all_to_one_row_of_its_attack(tiny_matrix, tmp_path):
    # Before 'NAME:MODE' entries a matrix could not hold both: cells were named by the attack alone.
    from backdoor_core.rundir import read_record

    tiny_matrix.attacks = ("badnets", "badnets:all_to_all")
    tiny_matrix.defenses = ("clp",)
    tiny_matrix.attack_overrides = ml_collections.ConfigDict({"badnets-all_to_all": dict(poison_ratio=0.3)})
    rows = run_matrix(tiny_matrix)
    assert [(r["attack"], r["defense"], r["status"]) for r in rows] == [
        ("badnets", "none", "complete"), ("badnets", "clp", "complete"),
        ("badnets (all-to-all)", "none", "complete"), ("badnets (all-to-all)", "clp", "complete")]
    teachers = tmp_path / "matrix" / "teachers"
    one, every = teachers / "digits-small_cnn-badnets-s0", teachers / "digits-small_cnn-badnets-all_to_all-s0"
    assert sorted(p.name for p in teachers.iterdir()) == sorted([one.name, every.name])
    assert (tmp_path / "matrix" / "defenses" / f"{every.name}-clp").is_dir()
    assert [read_record(d)["attack"]["mode"] for d in (one, every)] == ["all_to_one", "all_to_all"]
    assert [read_record(d)["attack"]["poison_ratio"] for d in (one, every)] == [0.1, 0.3]  # the cell's own override
    # the all-to-all teacher's poisoned images come from every class, the all-to-one's from all but the target
    train_labels = np.load(tmp_path / "digits.npz")["y_train"]
    poisoned = {d: np.load(d / "poisoned_indices.npy") for d in (one, every)}
    assert 0 not in set(train_labels[poisoned[one]]) and 0 in set(train_labels[poisoned[every]])
    md = (tmp_path / "matrix" / "results.md").read_text()
    assert "| digits | small_cnn x0.5 | 0 | badnets (all-to-all) |" in md
    again = run_matrix(tiny_matrix)  # both rows' cells are reused, none mistaken for the other
    assert [r["C-Acc"] for r in again] == [r["C-Acc"] for r in rows] and len(read_cells(tmp_path / "matrix")) == 4
    # a mode set by an override would run under a name and label that say otherwise
    tiny_matrix.attacks = ("badnets",)
    tiny_matrix.attack_overrides = ml_collections.ConfigDict({"badnets": dict(mode="all_to_all")})
    rows = run_matrix(tiny_matrix)
    assert rows[0]["status"] == "failed" and "give the mode in the attacks entry instead ('badnets:all_to_all')" in rows[0]["error"]


def test_a_per_batch_row_sits_beside_the_default_row_of_its_attack(tiny_matrix, tmp_path):
    # 'NAME:per_batch': the official PBE code's teacher recipe (trigger pasted after augmentation)
    # beside BackdoorBench's, each in its own cell, labelled so in the tables.
    from backdoor_core.rundir import read_record

    tiny_matrix.attacks = ("badnets", "badnets:per_batch")
    tiny_matrix.defenses = ()
    rows = run_matrix(tiny_matrix)
    assert [(r["attack"], r["status"]) for r in rows] == [("badnets", "complete"), ("badnets (per-batch)", "complete")]
    teachers = tmp_path / "matrix" / "teachers"
    default, per_batch = teachers / "digits-small_cnn-badnets-s0", teachers / "digits-small_cnn-badnets-per_batch-s0"
    assert [read_record(d)["attack"]["poisoning"] for d in (default, per_batch)] == ["static", "per_batch"]
    assert (default / "poisoned_indices.npy").exists() and not (per_batch / "poisoned_indices.npy").exists()
    assert read_record(per_batch)["metrics"]["asr"] > 0.5  # a backdoor, not an untriggered run
    assert "| digits | small_cnn x0.5 | 0 | badnets (per-batch) |" in (tmp_path / "matrix" / "results.md").read_text()
    again = run_matrix(tiny_matrix)  # each reused, neither mistaken for the other
    assert [r["C-Acc"] for r in again] == [r["C-Acc"] for r in rows] and len(read_cells(tmp_path / "matrix")) == 2
    tiny_matrix.attacks = ("badnets",)
    tiny_matrix.attack_overrides = ml_collections.ConfigDict({"badnets": dict(poisoning="per_batch")})
    rows = run_matrix(tiny_matrix)
    assert rows[0]["status"] == "failed" and "give it in the attacks entry instead ('badnets:per_batch')" in rows[0]["error"]


def test_a_teachers_only_matrix_trains_teachers_that_another_machine_reuses(tiny_matrix, tmp_path):
    # defenses=() (experiments/scripts/gpu_teachers.sh on a lent GPU): the teachers alone; their
    # run directories, copied into another machine's matrix, are reused there by the defenses.
    tiny_matrix.defenses = ()
    tiny_matrix.out = str(tmp_path / "gpu")
    # the model as a plain dict, as --config.models="({'name': 'small_cnn', 'width': 0.5},)" gives it
    # (it failed with AttributeError: 'dict' object has no attribute 'name')
    assert [dict(m) for m in tiny_matrix.models] == [{"name": "small_cnn", "width": 0.5}]
    models = tiny_matrix.models
    tiny_matrix.models = ({"name": "small_cnn", "width": 0.5},)
    rows = run_matrix(tiny_matrix)
    tiny_matrix.models = models
    assert [(r["defense"], r["status"]) for r in rows] == [("none", "complete")]
    teacher = "digits-small_cnn-badnets-s0"
    assert not (tmp_path / "gpu" / "defenses").exists()
    shutil.copytree(tmp_path / "gpu" / "teachers" / teacher, tmp_path / "matrix" / "teachers" / teacher,
                    ignore=shutil.ignore_patterns("checkpoints"))
    tiny_matrix.defenses = ("clp",)
    tiny_matrix.out = str(tmp_path / "matrix")
    rows = run_matrix(tiny_matrix)
    assert [(r["defense"], r["status"]) for r in rows] == [("none", "complete"), ("clp", "complete")]
    assert rows[0]["seconds"] is None  # trained elsewhere: no wall time recorded by this matrix
    assert [c["run"].endswith("-clp") for c in read_cells(tmp_path / "matrix")] == [True]


def test_apply_overrides_names_the_unknown_key():
    cfg = ml_collections.ConfigDict({"train": {"epochs": 1}})
    assert apply_overrides(cfg, {"train": {"epochs": 4}}).train.epochs == 4
    with pytest.raises(InputError, match="'train.epocs'"):
        apply_overrides(cfg, {"train": {"epocs": 4}})


@pytest.mark.parametrize("name", ["matrix_quickstart", "matrix_cifar10_cpu", "matrix_gtsrb_cpu", "matrix_cifar10_paper",
                                  "matrix_gtsrb_paper"])
def test_shipped_matrix_configs_build_every_cell_config(name):
    import importlib

    from experiments.run import Matrix

    cfg = importlib.import_module(f"experiments.configs.{name}").get_config()
    matrix = Matrix.__new__(Matrix)  # only the config builders, no output directory
    matrix.cfg = cfg
    for dataset in cfg.datasets:
        for model in cfg.models:
            for attack in cfg.attacks:
                teacher = matrix.teacher_config(dataset, model.name, model.width, attack, 0, None)
                assert teacher.attack == attack and teacher.dataset == cfg.datasets[dataset].source
    assert [matrix.defense_config(d).defense for d in cfg.defenses] == [
        "dhbe" if d == "dfad" else d for d in cfg.defenses]


def test_cpu_matrix_shortens_iad_mask_pretraining_and_the_paper_matrix_does_not():
    """The CPU matrix's documented IAD deviation (1 mask pre-training epoch) reaches the teacher's
    attack settings, and so do its archived WaNet and IAD rows' augmentation orders; the paper
    matrix keeps the official 25 epochs and orders."""
    from experiments.configs import matrix_cifar10_cpu, matrix_cifar10_paper
    from experiments.run import Matrix

    epochs, order = {}, {}
    for module in (matrix_cifar10_cpu, matrix_cifar10_paper):
        matrix = Matrix.__new__(Matrix)
        matrix.cfg = module.get_config()
        name = module.__name__.rsplit(".", 1)[-1]
        teacher = matrix.teacher_config("cifar10", "preact_resnet18", 0.25, "iad", 0, None)
        epochs[name] = teacher.params.iad.mask_epochs
        order[name] = (matrix.teacher_config("cifar10", "preact_resnet18", 0.25, "wanet", 0,
                                             None).params.wanet.augment_after_warp, teacher.params.iad.augment_after_trigger,
                       teacher.params.iad.augment_mask_batches)
        badnets = matrix.teacher_config("cifar10", "preact_resnet18", 0.25, "badnets", 0, None)
        assert badnets.params.iad.mask_epochs == 25 and badnets.params.wanet.augment_after_warp
        assert not badnets.params.iad.augment_after_trigger and badnets.params.iad.augment_mask_batches
    assert epochs == {"matrix_cifar10_cpu": 1, "matrix_cifar10_paper": 25}
    assert order == {"matrix_cifar10_cpu": (False, True, False), "matrix_cifar10_paper": (True, False, True)}


def test_cell_seconds_sum_recorded_attempts_and_mark_missing_ones(tiny_matrix, tmp_path):
    out = tmp_path / "matrix"
    tiny_matrix.defenses = ("clp",)
    tiny_matrix.datasets.digits.overrides.stop_after_steps = 5  # a time-boxed session: the teacher stops
    first = run_matrix(tiny_matrix)
    assert [r["status"] for r in first] == ["stopped", "skipped"]
    # Make the recorded attempt's time unmistakable: the resumed attempt must add to it.
    cells = read_cells(out)
    cells[-1]["seconds"] = 10000.0
    (out / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    tiny_matrix.datasets.digits.overrides.stop_after_steps = 10
    second = run_matrix(tiny_matrix)
    assert second[0]["status"] == "stopped" and 10000.0 < second[0]["seconds"] < 10000.0 + 600
    assert not second[0]["time_incomplete"]

    (out / "cells.jsonl").unlink()  # the next attempt finds saved state but no record of how it got there
    del tiny_matrix.datasets.digits.overrides["stop_after_steps"]
    done = run_matrix(tiny_matrix)
    assert [r["status"] for r in done] == ["complete", "complete"]
    assert done[0]["time_incomplete"] and done[0]["seconds"] < 10000.0 and not done[1]["time_incomplete"]
    teacher_line = next(line for line in (out / "results.md").read_text().splitlines() if "| none |" in line)
    assert f"| {done[0]['seconds']}+ |" in teacher_line
    assert run_matrix(tiny_matrix)[0]["time_incomplete"]  # reused: the mark stays with the cell


def test_a_stop_request_lets_the_cell_in_flight_save_and_starts_no_other(tiny_matrix, tmp_path, monkeypatch):
    """Ctrl-C / SIGTERM during the teacher cell (which checkpoints and stops, backdoor_core.fit):
    the defense cells are not started, the tables still get one row per cell."""
    tiny_matrix.defenses = ("clp",)
    asked = iter(range(1000))
    monkeypatch.setattr("experiments.run.stop_requested", lambda: "SIGINT" if next(asked) >= 1 else None)
    rows = run_matrix(tiny_matrix)
    assert [r["status"] for r in rows] == ["complete", "not run"]
    assert "SIGINT" in rows[1]["error"] and not (tmp_path / "matrix" / "defenses").exists()
    with (tmp_path / "matrix" / "results.csv").open() as f:
        table = [(r["defense"], r["status"]) for r in csv.DictReader(f)]
    assert table == [("none", "complete"), ("clp", "not run")]
    md = (tmp_path / "matrix" / "results.md").read_text()
    assert md.count("| digits |") == 2 + 2 and "| not run: " in md  # 2 cells, 1 row in each grid


def _lock_for(out, run_dir, host, pid):
    path = lock_path(out, run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid}))
    return path


def test_a_cell_another_live_process_holds_is_busy_and_its_dependants_wait(tiny_matrix, tmp_path):
    """Two matrix processes on one `out`: a teacher another process is training is not started
    again here, and its defense cells are skipped; the holder's lock is left in place."""
    out = tmp_path / "matrix"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _lock_for(out, out / "teachers" / "digits-small_cnn-badnets-s0", socket.gethostname(), other.pid)
        rows = run_matrix(tiny_matrix)
    finally:
        other.kill()
        other.wait()
    assert [r["status"] for r in rows] == ["busy", "skipped", "skipped"]
    assert f"pid {other.pid}" in rows[0]["error"] and lock.is_file()
    assert not (out / "teachers" / "digits-small_cnn-badnets-s0").exists() and not (out / CELLS).exists()
    assert "| busy |" in (out / "results.md").read_text()


@pytest.mark.parametrize("holder", ["dead", "none", "raises"])
def test_a_cell_lock_is_taken_over_from_a_dead_holder_and_always_released(tmp_path, holder):
    out = tmp_path / "out"
    run_dir = out / "defenses" / "t-clp"
    if holder == "dead":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()  # its pid is free now
        _lock_for(out, run_dir, socket.gethostname(), gone.pid)
    matrix = Matrix(ml_collections.ConfigDict(dict(out=str(out), archive="", reuse_only=False)))
    calls = []

    def fn():
        calls.append(json.loads(lock_path(out, run_dir).read_text())["pid"])
        if holder == "raises":
            raise RuntimeError("boom")

    row = matrix.cell(run_dir, fn)
    assert calls == [os.getpid()]  # ran once, holding the lock itself
    assert row["status"] == ("failed" if holder == "raises" else "stopped")
    assert not lock_path(out, run_dir).exists()


def test_a_lock_from_another_host_is_respected(tmp_path):
    out = tmp_path / "out"
    path = _lock_for(out, out / "teachers" / "t", "some-other-host", os.getpid())
    assert try_lock(path) == {"host": "some-other-host", "pid": os.getpid()}
    unlock(path)  # not ours: left alone
    assert path.is_file()


def test_curve_points_pick_each_kind_of_history():
    teacher = [{"epoch": 1, "step": 19, "test_acc": 0.5, "asr": 0.2}, {"epoch": 2, "step": 38, "test_acc": 0.7,
                                                                       "asr": 0.9}]
    label, x, cacc, asr = curve_points(teacher)
    assert label == "epoch" and x.tolist() == [1, 2] and cacc.tolist() == [50, 70] and asr.tolist() == [20, 90]
    pbe = [{"event": "start", "rounds_done": 0, "step": 0, "test_acc": 0.9, "asr": 1.0},
           {"event": "round", "rounds_done": 1, "step": 18, "test_acc": 0.8, "asr": 0.5}]
    assert curve_points(pbe)[0] == "PBE rounds done" and curve_points(pbe)[1].tolist() == [0, 1]
    dhbe = [{"step": 0, "loss_G": 1.0}, {"step": 10, "D": 0.3}, {"step": 50, "test_acc": 0.8, "asr": 0.1}]
    label, x, _, asr = curve_points(dhbe)  # only rows with both metrics count
    assert label == "iteration / step" and x.tolist() == [50] and asr.tolist() == [10]
    assert curve_points([{"step": 1, "loss": 0.2}]) is None
    averaged = [{"step": 50, "test_acc": 0.7, "asr": 0.3},  # before averaging: the student is the result
                {"step": 100, "test_acc": 0.72, "asr": 0.2, "average_test_acc": 0.75, "average_asr": 0.1}]
    _, x, cacc, asr = curve_points(averaged)
    assert x.tolist() == [50, 100] and cacc.tolist() == [70, 75] and asr.tolist() == [30, 10]


def test_trigger_gallery_changes_only_what_the_trigger_changes(badnets_run, mnist_subset, tmp_path):
    clean, triggered = gallery_images(badnets_run, mnist_subset[1], 4)
    assert clean.shape == triggered.shape == (4, 28, 28, 1)
    changed = np.argwhere((clean != triggered).any(axis=0))  # pixels any image has changed
    # exactly BadNets' 3x3 patch, bottom right (MNIST's corners are black, so all 9 change)
    assert {(r, c) for r, c, _ in changed} == {(r, c) for r in range(25, 28) for c in range(25, 28)}
    rows = [{"dataset": "d", "model": "m", "seed": 0, "attack": "badnets", "defense": "none", "status": "complete",
             "run": str(badnets_run)},
            {"dataset": "d", "model": "m", "seed": 0, "attack": "blended", "defense": "none", "status": "complete",
             "run": str(tmp_path / "absent")}]
    warnings = []
    assert plot_trigger_gallery(tmp_path / "g.png", rows, warn=warnings.append)
    assert (tmp_path / "g.png").is_file() and len(warnings) == 1 and "absent left out" in warnings[0]


def test_defense_curves_start_from_their_teacher(tmp_path):
    histories = {"t": [{"epoch": 1, "test_acc": 0.6, "asr": 0.5}, {"epoch": 2, "test_acc": 0.8, "asr": 0.9}],
                 "dhbe": [{"step": 50, "test_acc": 0.7, "asr": 0.1}],
                 "pbe": [{"rounds_done": 0, "step": 0, "test_acc": 0.8, "asr": 0.9},
                         {"rounds_done": 1, "step": 9, "test_acc": 0.75, "asr": 0.2}]}
    rows = []
    for name, history in histories.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        rows.append({"dataset": "d", "model": "m", "seed": 0, "attack": "badnets",
                     "defense": "none" if name == "t" else name, "status": "complete", "run": str(tmp_path / name)})
    rows.append({**rows[1], "defense": "clp", "status": "failed", "run": str(tmp_path / "absent")})
    curves = cell_curves(rows)
    assert sorted(k[4] for k in curves) == ["dhbe", "none", "pbe"]  # the failed cell has none
    _, x, cacc, asr = curves[("d", "m", 0, "badnets", "dhbe")]
    assert x.tolist() == [0, 50] and cacc.tolist() == [80, 70] and asr.tolist() == [90, 10]
    assert curves[("d", "m", 0, "badnets", "pbe")][1].tolist() == [0, 1]  # has its own start row


def test_summary_over_seeds_counts_finished_seeds_only():
    from experiments.summary import summarize_over_seeds, summary_markdown

    def row(seed, defense, status, acc, asr, der="-", seconds=10.0):
        return {"dataset": "d", "model": "m x1", "seed": seed, "attack": "badnets", "defense": defense,
                "status": status, "C-Acc": acc, "ASR": asr, "ASR*": "-", "RA": "-", "DER": der, "seconds": seconds}

    rows = [row(0, "none", "complete", "84.0", "96.0"), row(0, "dhbe", "complete", "80.0", "8.0", "0.900", 30.0),
            row(1, "none", "complete", "83.0", "98.0"), row(1, "dhbe", "complete", "78.0", "4.0", "0.940", 50.0),
            row(2, "none", "complete", "85.0", "94.0"), row(2, "dhbe", "failed", "-", "-", seconds=None)]
    teacher, dhbe = summarize_over_seeds(rows)
    assert (teacher["defense"], teacher["seeds"], dhbe["seeds"]) == ("none", "3/3", "2/3")
    assert teacher["C-Acc mean"] == pytest.approx(84.0) and teacher["C-Acc std"] == pytest.approx(1.0)
    assert dhbe["ASR mean"] == pytest.approx(6.0) and dhbe["ASR std"] == pytest.approx(np.std([8, 4], ddof=1))
    assert dhbe["DER mean"] == pytest.approx(0.92) and dhbe["seconds mean"] == pytest.approx(40.0)
    assert teacher["DER mean"] is None and dhbe["RA mean"] is None
    md = summary_markdown([teacher, dhbe])
    assert "| d | m x1 | badnets | dhbe | 2/3 | 79.0 +- 1.4 | 6.0 +- 2.8 | - | - | 0.920 +- 0.028 | 40 +- 14 |" in md
    one = summarize_over_seeds(rows[:2])
    assert one[1]["C-Acc std"] is None and "| 80.0 | 8.0 |" in summary_markdown(one)


def test_grid_has_one_row_per_teacher_and_one_column_per_defense():
    from experiments.summary import grid_markdown, time_grid_markdown

    def row(attack, defense, status, acc="-", asr="-"):
        return {"dataset": "d", "model": "m x1", "seed": 0, "attack": attack, "defense": defense, "status": status,
                "C-Acc": acc, "ASR": asr}

    rows = [row("badnets", "none", "complete", "84.0", "96.0"), row("badnets", "dhbe", "complete", "77.3", "8.1"),
            row("badnets", "clp", "stale"), row("sig", "none", "complete", "83.9", "81.4"),
            row("sig", "pbe", "not run"), row("sig", "clp", "complete", "83.9", "81.4")]
    table = [line for line in grid_markdown(rows).splitlines() if line.startswith("|")]
    assert table[0] == "| dataset | model | seed | attack | none | dhbe | clp | pbe |"
    assert table[2:] == ["| d | m x1 | 0 | badnets | 84.0 / 96.0 | 77.3 / 8.1 | stale | - |",
                         "| d | m x1 | 0 | sig | 83.9 / 81.4 | - | 83.9 / 81.4 | - |"]
    rows[0]["seconds"] = 8203.3
    rows[1].update(seconds=2728.3, time_incomplete=True)  # a resumed cell: its time is a lower bound
    rows[5]["seconds"] = None  # finished, its time not recorded
    rows[2].update(status="complete", seconds=1.2)  # CLP in a second
    times = time_grid_markdown(rows)
    assert times.startswith("## Wall time")
    assert [line for line in times.splitlines() if line.startswith("|")][2:] == [
        "| d | m x1 | 0 | badnets | 136.7 | 45.5+ | <0.1 | - |", "| d | m x1 | 0 | sig | - | - | - | - |"]


def test_before_after_bars_put_each_finished_cell_in_its_teachers_panel(tmp_path):
    def row(attack, defense, status, acc="-", asr="-"):
        return {"dataset": "d", "model": "m x1", "seed": 0, "attack": attack, "defense": defense, "status": status,
                "C-Acc": acc, "ASR": asr}

    rows = [row("badnets", "none", "complete", "84.0", "96.0"), row("badnets", "dhbe", "complete", "77.3", "8.1"),
            row("badnets", "clp", "failed"), row("sig", "none", "not run"), row("sig", "clp", "complete", "83.9", "81.4")]
    groups, defenses, cacc, asr = before_after(rows)
    assert [g[3] for g in groups] == ["badnets", "sig"] and defenses == ["none", "dhbe", "clp"]
    np.testing.assert_array_equal(cacc, [[84.0, 77.3, np.nan], [np.nan, np.nan, 83.9]])
    np.testing.assert_array_equal(asr, [[96.0, 8.1, np.nan], [np.nan, np.nan, 81.4]])
    assert plot_before_after(tmp_path / "bars.png", rows) and (tmp_path / "bars.png").stat().st_size > 0
    assert not plot_before_after(tmp_path / "none.png", [row("sig", "none", "failed")])
    assert not (tmp_path / "none.png").exists()


def test_matrix_with_two_seeds_writes_the_seed_summary(tiny_matrix, tmp_path):
    out = tmp_path / "matrix"
    tiny_matrix.defenses = ("clp",)
    tiny_matrix.seeds = (0, 1)
    rows = run_matrix(tiny_matrix)
    assert [(r["seed"], r["defense"], r["status"]) for r in rows] == [
        (0, "none", "complete"), (0, "clp", "complete"), (1, "none", "complete"), (1, "clp", "complete")]
    assert rows[0]["C-Acc"] != rows[2]["C-Acc"] or rows[0]["ASR"] != rows[2]["ASR"]  # two different teachers
    with (out / "results_seeds.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert [(s["defense"], s["seeds"]) for s in summary] == [("none", "2/2"), ("clp", "2/2")]
    accs = [float(r["C-Acc"]) for r in rows if r["defense"] == "clp"]
    assert float(summary[1]["C-Acc mean"]) == pytest.approx(np.mean(accs))
    assert float(summary[1]["C-Acc std"]) == pytest.approx(np.std(accs, ddof=1))
    assert "| digits | small_cnn x0.5 | badnets | clp | 2/2 |" in (out / "results_seeds.md").read_text()


@pytest.mark.parametrize("defense,seeded", [("dhbe", {"seed"}), ("pbe", {"pbe.seed"}),
                                            ("aft", {"aft.seed", "clean_seed"}), ("ft", {"aft.seed", "clean_seed"}),
                                            ("clp", set())])
def test_the_matrix_seed_reaches_each_defense_own_seeds(defense, seeded):
    from experiments.run import load_config, seed_defense

    def flat(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    base = flat(load_config(f"experiments.configs.erase_{defense}", "cpu").to_dict())
    assert flat(seed_defense(load_config(f"experiments.configs.erase_{defense}", "cpu"), 0).to_dict()) == base
    three = flat(seed_defense(load_config(f"experiments.configs.erase_{defense}", "cpu"), 3).to_dict())
    assert {k for k in base if three[k] != base[k]} == seeded and all(three[k] == 3 for k in seeded)


def test_defense_variants_pick_a_variant_per_defense():
    from experiments.run import Matrix

    matrix = Matrix.__new__(Matrix)  # only the config builders
    matrix.cfg = matrix_quickstart.get_config()
    pbe, dhbe = matrix.defense_config("pbe"), matrix.defense_config("dhbe")
    assert (pbe.variant, dhbe.variant) == ("cpu", "smoke")
    assert pbe.pbe.first_round_epochs == 10 and pbe.pbe.epochs_per_round == 4  # the cpu variant's
    assert pbe.pgd.eps == pytest.approx(32 / 255) and dhbe.dhbe.iterations == 100  # the matrix's overrides
    del matrix.cfg["defense_variants"]  # configs without the field: every defense takes `variant`
    assert matrix.defense_config("pbe").variant == "smoke"


def test_a_cell_failing_on_bad_input_reports_one_line_and_a_bug_its_traceback(tiny_matrix, tmp_path, capsys):
    # Every failing cell printed a traceback, a missing dataset file included.
    matrix = Matrix(tiny_matrix)

    def bad_input():
        raise InputError("dataset file data/x.npz does not exist")

    def bug():
        raise ZeroDivisionError("a bug")

    assert matrix.run_cell(tmp_path / "a", bad_input)["error"] == "InputError: dataset file data/x.npz does not exist"
    out = capsys.readouterr().out
    assert f"cell failed: {tmp_path / 'a'}: dataset file data/x.npz does not exist" in out and "Traceback" not in out
    assert matrix.run_cell(tmp_path / "b", bug)["status"] == "failed"
    assert "Traceback" in capsys.readouterr().out
