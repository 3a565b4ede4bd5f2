"""Triggers change exactly the pixels they should, poisoning picks exactly the right images,
triggers round-trip through a run directory, and bad settings fail with one clear message."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attacks import AttackConfig, get_attack, load_trigger, save_trigger
from attacks.backdoor import prepare_attack
from attacks.badnets import PatchParams, patch_trigger
from attacks.blended import blended_trigger
from attacks.poison import poison_count, poison_split, triggered_test_set
from attacks.registry import ATTACKS
from backdoor_core.plugins import resolve
from attacks.sig import sinusoid_signal
from attacks.triggers import Trigger, apply_to_uint8
from attacks.wanet import (WaNetParams, bicubic_matrix, grid_sample, identity_grid, wanet_batch_transform,
                           wanet_trigger)
from backdoor_core.errors import InputError
from conftest import random_split

MINE = ("badnets", "badnets_checker", "blended", "sig", "wanet")
KEY = jax.random.PRNGKey(0)


def build(name, split, seed=0, **params):
    config = AttackConfig(name=name, seed=seed, params=params)
    attack, parsed = prepare_attack(config, split.image_shape, split.num_classes)
    return attack.build_trigger(config, parsed, split, jax.random.PRNGKey(seed))


def float_images(n=4, shape=(32, 32, 3), seed=0):
    """Images strictly inside (0, 1), so any paste or blend changes every touched pixel."""
    return np.random.default_rng(seed).uniform(0.05, 0.95, (n, *shape)).astype(np.float32)


# --- registry and parameters -------------------------------------------------------------

def test_registry_names_and_unknown_attack():
    assert {"badnets", "badnets_checker", "blended", "sig", "wanet", "trojannn", "lc", "iad", "lf"} <= set(ATTACKS)
    for name in MINE:
        assert get_attack(name).name == name
    with pytest.raises(InputError, match="unknown attack 'badnet'.*badnets, badnets_checker, blended"):
        get_attack("badnet")
    with pytest.raises(InputError, match="attack 'x' is registered but its module attacks.not_written"):
        resolve("attacks.not_written:X", "attack 'x'")


def test_params_defaults_and_unknown_parameter():
    assert get_attack("badnets").params(AttackConfig("badnets")) == PatchParams()
    assert get_attack("badnets_checker").params(AttackConfig("badnets_checker")).pattern == "checkerboard"
    blended = get_attack("blended").params(AttackConfig("blended", params={"alpha": 0.1}))
    assert blended.alpha == 0.1 and blended.pattern == "noise"
    with pytest.raises(InputError, match=r"unknown parameter\(s\) \['sizes'\]"):
        get_attack("badnets").params(AttackConfig("badnets", params={"sizes": 4}))


@pytest.mark.parametrize("config,params,message", [
    (AttackConfig(target=10), {}, "target 10 is not a class.*\\[0, 9\\]"),
    (AttackConfig(target=-1), {}, "target -1 is not a class"),
    (AttackConfig(poison_ratio=0.0), {}, "poison_ratio = 0.0; expected a fraction in \\(0, 1\\]"),
    (AttackConfig(poison_ratio=1.5), {}, "poison_ratio = 1.5"),
    (AttackConfig(mode="one_to_one"), {}, "attack mode 'one_to_one'"),
    (AttackConfig(), {"size": 33}, "33x33 patch at margin 0 does not fit 32x32"),
    (AttackConfig(), {"size": 3, "margin": 30}, "does not fit"),
    (AttackConfig(), {"position": "middle"}, "position 'middle'"),
    (AttackConfig(name="blended"), {"alpha": 1.5}, "alpha 1.5"),
    (AttackConfig(name="blended"), {"pattern": "/no/such.png"}, "neither 'noise' nor an existing image"),
    (AttackConfig(name="sig", mode="all_to_all"), {}, "clean-label: it supports only mode 'all_to_one'"),
    (AttackConfig(name="wanet"), {"k": 40}, "k = 40"),
    (AttackConfig(name="wanet", poison_ratio=0.5), {}, "needs more than the whole batch"),
    (AttackConfig(name="wanet"), {"augment_after_warp": "yes"}, "augment_after_warp = 'yes'; expected True or False"),
    (AttackConfig(name="iad"), {"augment_after_trigger": 1}, "iad: augment_after_trigger = 1; expected True or False"),
    (AttackConfig(name="iad"), {"augment_mask_batches": "no"}, "iad: augment_mask_batches = 'no'; expected True or False"),
    (AttackConfig(seed=-1), {}, "attack seed = -1; expected a non-negative integer"),
])
def test_bad_settings_raise_one_clear_error(config, params, message):
    config = dataclasses.replace(config, params=params)
    with pytest.raises(InputError, match=message):
        prepare_attack(config, (32, 32, 3), 10)


# --- triggers ------------------------------------------------------------------------------

def test_badnets_pastes_exactly_the_patch():
    x = float_images()
    out = np.asarray(build("badnets", random_split())(x))
    changed = np.any(out != x, axis=(0, 3))
    expected = np.zeros((32, 32), bool)
    expected[29:, 29:] = True
    np.testing.assert_array_equal(changed, expected)
    assert np.all(out[:, 29:, 29:] == 1.0)
    # Top-left at margin 2, grey, on 1-channel 28x28 images.
    params = PatchParams(size=4, position="top_left", margin=2, color=0.5)
    x1 = float_images(shape=(28, 28, 1))
    out1 = np.asarray(patch_trigger(params, (28, 28, 1))(x1))
    assert np.all(out1[:, 2:6, 2:6] == 0.5)
    untouched = np.ones((28, 28), bool)
    untouched[2:6, 2:6] = False
    np.testing.assert_array_equal(out1[:, untouched], x1[:, untouched])


def test_checkerboard_variant():
    x = float_images()
    out = np.asarray(build("badnets_checker", random_split())(x))
    board = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.float32)
    np.testing.assert_array_equal(out[:, 29:, 29:], np.broadcast_to(board[None, :, :, None], (4, 3, 3, 3)))
    np.testing.assert_array_equal(out[:, :29], x[:, :29])
    np.testing.assert_array_equal(out[:, :, :29], x[:, :, :29])


def test_blended_changes_every_pixel_by_the_formula():
    x = float_images()
    trigger = build("blended", random_split(), alpha=0.2)
    pattern = np.asarray(trigger.arrays["pattern"])
    assert pattern.shape == (32, 32, 3) and 0 <= pattern.min() and pattern.max() <= 1 and pattern.std() > 0.25
    out = np.asarray(trigger(x))
    np.testing.assert_allclose(out, 0.8 * x + 0.2 * pattern, atol=1e-6)
    assert np.all(out != x)
    np.testing.assert_allclose(np.asarray(blended_trigger(pattern, 1.0)(x)), np.broadcast_to(pattern, x.shape))


def test_blended_pattern_from_image_file(tmp_path):
    from PIL import Image

    halves = np.zeros((64, 64, 3), np.uint8)
    halves[:, :32] = 255  # white left half, black right half
    Image.fromarray(halves).save(tmp_path / "p.png")
    trigger = build("blended", random_split(shape=(16, 16, 1)), pattern=str(tmp_path / "p.png"))
    pattern = np.asarray(trigger.arrays["pattern"])
    assert pattern.shape == (16, 16, 1)
    # The file's picture resized (not noise, not transposed): white left, black right.
    assert np.all(pattern[:, :7] > 0.95) and np.all(pattern[:, 9:] < 0.05)


def test_sig_adds_exactly_the_sinusoid_before_clipping():
    x = float_images()
    trigger = build("sig", random_split())
    out = np.asarray(trigger(x))
    j = np.arange(32)
    v = 20 / 255 * np.sin(2 * np.pi * j * 6 / 32)
    np.testing.assert_allclose(sinusoid_signal(20 / 255, 6, (32, 32, 3))[5, :, 1], v, atol=1e-7)
    np.testing.assert_allclose(out, np.clip(x + v[None, None, :, None], 0, 1), atol=1e-6)
    assert np.all(out[..., 0, :] == x[..., 0, :])  # sin(0) = 0: the first column is unchanged
    extremes = np.stack([np.zeros((32, 32, 3)), np.ones((32, 32, 3))]).astype(np.float32)
    clipped = np.asarray(trigger(extremes))
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    np.testing.assert_allclose(clipped[0], np.maximum(v, 0)[None, :, None] * np.ones((32, 32, 3)), atol=1e-6)


def test_grid_sample_identity_and_a_one_pixel_shift():
    x = jnp.asarray(float_images(2, (8, 10, 3)))
    grid = identity_grid(8, 10)
    np.testing.assert_allclose(np.asarray(grid_sample(x, grid)), x, atol=1e-6)
    shifted = grid.copy()
    shifted[..., 0] += 2 / 9  # one column to the right (align_corners: 2 / (W - 1) per pixel)
    out = np.asarray(grid_sample(x, shifted))
    np.testing.assert_allclose(out[:, :, :-1], x[:, :, 1:], atol=1e-5)
    np.testing.assert_allclose(out[:, :, -1], 0, atol=1e-5)  # sampled outside the image: zeros
    half = grid.copy()
    half[..., 1] += 1 / 7  # half a row down: bilinear average of neighbouring rows
    np.testing.assert_allclose(np.asarray(grid_sample(x, half))[:, :-1], (x[:, :-1] + x[:, 1:]) / 2, atol=1e-5)


def test_wanet_warp_with_s_zero_is_identity_and_a_known_field_moves_pixels():
    x = float_images()
    split = random_split()
    np.testing.assert_allclose(np.asarray(build("wanet", split, s=0.0)(x)), x, atol=1e-5)
    m = bicubic_matrix(4, 32)
    np.testing.assert_allclose(m.sum(1), 1, atol=1e-12)  # constants survive upsampling
    field = np.zeros((4, 4, 2), np.float32)
    field[..., 1] = 32 * 2 / 31 / 0.5  # with s = 0.5: exactly one row down everywhere
    trigger = wanet_trigger(field, WaNetParams(s=0.5), (32, 32, 3))
    out = np.asarray(trigger(x))
    np.testing.assert_allclose(out[:, :-1], x[:, 1:], atol=1e-5)
    np.testing.assert_allclose(out[:, -1], x[:, -1], atol=1e-5)  # grid clipped to the last row
    default = build("wanet", split)
    grid = np.asarray(default.arrays["grid"])
    assert np.abs(grid).max() <= 1
    assert 0.05 < np.abs(grid - identity_grid(32, 32)).mean() * 31 / 2 < 1  # a subtle sub-pixel warp
    assert np.abs(np.asarray(default(x)) - x).max() > 0.01


def test_wanet_batch_transform_counts_and_labels():
    config = AttackConfig(name="wanet", target=3, poison_ratio=0.1)
    params = WaNetParams()
    trigger = wanet_trigger(np.ones((4, 4, 2), np.float32), params, (32, 32, 3))
    x = jnp.asarray(float_images(32))
    labels = jnp.arange(32) % 10
    fn = jax.jit(wanet_batch_transform(config, params, trigger, 10))
    out, new = (np.asarray(a) for a in fn(KEY, x, labels))
    n_bd, n_cross = 3, 6  # round(0.1 * 32), round(2 * 3)
    np.testing.assert_array_equal(new[:n_bd], 3)
    np.testing.assert_array_equal(new[n_bd:], np.asarray(labels)[n_bd:])
    warped = np.asarray(jax.jit(trigger.__call__)(x))
    np.testing.assert_allclose(out[:n_bd], warped[:n_bd], atol=1e-5)
    cross = out[n_bd:n_bd + n_cross]  # warped by a jittered grid: neither the trigger's warp nor clean
    assert np.all(np.abs(cross - warped[n_bd:n_bd + n_cross]).max(axis=(1, 2, 3)) > 1e-3)
    assert np.all(np.abs(cross - np.asarray(x)[n_bd:n_bd + n_cross]).max(axis=(1, 2, 3)) > 1e-3)
    np.testing.assert_array_equal(out[n_bd + n_cross:], np.asarray(x)[n_bd + n_cross:])
    all_to_all = jax.jit(wanet_batch_transform(dataclasses.replace(config, mode="all_to_all"), params, trigger, 10))
    np.testing.assert_array_equal(np.asarray(all_to_all(KEY, x, labels)[1])[:n_bd], (np.arange(n_bd) + 1) % 10)


@pytest.mark.parametrize("name", MINE)
def test_trigger_range_determinism_and_save_load(name, tmp_path):
    split = random_split(shape=(28, 28, 1)) if name == "wanet" else random_split()
    x = np.random.default_rng(1).uniform(0, 1, (6, *split.image_shape)).astype(np.float32)
    x[0] = 0.0
    x[1] = 1.0
    trigger = build(name, split, seed=5)
    out = np.asarray(trigger(x))
    assert out.dtype == np.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1 and not np.array_equal(out, x)
    np.testing.assert_array_equal(out, np.asarray(build(name, split, seed=5)(x)))
    np.testing.assert_allclose(np.asarray(jax.jit(lambda t, im: t(im, KEY))(trigger, x)), out, atol=1e-5)
    save_trigger(tmp_path, trigger)
    loaded = load_trigger(tmp_path)
    assert loaded.kind == trigger.kind and loaded.static == trigger.static
    assert jax.tree.structure(loaded.arrays) == jax.tree.structure(trigger.arrays)
    np.testing.assert_array_equal(np.asarray(loaded(x)), out)


def test_random_triggers_depend_on_the_seed():
    split = random_split()
    for name in ("blended", "wanet"):
        a, b = build(name, split, seed=0), build(name, split, seed=1)
        assert not np.array_equal(np.asarray(a.arrays["pattern" if name == "blended" else "grid"]),
                                  np.asarray(b.arrays["pattern" if name == "blended" else "grid"]))


def test_load_trigger_rejects_missing_and_inconsistent_files(tmp_path):
    with pytest.raises(InputError, match="holds no trigger"):
        load_trigger(tmp_path)
    save_trigger(tmp_path, Trigger.make("additive", {"signal": np.zeros((4, 4, 1))}))
    np.savez(tmp_path / "trigger.npz", signal=np.zeros((5, 4, 1)))
    with pytest.raises(InputError, match="inconsistent"):
        load_trigger(tmp_path)


def test_nested_arrays_round_trip(tmp_path):
    """Triggers whose arrays are nested pytrees (e.g. a generator's weights) save and load."""
    trigger = Trigger.make("additive", {"signal": np.full((4, 4, 1), 0.25), "net": {"w": np.arange(3.0)}}, n=(1, 2))
    save_trigger(tmp_path, trigger)
    loaded = load_trigger(tmp_path)
    np.testing.assert_array_equal(loaded.arrays["net"]["w"], [0, 1, 2])
    assert loaded.settings == {"n": (1, 2)}


# --- poisoning -----------------------------------------------------------------------------

def test_dirty_label_poisoning_counts_and_only_non_target_images():
    split = random_split(n=200)
    config = AttackConfig(name="badnets", target=2, poison_ratio=0.1, seed=4)
    trigger = build("badnets", split)
    poisoned, idx = poison_split(split, config, trigger)
    assert len(idx) == 20 and len(np.unique(idx)) == 20 and np.all(np.diff(idx) > 0)
    assert np.all(split.labels[idx] != 2)
    np.testing.assert_array_equal(poisoned.labels[idx], 2)
    rest = np.setdiff1d(np.arange(200), idx)
    np.testing.assert_array_equal(poisoned.labels[rest], split.labels[rest])
    np.testing.assert_array_equal(poisoned.images[rest], split.images[rest])
    assert np.all(poisoned.images[idx][:, 29:, 29:] == 255)
    np.testing.assert_array_equal(poisoned.images[idx][:, :29], split.images[idx][:, :29])
    again, idx2 = poison_split(split, config, trigger)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(again.images, poisoned.images)
    _, idx3 = poison_split(split, config, trigger, seed=5)
    assert not np.array_equal(idx, idx3)


def test_poison_count_rounds_half_up_and_rejects_impossible_ratios():
    labels = np.arange(64) % 8
    assert poison_count(AttackConfig(poison_ratio=0.1), labels) == 6  # 6.4
    assert poison_count(AttackConfig(poison_ratio=0.5 / 64), labels) == 1  # 0.5 rounds up
    assert poison_count(AttackConfig(poison_ratio=0.5, ratio_of="target_class"), labels) == 4  # half of 8
    split = random_split(n=64, num_classes=8)
    with pytest.raises(InputError, match="asks for 64 poisoned images.*only 56 non-target"):
        poison_split(split, AttackConfig(poison_ratio=1.0), build("badnets", split))
    with pytest.raises(InputError, match="poisons no image"):
        poison_split(split, AttackConfig(poison_ratio=0.001), build("badnets", split))


def test_all_to_all_poisoning_labels():
    split = random_split(n=100)
    config = AttackConfig(name="badnets", mode="all_to_all", poison_ratio=0.3)
    poisoned, idx = poison_split(split, config, build("badnets", split))
    assert len(idx) == 30
    np.testing.assert_array_equal(poisoned.labels[idx], (split.labels[idx] + 1) % 10)
    test = triggered_test_set(split, config, build("badnets", split))
    assert len(test.labels) == 100  # every image's target differs from its label
    np.testing.assert_array_equal(test.targets, (split.labels + 1) % 10)


def test_clean_label_poisoning_touches_only_target_images_and_keeps_labels():
    split = random_split(n=200)
    attack = get_attack("sig")
    trigger = build("sig", split)
    config = AttackConfig(name="sig", target=1, poison_ratio=0.05)
    poisoned, idx = attack.poison(split, config, trigger)
    assert len(idx) == 10 and np.all(split.labels[idx] == 1)
    np.testing.assert_array_equal(poisoned.labels, split.labels)
    changed = np.flatnonzero(np.any(poisoned.images != split.images, axis=(1, 2, 3)))
    assert set(changed) <= set(idx) and len(changed) >= 9
    within = dataclasses.replace(config, poison_ratio=0.5, ratio_of="target_class")
    _, idx = attack.poison(split, within, trigger)
    assert len(idx) == 10 and np.all(split.labels[idx] == 1)
    with pytest.raises(InputError, match="only 20 target-class images"):
        attack.poison(split, dataclasses.replace(config, poison_ratio=0.2), trigger)


def test_triggered_test_set_excludes_the_target_class():
    split = random_split(n=50)
    trigger = build("blended", split)
    test = triggered_test_set(split, AttackConfig(name="blended", target=4), trigger)
    assert len(test.labels) == 45 and np.all(test.labels != 4) and np.all(test.targets == 4)
    np.testing.assert_array_equal(test.clean_images, split.images[test.indices])
    expected = apply_to_uint8(trigger, split.images[test.indices], KEY)
    np.testing.assert_array_equal(test.images, expected)
    manual = np.round(np.asarray(trigger(split.images[test.indices] / 255.0)) * 255)
    assert np.abs(test.images.astype(int) - manual).max() <= 1
