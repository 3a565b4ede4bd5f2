"""PBE / AFT / detection: selection, PGD inside the step, resume, sharding, detection, bad input."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attacks.backdoor import POISONED_INDICES, load_attack, train_backdoor
from attacks.base import AttackConfig
from attacks.pgd import PGDConfig, model_logits_fn, pgd
from backdoor_core import rundir
from backdoor_core.augment import post_tensor_transform, to_float
from backdoor_core.checkpoint import TrainCheckpoints
from backdoor_core.errors import InputError
from backdoor_core.models import spec_for_data
from backdoor_core.sharding import make_mesh, replicate, shard_batch
from backdoor_core.train import TrainConfig, create_train_state
from pbe_jax.pbe import EPOCH_CHECKPOINTS
from pbe_jax import (AFTConfig, AugmentConfig, DetectConfig, PBEConfig, aft, clean_subset, consistency_scores, detect,
                     make_trainer, pbe, pbe_augment, rotate, select_clean_subset)
from backdoor_core.train import sgd_update
from conftest import built_once, jit_once

# One fine-tuning setting for every test, so each mesh compiles the step once.
TINY = dict(batch_size=32, pgd=PGDConfig(eps=0.1, alpha=0.03, steps=2), augment=AugmentConfig(hflip=False))
PBE_TINY = PBEConfig(initial_fraction=0.1, keep_fractions=(0.3,), epochs_per_round=1, later_adversarial_batches=1, **TINY)
# A larger budget than PBE's 6/255: MNIST digits are far apart in pixel space.
BLENDED = AttackConfig(name="blended", target=0, poison_ratio=0.1)
DETECT = DetectConfig(pgd=PGDConfig(eps=0.1, alpha=0.03, steps=5), num_images=120, batch_size=120)


def pbe_digits(mnist_subset):
    """(train 3000, test 500) random digits of the shipped subset."""
    train, test = mnist_subset
    rng = np.random.default_rng(0)
    return train.subset(rng.permutation(len(train))[:3000]), test.subset(rng.permutation(len(test))[:500])


@pytest.fixture(scope="module")
def data(mnist_subset):
    """`pbe_digits`: the digits `blended_run` was trained and evaluated on."""
    return pbe_digits(mnist_subset)


@pytest.fixture(scope="session")
def blended_run(tmp_path_factory, mnist_subset):
    """The run directory of a Blended (alpha 0.2, noise) small_cnn 0.5, target 0, 2 epochs on
    `data`, trained once per test session (both xdist workers read it; each had trained its own,
    ~22 s). Blended rather than BadNets: a 3x3 white patch on MNIST's black corner is out of reach
    of a small L-inf ball, and adversarial examples of such a model do not pile into the target
    (measured: top share 0.18-0.22 at eps 0.3-0.5, as for a clean model)."""
    def build(root):
        train, test = pbe_digits(mnist_subset)
        config = TrainConfig(epochs=2, batch_size=64, learning_rate=0.05, crop_padding=0, hflip=False)
        return train_backdoor(BLENDED, "small_cnn", 0.5, train, test, config, root / "blended", mesh=make_mesh(1),
                              progress=False).run_dir

    return built_once(tmp_path_factory, "pbe_blended", build)


@pytest.fixture(scope="module")
def backdoored(blended_run):
    """(module, variables, poisoned indices, last history row) of `blended_run`, as saved."""
    _, module, variables = rundir.load_model(blended_run)
    return module, variables, np.load(blended_run / POISONED_INDICES), rundir.read_history(blended_run)[-1]


@pytest.mark.parametrize("mode", ["all_to_all", "all_to_one"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_random_start_is_independent_of_the_attacks_draw(mode, seed):
    # PBE's defender draws its 5% start at random; at the attack's seed it must not draw the attack's
    # poisoned images. Seeded alike, the all-to-all start was the first half of the poisoned set
    # (share 1.0 instead of ~0.1, on CIFAR-10 and here).
    from attacks.poison import select_poison_indices
    from pbe_jax.selection import random_subset

    labels = np.arange(50_000) % 10
    poisoned = select_poison_indices(labels, AttackConfig("badnets", mode=mode, poison_ratio=0.1, seed=seed),
                                     clean_label=False)
    start = random_subset(len(labels), 0.05, seed)
    assert len(start) == 2500 and abs(np.isin(start, poisoned).mean() - 0.1) < 0.02


def test_selection_ranks_a_constructed_case():
    z0 = np.array([[3.0, 0, 0], [0, 2, 0], [0, 0, 1], [1, 1, 0], [2, 0, 0], [0, 5, 0]])
    zt = np.array([[6.0, 0, 0], [0, 2, 0.1], [0, 0, -1], [1, -1, 0], [0, 2, 0], [0, 4, 1]])
    scores = consistency_scores(z0, zt)
    assert scores[0] == pytest.approx(1.0) and scores[2] == pytest.approx(0.0)
    assert scores[3] == pytest.approx(0.5) and scores[4] == pytest.approx(0.5)
    # Unmoved directions rank first, a reversed one last; ties (3, 4) break by index.
    assert select_clean_subset(scores, 0.5).tolist() == [0, 1, 5]
    assert select_clean_subset(scores, 4 / 6).tolist() == [0, 1, 3, 5]
    assert select_clean_subset(scores, 1.0).tolist() == list(range(6))


def test_rotation_and_augmentation():
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))
    # One compiled program each: op by op, rotate's many small ops took ~20 s to compile here.
    rotated = jit_once(lambda x, angles: rotate(x, angles))
    np.testing.assert_allclose(rotated(x, jnp.zeros(2)), x, atol=1e-6)
    quarter = rotated(x, jnp.full(2, np.pi / 2))
    np.testing.assert_allclose(quarter, jnp.rot90(x, 1, axes=(1, 2)), atol=1e-5)  # image-coordinates convention
    official, per_image, reference = jit_once(lambda k, x: (
        pbe_augment(k, x, AugmentConfig(hflip=True)), pbe_augment(k, x, AugmentConfig(hflip=True, per_batch=False)),
        post_tensor_transform(k, x, padding=5, crop_prob=0.8, degrees=10.0, rotation_prob=0.5, hflip=True)))(
        jax.random.PRNGKey(1), x)
    for out in (official, per_image):
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        assert not np.allclose(out, x)
    # the official code's PostTensorTransform (crop and rotation chosen per batch: its statistics
    # are tested in test_augment.py); per_batch=False draws them per image
    np.testing.assert_array_equal(official, reference)
    assert not np.allclose(official, per_image)


def test_pgd_inside_the_step_matches_standalone(data, backdoored, mesh1):
    model, variables, _, _ = backdoored
    config = PBEConfig(**TINY)
    trainer = make_trainer(model, config, mesh1)
    state = replicate(mesh1, create_train_state(variables, trainer.tx, seed=3))
    images, labels = shard_batch(mesh1, data[0].images[:32], data[0].labels[:32])
    next_key, key = jax.random.split(state.key)
    aug_key, pgd_key = jax.random.split(key)
    augmented = pbe_augment(aug_key, to_float(images), config.augment)
    expected = jit_once(lambda v, x, y: pgd(model_logits_fn(model, v), x, y, pgd_key, config.pgd))(variables, augmented, labels)
    got = trainer.inputs(state, images, labels, True)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # separately compiled: rounding only
    np.testing.assert_allclose(trainer.inputs(state, images, labels, False), augmented, atol=1e-5)
    assert float(jnp.abs(got - augmented).max()) > 0.05  # the attack moved the batch

    copy = lambda s: jax.tree.map(jnp.copy, s)  # noqa: E731 (the step donates its state)
    update = jit_once(lambda s, x, y: sgd_update(model, trainer.tx, s, x, y))
    stepped, _ = trainer.step(copy(state), images, labels, True)
    reference, _ = update(copy(state).replace(key=next_key), expected, labels)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), stepped.params, reference.params)
    plain, _ = trainer.step(copy(state), images, labels, False)
    reference, _ = update(copy(state).replace(key=next_key), augmented, labels)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), plain.params, reference.params)
    trainer.step(copy(state), images, labels, True)
    assert trainer.step._cache_size() == 2  # one program per kind of step, no retracing


def test_pbe_resumes_equal_and_shards(data, backdoored, mesh1, mesh4, tmp_path):
    train = data[0].subset(np.arange(640))
    model, variables, poisoned, _ = backdoored
    truth = poisoned[poisoned < 640]
    full, history = pbe(model, variables, train, PBE_TINY, mesh=mesh1, run_dir=tmp_path / "a", ground_truth=truth,
                        eval_fn=lambda v: {"marker": 1.0}, progress=False)
    rounds = [r for r in history if r["event"] == "round"]
    assert [r["subset_size"] for r in rounds] == [64, 192]
    assert rounds[0]["adversarial_batches"] == 2 and rounds[1]["adversarial_batches"] == 1
    assert {"subset_poison_share", "next_subset_poison_share", "marker"} <= set(rounds[0])

    _, partial = pbe(model, variables, train, PBE_TINY, mesh=mesh1, run_dir=tmp_path / "b", stop_after_rounds=1,
                     progress=False)
    assert [r["rounds_done"] for r in partial if r["event"] == "round"] == [1]
    resumed, history_b = pbe(model, variables, train, PBE_TINY, mesh=mesh1, run_dir=tmp_path / "b", progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed, full)
    assert [r["event"] for r in history_b] == ["start", "epoch", "round", "epoch", "round"]

    sharded, history4 = pbe(model, variables, train, PBE_TINY, mesh=mesh4, ground_truth=truth, progress=False)
    assert [r["subset_size"] for r in history4 if r["event"] == "round"] == [64, 192]
    assert [r.get("subset_poisoned") for r in history4 if r["event"] == "round"] == [r["subset_poisoned"] for r in rounds]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), sharded, full)


def test_aft_erases_a_blended_backdoor_that_plain_fine_tuning_keeps(data, backdoored, blended_run, mesh1):
    """A purified model's ASR is low: AFT (official lr 1e-3, 3 adversarial epochs of 5) on 300
    clean digits takes the Blended teacher's ASR from ~100% to a few percent at a few points of
    C-Acc, while the same fine-tuning without adversarial epochs (FT) keeps the backdoor
    (measured: AFT 0.7% ASR / 92.4% C-Acc, FT 100% / 93.4%, teacher 100% / 95.2%)."""
    from attacks.backdoor import backdoor_metrics
    from attacks.poison import triggered_test_set

    model, variables, poisoned, teacher = backdoored
    train, test = data
    clean = train.subset(np.setdiff1d(np.arange(len(train)), poisoned)[:300])
    triggered = triggered_test_set(test, BLENDED, load_attack(blended_run)[1])
    assert teacher["asr"] > 0.9
    results = {}
    for name, adversarial in (("aft", 3), ("ft", 0)):
        config = AFTConfig(epochs=5, adversarial_epochs=adversarial, batch_size=32,
                           pgd=PGDConfig(eps=0.1, alpha=0.025, steps=5), augment=AugmentConfig(hflip=False))
        purified, _ = aft(model, variables, clean, config, mesh=mesh1, progress=False)
        results[name] = backdoor_metrics(model, purified, test, triggered, mesh1)
    assert results["aft"]["asr"] < 0.1 and results["aft"]["test_acc"] > teacher["test_acc"] - 0.08
    assert results["ft"]["asr"] > 0.8  # the adversarial epochs, not the fine-tuning, erase it


def test_aft_schedule(data, backdoored, mesh1):
    model, variables, _, _ = backdoored
    config = AFTConfig(epochs=2, adversarial_epochs=1, **TINY)
    _, history = aft(model, variables, data[1].subset(np.arange(96)), config, mesh=mesh1,
                     eval_fn=lambda v: {"marker": 1.0}, progress=False)
    epochs = [r for r in history if r["event"] == "epoch"]
    assert [r["adversarial_batches"] for r in epochs] == [3, 0] and all("marker" in r for r in epochs)


def test_stop_request_ends_pbe_and_aft_at_their_checkpoints(data, backdoored, mesh1, tmp_path, monkeypatch):
    """A Ctrl-C / SIGTERM under the CLI: PBE and AFT stop after the epoch in flight, each with its
    checkpoint, and resumed equal uninterrupted runs (PBE from the middle of a round)."""
    model, variables, _, _ = backdoored
    train = data[0].subset(np.arange(640))
    # pbe_jax.pbe and pbe_jax.aft name both modules and the functions the package exports
    pbe_module, aft_module = importlib.import_module("pbe_jax.pbe"), importlib.import_module("pbe_jax.aft")
    monkeypatch.setattr(pbe_module, "stop_requested", lambda: "SIGTERM")
    _, history = pbe(model, variables, train, PBE_TINY, mesh=mesh1, run_dir=tmp_path / "pbe", progress=False)
    assert [r["rounds_done"] for r in history if r["event"] == "round"] == [1]
    assert TrainCheckpoints(tmp_path / "pbe" / "checkpoints").latest_step() == 1

    # Rounds of two epochs: a stop after the first epoch of round 1 (the third epoch) ends the run
    # mid-round; the re-run resumes after that epoch and ends equal to an uninterrupted run.
    two = dataclasses.replace(PBE_TINY, epochs_per_round=2)
    monkeypatch.setattr(pbe_module, "stop_requested", lambda: None)
    whole, whole_history = pbe(model, variables, train, two, mesh=mesh1, run_dir=tmp_path / "whole", progress=False)
    calls = iter(range(100))
    monkeypatch.setattr(pbe_module, "stop_requested", lambda: "SIGTERM" if next(calls) == 3 else None)  # after epochs 1, 2, round 0, epoch 3
    _, history = pbe(model, variables, train, two, mesh=mesh1, run_dir=tmp_path / "mid", progress=False)
    assert [(r["event"], r.get("epoch")) for r in history] == [("start", None), ("epoch", 1), ("epoch", 2),
                                                               ("round", None), ("epoch", 3)]
    assert TrainCheckpoints(tmp_path / "mid" / "checkpoints").latest_step() == 1
    assert TrainCheckpoints(tmp_path / "mid" / EPOCH_CHECKPOINTS).latest_step() == 3
    monkeypatch.setattr(pbe_module, "stop_requested", lambda: None)
    resumed, history = pbe(model, variables, train, two, mesh=mesh1, run_dir=tmp_path / "mid", progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed, whole)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]
    assert strip(history) == strip(whole_history)  # round 1's row counts the epoch run before the stop

    clean, config = data[1].subset(np.arange(96)), AFTConfig(epochs=2, adversarial_epochs=1, **TINY)
    full, _ = aft(model, variables, clean, config, mesh=mesh1, progress=False)
    monkeypatch.setattr(aft_module, "stop_requested", lambda: "SIGTERM")
    _, history = aft(model, variables, clean, config, mesh=mesh1, run_dir=tmp_path / "aft", progress=False)
    assert [r["epoch"] for r in history if r["event"] == "epoch"] == [1]
    monkeypatch.setattr(aft_module, "stop_requested", lambda: None)
    resumed, history = aft(model, variables, clean, config, mesh=mesh1, run_dir=tmp_path / "aft", progress=False)
    assert [r["epoch"] for r in history if r["event"] == "epoch"] == [1, 2]
    jax.tree.map(np.testing.assert_array_equal, resumed, full)


def test_detection_finds_the_target(data, backdoored, clean_digits_fit, mesh1):
    train, test = data
    model, variables, _, metrics = backdoored
    assert metrics["asr"] > 0.9
    backdoored = detect(model, variables, test.images, DETECT, mesh=mesh1)
    # The session's clean model (conftest): the same architecture trained on the same 3,000 digits.
    clean, clean_spec, _ = clean_digits_fit
    assert clean_spec == spec_for_data("small_cnn", train.images, train.num_classes, 0.5)
    honest = detect(model, clean.variables, test.images, DETECT, mesh=mesh1)
    assert backdoored.suspected_target == 0
    assert backdoored.concentration > honest.concentration + 0.2
    assert backdoored.counts.sum() <= backdoored.num_images == 120
    # The unattacked images' predictions: most are right on digits, so every class shows up.
    assert backdoored.input_counts.sum() == 120 and (backdoored.input_counts > 0).all()


def test_bad_input_is_one_clear_error(data, backdoored, mesh1):
    with pytest.raises(InputError, match="do not increase"):
        PBEConfig(keep_fractions=(0.5, 0.2)).validate()
    with pytest.raises(InputError, match=r"expected each in \(0, 1\]"):
        PBEConfig(keep_fractions=(0.2, 1.5)).validate()
    with pytest.raises(InputError, match="fewer than one batch"):
        PBEConfig(initial_fraction=0.001).validate(1000)
    with pytest.raises(InputError, match="is empty"):
        select_clean_subset(np.ones(10), 0.01)
    with pytest.raises(InputError, match="adversarial_epochs"):
        AFTConfig(epochs=2, adversarial_epochs=3).validate()
    for config in (PBEConfig(seed=-3), AFTConfig(seed=-3), DetectConfig(seed=-3)):
        with pytest.raises(InputError, match="seed = -3; expected a non-negative integer"):
            config.validate()
    with pytest.raises(InputError, match="clean-set seed -3"):
        clean_subset(data[0], 0.1, -3)
    model, variables, _, _ = backdoored
    with pytest.raises(InputError, match="fewer than one batch"):
        pbe(model, variables, data[0].subset(np.arange(100)), PBE_TINY, mesh=mesh1, progress=False)
    with pytest.raises(InputError, match="ground_truth"):
        pbe(model, variables, data[0].subset(np.arange(640)), PBE_TINY, mesh=mesh1, ground_truth=np.array([700]))
    with pytest.raises(InputError, match="PGD config"):
        dataclasses.replace(PBE_TINY, pgd=PGDConfig(eps=-1, alpha=0.1, steps=1)).validate()


def test_the_clean_model_of_a_moved_attack_run_is_found_beside_it(tmp_path):
    """LC's poisoned set is rebuilt with the clean model its record names; runs moved to another
    folder (a matrix's teachers copied between machines) find it beside them, else one clear error."""
    from experiments.defenses.pbe import clean_run_dir

    teachers = tmp_path / "teachers"
    (teachers / "cifar10-m-clean-s0").mkdir(parents=True)
    run = teachers / "cifar10-m-lc-s0"
    assert clean_run_dir(run, {"clean_run": "/elsewhere/runs/cifar10-m-clean-s0"}) == teachers / "cifar10-m-clean-s0"
    assert clean_run_dir(run, {"clean_run": str(teachers / "cifar10-m-clean-s0")}) == teachers / "cifar10-m-clean-s0"
    with pytest.raises(InputError, match="neither at /elsewhere/cifar10-m-clean-s1"):
        clean_run_dir(run, {"clean_run": "/elsewhere/cifar10-m-clean-s1"})
    with pytest.raises(InputError, match="names no clean_run"):
        clean_run_dir(run, {})


def test_an_lc_teachers_poisoned_set_is_rebuilt_with_its_clean_model(tmp_path, mnist_subset, clean_digits_fit):
    """PBE's defender holds LC's poisoned training set: it is rebuilt (PGD-hardened target images
    plus corners) with the clean model the record names, equal to the attack's own; a record whose
    clean model is missing gives one clear error. (The matrix's LC PBE cell failed before: the
    rebuild passed no clean model.)"""
    from types import SimpleNamespace

    from attacks.label_consistent import LABEL_CONSISTENT
    from attacks.base import TrainedModel
    from backdoor_core import rundir
    from experiments.defenses.pbe import poisoned_training_set

    train, test = mnist_subset
    train = train.subset(np.random.default_rng(1).permutation(len(train))[:300])
    source = tmp_path / "digits.npz"
    np.savez(source, x_train=train.images, y_train=train.labels, x_test=test.images[:10], y_test=test.labels[:10])
    config = AttackConfig(name="lc", target=2, poison_ratio=0.5, ratio_of="target_class",
                          params={"steps": 2, "batch_size": 32})
    trigger = LABEL_CONSISTENT.build_trigger(config, LABEL_CONSISTENT.params(config), train, jax.random.PRNGKey(0))
    clean_dir = clean_digits_fit[2]
    expected, indices = LABEL_CONSISTENT.poison(train, config, trigger,
                                                clean_model=TrainedModel(*rundir.load_model(clean_dir)))
    run = SimpleNamespace(run_dir=tmp_path / "teachers" / "lc", record={"clean_run": str(clean_dir)}, attack=config,
                          trigger=trigger, dataset_source=str(source), poisoned_indices=indices)

    poisoned, got, how = poisoned_training_set(run)
    assert how.startswith("rebuilt") and len(got) == int(0.5 * np.sum(train.labels == 2) + 0.5)
    np.testing.assert_array_equal(got, indices)
    np.testing.assert_array_equal(poisoned.images, expected.images)
    assert np.any(poisoned.images[got] != train.images[got])
    with pytest.raises(InputError, match="clean model of"):
        poisoned_training_set(SimpleNamespace(**{**vars(run), "record": {"clean_run": "/gone/clean"}}))
