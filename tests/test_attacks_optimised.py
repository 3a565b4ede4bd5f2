"""Optimisation-based attacks: TrojanNN's patch, LC's hardened clean-label poison, IAD's generators,
LF's low-frequency universal perturbation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attacks.backdoor import load_attack, train_backdoor
from attacks.base import AttackConfig
from attacks.iad import (IAD, MASK_CHECKPOINTS, IADParams, batch_counts, blend, diversity_loss, generate_mask,
                         generate_pattern, init_generators, pretrain_mask, step_batch)
from attacks.low_frequency import LOW_FREQUENCY, LowFrequencyParams, gaussian_blur, normalise, target_loss
from attacks.label_consistent import LABEL_CONSISTENT, LCParams, four_corner_trigger, harden, label_consistent_poison
from attacks.triggers import Trigger, load_trigger, save_trigger
from attacks.trojannn import TROJANNN, TrojanNNParams, penultimate_features, select_neurons
from backdoor_core import rundir
from backdoor_core.augment import crop_and_flip, iad_augment, to_float
from backdoor_core.checkpoint import TrainCheckpoints
from backdoor_core.errors import InputError
from backdoor_core.sharding import replicate, shard_batch
from backdoor_core.train import TrainConfig
from clean_mnist_model import clean_mnist_model
from conftest import jit_once


def mixed(split, n, seed=0):
    return split.subset(np.random.default_rng(seed).permutation(len(split))[:n])


@pytest.fixture(scope="module")
def clean():
    """(TrainedModel of small_cnn 0.25 after 1 epoch on 2000 digits, those 2000 digits)."""
    return clean_mnist_model()


# --- LF (low-frequency) ---------------------------------------------------------------------

def test_gaussian_blur_and_normalise():
    impulse = jnp.zeros((28, 28, 1)).at[14, 14, 0].set(1.0)
    blurred = np.asarray(gaussian_blur(impulse, 1.8))[..., 0]  # 9 taps: centred on the impulse
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)  # the kernel fits inside the image
    assert blurred.argmax() == 14 * 28 + 14 and np.allclose(blurred, blurred.T, atol=1e-7)
    v = normalise(jnp.array([[[-2.0], [0.0]], [[1.0], [2.0]]]), 0.2)
    np.testing.assert_allclose(np.asarray(v).ravel(), [0.0, 0.1, 0.15, 0.2], atol=1e-7)
    assert float(jnp.abs(normalise(jnp.ones((2, 2, 1)), 0.2)).max()) == 0.0


def _high_frequency_share(v):
    """Share of the (mean-removed) spectral energy outside the lowest quarter of frequencies."""
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(v - v.mean(axis=(0, 1)), axes=(0, 1)), axes=(0, 1))) ** 2
    h, w = v.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    low = (np.abs(yy - h // 2) <= h // 8) & (np.abs(xx - w // 2) <= w // 8)
    return spectrum[~low].sum() / spectrum.sum()


def test_lf_trigger_is_smooth_bounded_and_pushes_towards_the_target(clean, mnist_subset):
    model, train = clean
    config = AttackConfig(name="lf", target=3)
    params = LowFrequencyParams(sigma=3.0, steps=40, num_images=64, batch_size=32)
    LOW_FREQUENCY.validate(config, params, train.image_shape, 10)
    trigger = LOW_FREQUENCY.build_trigger(config, params, train, jax.random.PRNGKey(0), model)
    v = np.asarray(trigger.arrays["signal"])
    assert v.shape == train.image_shape and v.min() == pytest.approx(0.0, abs=1e-6)
    assert v.max() == pytest.approx(0.2, abs=1e-5)
    noise = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), v.shape))
    assert _high_frequency_share(v) < 0.05 < _high_frequency_share(noise)

    x = jnp.asarray(to_float(mixed(mnist_subset[1], 200).images))
    np.testing.assert_allclose(np.asarray(trigger(x)), np.clip(np.asarray(x) + v, 0, 1), atol=1e-6)
    # A smooth +0.2 brightening barely flips this MNIST model's predictions, but the optimised
    # pattern pulls its logits towards the target clearly more than a smooth random one.
    logits_fn = lambda images: model.module.apply(model.variables, images, train=False)
    smooth_random = jit_once(lambda n: normalise(gaussian_blur(n - 0.5, 3.0), 0.2))(noise)
    loss_of = jit_once(lambda signal: target_loss(signal, x, logits_fn, 3))  # one program (op by op: ~100)
    loss, baseline = float(loss_of(v)), float(loss_of(smooth_random))
    assert loss < baseline - 0.1, (loss, baseline)

    again = LOW_FREQUENCY.build_trigger(config, params, train, jax.random.PRNGKey(0), model)
    np.testing.assert_array_equal(np.asarray(again.arrays["signal"]), v)
    poisoned, indices = LOW_FREQUENCY.poison(train, config, trigger)
    assert np.all(poisoned.labels[indices] == 3) and len(indices) == 200
    with pytest.raises(InputError, match="clean"):
        LOW_FREQUENCY.build_trigger(config, params, train, jax.random.PRNGKey(0), None)
    with pytest.raises(InputError, match="amplitude"):
        LOW_FREQUENCY.validate(config, LowFrequencyParams(amplitude=0.0), train.image_shape, 10)


# --- TrojanNN -------------------------------------------------------------------------------

def test_select_neurons_takes_largest_outgoing_weights():
    kernel = jnp.array([[0.1, -0.1], [2.0, -3.0], [0.0, 0.5], [-1.0, 1.5]])
    np.testing.assert_array_equal(select_neurons({"classifier": {"kernel": kernel}}, 2), [1, 3])


def test_trojannn_patch_is_masked_and_excites_chosen_neurons(clean, mnist_subset):
    model, train = clean
    config = AttackConfig(name="trojannn", target=3)
    params = TrojanNNParams(steps=60, num_images=32)
    TROJANNN.validate(config, params, train.image_shape, 10)
    trigger = TROJANNN.build_trigger(config, params, train, jax.random.PRNGKey(0), model)
    mask = np.asarray(trigger.arrays["mask"])
    assert mask.sum() == 16 and mask[-4:, -4:].all()  # 4x4 at the bottom-right of 28x28

    x = jnp.asarray(to_float(mixed(mnist_subset[1], 64).images))
    changed = np.any(np.asarray(trigger(x)) != np.asarray(x), axis=(0, 3))
    assert not changed[mask[..., 0] == 0].any()

    neurons = select_neurons(model.variables["params"], params.num_neurons)
    act = lambda pattern: float(penultimate_features(model.module, model.variables,
                                                     (1 - mask) * x + mask * pattern)[:, neurons].mean())
    random_patches = [mask * jax.random.uniform(jax.random.PRNGKey(i), mask.shape) for i in range(5)]
    assert act(trigger.arrays["pattern"]) > max(act(p) for p in random_patches)

    poisoned, indices = TROJANNN.poison(train, config, trigger)
    assert np.all(poisoned.labels[indices] == 3) and len(indices) == 200
    with pytest.raises(InputError, match="clean"):
        TROJANNN.build_trigger(config, params, train, jax.random.PRNGKey(0), None)


# --- Label-consistent -----------------------------------------------------------------------

def test_four_corner_checkerboards():
    trigger = four_corner_trigger((28, 28, 1))
    mask, pattern = np.asarray(trigger.arrays["mask"])[..., 0], np.asarray(trigger.arrays["pattern"])[..., 0]
    board = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.float32)
    assert mask.sum() == 36
    for rows in (slice(0, 3), slice(25, 28)):
        for cols in (slice(0, 3), slice(25, 28)):
            assert mask[rows, cols].all()
            np.testing.assert_array_equal(pattern[rows, cols], board)


def test_lc_poisons_only_target_images_within_budget(clean):
    model, train = clean
    train = mixed(train, 600, seed=1)
    config = AttackConfig(name="lc", target=2, poison_ratio=0.5, ratio_of="target_class")
    params = LCParams(steps=4, alpha=4 / 255, batch_size=64)
    LABEL_CONSISTENT.validate(config, params, train.image_shape, 10)
    trigger = LABEL_CONSISTENT.build_trigger(config, params, train, jax.random.PRNGKey(0))
    poisoned, indices = label_consistent_poison(train, config, params, trigger, model, jax.random.PRNGKey(1))

    target_images = np.flatnonzero(train.labels == 2)
    assert set(indices) <= set(target_images) and len(indices) == int(0.5 * len(target_images) + 0.5)
    np.testing.assert_array_equal(poisoned.labels, train.labels)
    untouched = np.setdiff1d(np.arange(len(train)), indices)
    np.testing.assert_array_equal(poisoned.images[untouched], train.images[untouched])

    mask = np.asarray(trigger.arrays["mask"])[..., 0] > 0
    before, after = train.images[indices].astype(int), poisoned.images[indices].astype(int)
    assert np.abs(after - before)[:, ~mask].max() <= 16  # the PGD perturbation, 16/255, rounded
    assert np.abs(after - before)[:, ~mask].mean() > 1  # ... which is really there
    corners = np.round(np.asarray(trigger.arrays["pattern"])[..., 0] * 255)
    assert np.all(after[:, mask, 0] == corners[mask])

    hard = harden(model, train.images[indices], train.labels[indices], params, jax.random.PRNGKey(1))
    assert np.abs(hard - to_float(train.images[indices])).max() <= 16 / 255 + 1e-6
    with pytest.raises(InputError, match="clean_model"):
        LABEL_CONSISTENT.poison(train, config, trigger)


# --- Input-aware dynamic --------------------------------------------------------------------

TINY_IAD = {"base_channels": 8, "depth": 2}


def test_iad_trigger_is_sample_specific_deterministic_and_reloads(mnist_subset, tmp_path):
    test = mnist_subset[1]
    x = jnp.asarray(to_float(mixed(test, 8).images))
    params = IADParams(**TINY_IAD)
    config = AttackConfig(name="iad")
    trigger = IAD.build_trigger(config, params, test, jax.random.PRNGKey(0))
    again = IAD.build_trigger(config, params, test, jax.random.PRNGKey(0))
    other = IAD.build_trigger(config, params, test, jax.random.PRNGKey(1))
    out = np.asarray(trigger(x))
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out, np.asarray(again(x)))
    assert not np.array_equal(out, np.asarray(other(x)))
    patterns = np.asarray(jit_once(lambda g, x: generate_pattern(g, x, 8, 2))(trigger.arrays["generator"], x))
    masks = np.asarray(jit_once(lambda m, x: generate_mask(m, x, 8, 2))(trigger.arrays["mask_generator"], x))
    assert patterns.min() >= 0 and patterns.max() <= 1 and masks.min() >= 0 and masks.max() <= 1
    assert np.abs(patterns[0] - patterns[1]).mean() > 1e-3  # two images, two patterns
    save_trigger(tmp_path, trigger)
    np.testing.assert_array_equal(np.asarray(load_trigger(tmp_path)(x)), out)
    # IAD's diversity term: mean over the pairs of RMS(x1 - x2) / (RMS(pattern1 - pattern2) + 1e-7)
    rms = lambda a, b: np.sqrt(np.mean((a - b) ** 2, axis=(1, 2, 3)))
    expected = np.mean(rms(np.asarray(x[:4]), np.asarray(x[4:])) / (rms(patterns[:4], patterns[4:]) + 1e-7))
    assert float(diversity_loss(x[:4], x[4:], jnp.asarray(patterns[:4]), jnp.asarray(patterns[4:]))) == \
        pytest.approx(expected, rel=1e-4)


def test_iad_step_augments_the_batch_before_triggering_it_as_the_official_code(mnist_subset):
    """The official training step triggers images its dataloader already cropped and rotated, so
    a trigger is never shifted off the image it was made for; `augment_after_trigger` gives the
    order this library used before (the triggered batch cropped and flipped)."""
    data = mixed(mnist_subset[0], 8)
    images, labels = jnp.asarray(data.images), jnp.asarray(data.labels)
    g, m = init_generators(jax.random.PRNGKey(0), data.image_shape, 8, 2)
    aug_key, perm_key = jax.random.split(jax.random.PRNGKey(4))
    params = IADParams(**TINY_IAD, backdoor_ratio=0.25, cross_ratio=0.25)
    nb, nc = batch_counts(8, params)
    config = AttackConfig(name="iad", target=0)

    @jit_once
    def batches_and_references():
        run = lambda after, recipe="crop_flip": step_batch(
            g, m, images, labels, aug_key, perm_key, config=config, num_classes=10, arch=(8, 2), nb=nb, nc=nc,
            crop_padding=3, hflip=True, augmentation=recipe,
            params=IADParams(**TINY_IAD, backdoor_ratio=0.25, cross_ratio=0.25, augment_after_trigger=after))
        augment = lambda x: crop_and_flip(aug_key, x, 3, True)
        trigger = lambda x: blend(x, generate_pattern(g, x, 8, 2), generate_mask(m, x, 8, 2))
        x = to_float(images)
        return (run(False), run(True), trigger(augment(x)), augment(trigger(x)), augment(x),
                run(False, "iad")[0], trigger(iad_augment(aug_key, x, 3, True)))

    ((official, o_labels, _), (after, a_labels, _), trigger_of_augmented, augmented_trigger, augmented,
     official_recipe, trigger_of_official_recipe) = jax.tree.map(np.asarray, batches_and_references())
    # the official code's own augmentation (crop, rotation: TrainConfig.augmentation="iad") likewise
    np.testing.assert_allclose(official_recipe[:nb], trigger_of_official_recipe[:nb], atol=1e-4)
    assert (nb, nc) == (2, 2)
    np.testing.assert_allclose(official[:nb], trigger_of_augmented[:nb], atol=1e-4)  # rounding (steep mask)
    np.testing.assert_allclose(after[:nb], augmented_trigger[:nb], atol=1e-4)
    assert np.abs(official[:nb] - after[:nb]).max() > 0.1  # the two orders give other images
    for batch in (official, after):  # the clean part is the augmented batch either way
        np.testing.assert_array_equal(batch[nb + nc:], augmented[nb + nc:])
    np.testing.assert_array_equal(o_labels, a_labels)
    assert (o_labels[:nb] == 0).all() and (o_labels[nb:] == np.asarray(labels)[nb:]).all()


def test_an_iad_trigger_with_an_old_generator_tree_is_refused_clearly(mnist_subset):
    x = jnp.asarray(to_float(mixed(mnist_subset[1], 2).images))
    trigger = IAD.build_trigger(AttackConfig(name="iad"), IADParams(**TINY_IAD), mnist_subset[1], jax.random.PRNGKey(0))
    assert trigger(x).shape == x.shape
    last_norm = max((k for k in trigger.arrays["mask_generator"] if k.startswith("GroupNorm_")),
                    key=lambda k: int(k.split("_")[1]))
    old = {**trigger.arrays, "mask_generator": {k: v for k, v in trigger.arrays["mask_generator"].items() if k != last_norm}}
    with pytest.raises(InputError, match=r"'mask_generator' parameters do not fit.*missing \['GroupNorm_"):
        Trigger.make("iad", old, **trigger.settings)(x)


def test_iad_mask_pretraining_keeps_a_sparse_nonzero_mask_at_cifar_scale(mesh1):
    # The CIFAR-10 architecture (32 channels, depth 3) on 32x32 colour images: without the output
    # norm of the official generators the density loss drove every mask to exactly 0 within 20
    # steps (tanh(20 z - 10) saturated, no gradient left) and IAD's trigger did nothing.
    from attacks.iad import _mask_program

    params = IADParams()
    arch = params.architecture((32, 32, 3))
    assert arch == (32, 3)
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    _, m = init_generators(jax.random.PRNGKey(0), (32, 32, 3), *arch)
    tx, step = _mask_program(params, *arch, mesh1)
    # placed as pretrain_mask places them: uncommitted arrays compiled the step a second time (~9 s)
    state = (replicate(mesh1, m), replicate(mesh1, tx.init(m)))
    batch = shard_batch(mesh1, images)
    for i in range(20):
        *state, _ = step(*state, batch, jax.random.PRNGKey(i))
    assert step._cache_size() == 1
    masks = np.asarray(jit_once(lambda m, x: generate_mask(m, to_float(x), *arch))(state[0], images))
    assert 1e-3 < masks.mean() < 0.2, masks.mean()  # sparse (density 0.032 is the aim), alive
    assert np.abs(masks[:8] - masks[8:]).mean() > 1e-3  # and image-specific


def test_iad_mask_loss_equals_the_two_pass_loss_of_the_official_code(mnist_subset, mesh1):
    # The pre-training step runs the mask generator once and shuffles its output for the pairs
    # (x, x2); the official code runs it on both batches. Same loss, same gradients.
    from attacks.iad import _mask_program, mask_loss

    params = IADParams(**TINY_IAD)
    images = mixed(mnist_subset[0], 16).images
    m = init_generators(jax.random.PRNGKey(0), mnist_subset[0].image_shape, 8, 2)[1]
    key = jax.random.PRNGKey(5)
    x = to_float(jnp.asarray(images))
    perm = jax.random.permutation(key, x.shape[0])
    assert not np.array_equal(np.asarray(perm), np.arange(16))

    def two_pass(p):
        m1, m2 = generate_mask(p, x, 8, 2), generate_mask(p, x[perm], 8, 2)
        return 100.0 * jnp.mean(jax.nn.relu(m1 - 0.032)) + diversity_loss(x, x[perm], m1, m2)

    want, want_grads = jit_once(jax.value_and_grad(two_pass))(m)  # jitted: eager flax convs are slow here
    got, got_grads = jax.jit(jax.value_and_grad(mask_loss), static_argnums=(3, 4, 5))(m, x, perm, params, 8, 2)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * scale), got_grads, want_grads)
    # another shuffle gives another loss (its diversity term): the pairing matters
    loss_jit = jax.jit(mask_loss, static_argnums=(3, 4, 5))
    other = loss_jit(m, x, jnp.arange(16)[::-1], params, 8, 2)
    assert abs(float(other) - float(want)) > 1e-3
    # and the jitted step minimises exactly this loss, on this shuffle of the batch
    tx, step = _mask_program(params, 8, 2, mesh1)  # (the recipe with padding 0 and no flip changes nothing)
    host = jax.device_get(m)
    assert float(step(host, tx.init(host), jnp.asarray(images), key)[2]) == pytest.approx(float(want), rel=1e-5)
    # With the official recipe the step pre-trains on augmented images (mask_batch: key fold_in(key,
    # 1)), as the official loaders feed it; augment_mask_batches=False keeps the raw images and the
    # same shuffle (archived runs).
    from attacks.iad import mask_batch
    from backdoor_core.augment import augment

    settings = dict(crop_padding=2, hflip=True, augmentation="crop_flip")
    augmented, aug_perm = mask_batch(jnp.asarray(images), key, params, **settings)
    np.testing.assert_array_equal(np.asarray(augmented), np.asarray(augment(jax.random.fold_in(key, 1), x, "crop_flip", 2, True)))
    assert np.abs(np.asarray(augmented - x)).mean() > 0.01
    raw, raw_perm = mask_batch(jnp.asarray(images), key, dataclasses.replace(params, augment_mask_batches=False), **settings)
    np.testing.assert_array_equal(np.asarray(raw), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(raw_perm), np.asarray(perm))
    np.testing.assert_array_equal(np.asarray(aug_perm), np.asarray(perm))
    _, aug_step = _mask_program(params, 8, 2, mesh1, 2, True, "crop_flip")
    got_aug = float(aug_step(host, tx.init(host), jnp.asarray(images), key)[2])
    assert got_aug == pytest.approx(float(loss_jit(m, augmented, perm, params, 8, 2)), rel=1e-5)
    assert abs(got_aug - float(want)) > 1e-3


def _stop_at(call: int):
    """A stand-in for `stop_requested` that asks for a stop from its `call`-th call on."""
    calls = iter(range(1, 10**6))
    return lambda: "SIGINT" if next(calls) >= call else None


def test_iad_joint_training_plants_a_backdoor(mnist_subset, mesh1, tmp_path, monkeypatch):
    train, test = mixed(mnist_subset[0], 2000), mixed(mnist_subset[1], 300, seed=1)
    config = AttackConfig(name="iad", target=0, params={**TINY_IAD, "mask_epochs": 1, "backdoor_ratio": 0.3})
    train_config = TrainConfig(epochs=4, batch_size=64, learning_rate=0.05, crop_padding=0, hflip=False, seed=0)
    run = lambda: train_backdoor(config, "small_cnn", 0.25, train, test, train_config, tmp_path / "iad", mesh=mesh1,
                                 progress=False)
    # a stop during the mask generator's pre-training keeps the run (its checkpoint) for the resume
    monkeypatch.setattr("attacks.iad.stop_requested", _stop_at(2))
    assert not run().fit.complete and (tmp_path / "iad" / MASK_CHECKPOINTS / "2").is_dir()
    record = rundir.read_record(tmp_path / "iad")
    assert record["status"] == "running"
    # a run recorded before these settings existed resumes at their defaults (IAD's own open_run)
    del record["config"]["train"]["augmentation"], record["config"]["attack"]["params"]["augment_after_trigger"]
    rundir.write_json(tmp_path / "iad" / rundir.RECORD, record)
    monkeypatch.setattr("attacks.iad.stop_requested", lambda: None)
    result = run()
    assert not (tmp_path / "iad" / MASK_CHECKPOINTS).exists()  # step 2's result now lives in checkpoints/0
    assert result.fit.complete and result.poisoned_indices is None
    metrics = result.fit.history[-1]
    # Since the generators end in a norm (as the official ones), the masks stay sparse (~3% of the
    # pixels) instead of large, and this tiny run learns the backdoor more slowly: 4 epochs gave
    # C-Acc 0.79 / ASR 0.59 (a clean model sends ~10% of the triggered images to class 0).
    assert metrics["test_acc"] > 0.7 and metrics["asr"] > 0.45, metrics
    loaded_config, trigger = load_attack(tmp_path / "iad")
    assert loaded_config.name == "iad"
    x = jnp.asarray(to_float(test.images[:4]))
    apply = jit_once(lambda t, images: t(images))  # one program for both (op by op: ~60 compilations)
    np.testing.assert_array_equal(np.asarray(apply(trigger, x)), np.asarray(apply(result.trigger, x)))


@pytest.mark.parametrize("stop_at_call", [3, 4])  # mid-epoch, and at the end of epoch 1 (4 batches)
def test_iad_mask_pretraining_stops_and_resumes_equal(mnist_subset, mesh1, tmp_path, monkeypatch, stop_at_call):
    train = mixed(mnist_subset[0], 300)
    params, config = IADParams(**TINY_IAD, mask_epochs=2), TrainConfig(batch_size=64, seed=0)
    m0 = init_generators(jax.random.PRNGKey(0), train.image_shape, 8, 2)[1]
    key = jax.random.PRNGKey(3)
    whole, finished = pretrain_mask(m0, train, params, config, 8, 2, mesh1, key, False)
    assert finished
    ckpts = TrainCheckpoints(tmp_path / "mask")
    monkeypatch.setattr("attacks.iad.stop_requested", _stop_at(stop_at_call))
    part, finished = pretrain_mask(m0, train, params, config, 8, 2, mesh1, key, False, ckpts)
    assert not finished and ckpts.latest_step() == stop_at_call
    assert not np.array_equal(np.asarray(jax.tree.leaves(part)[0]), np.asarray(jax.tree.leaves(whole)[0]))
    monkeypatch.setattr("attacks.iad.stop_requested", lambda: None)
    resumed, finished = pretrain_mask(m0, train, params, config, 8, 2, mesh1, key, False, ckpts)
    assert finished
    jax.tree.map(np.testing.assert_array_equal, resumed, whole)

