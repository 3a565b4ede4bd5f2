"""On-device augmentation: crops are shifted copies with zero fill; flips are exact mirrors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backdoor_core.augment import crop_and_flip, random_crop, random_flip, to_float


def test_to_float_range():
    x = jnp.array([[[[0], [255]]]], jnp.uint8)
    np.testing.assert_allclose(to_float(x), [[[[0.0], [1.0]]]])


def test_crop_is_a_shifted_window_of_the_padded_image():
    images = jax.random.uniform(jax.random.PRNGKey(0), (16, 8, 8, 3)) + 1.0  # no zeros inside
    out = np.asarray(random_crop(jax.random.PRNGKey(1), images, padding=2))
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(16):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(out[i], padded[i, dy:dy + 8, dx:dx + 8])]
        assert len(matches) == 1
    assert not all(np.array_equal(out[i], np.asarray(images[i])) for i in range(16))


def test_zero_padding_is_identity():
    images = jnp.ones((2, 4, 4, 1))
    assert random_crop(jax.random.PRNGKey(0), images, 0) is images


def test_flip_mirrors_about_half_the_images():
    images = jax.random.uniform(jax.random.PRNGKey(0), (200, 4, 4, 1))
    out = np.asarray(random_flip(jax.random.PRNGKey(3), images))
    flipped = [np.array_equal(o, np.asarray(x)[:, ::-1]) for o, x in zip(out, images)]
    kept = [np.array_equal(o, np.asarray(x)) for o, x in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 60 < sum(flipped) < 140


def test_crop_and_flip_deterministic_for_a_key():
    images = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3))
    a = crop_and_flip(jax.random.PRNGKey(5), images, 4, True)
    b = crop_and_flip(jax.random.PRNGKey(5), images, 4, True)
    np.testing.assert_array_equal(a, b)
    # ... and it is random: it changes the images, and another key changes them otherwise.
    assert not np.array_equal(a, images)
    assert not np.array_equal(a, crop_and_flip(jax.random.PRNGKey(6), images, 4, True))


def test_a_transform_before_augmentation_has_its_output_cropped_and_flipped():
    """`training_batch`: a plain batch transform sees the augmented batch; one wrapped in
    `BeforeAugmentation` (WaNet's order) sees the raw batch and its output is augmented."""
    from backdoor_core.train import BeforeAugmentation, training_batch

    def mark(key, images, labels):  # a 2x2 white square at the top-left corner, label 7
        return images.at[:, :2, :2, :].set(1.0), jnp.full_like(labels, 7)

    images = jnp.zeros((32, 8, 8, 1), jnp.uint8)
    labels = jnp.zeros((32,), jnp.int32)
    aug_key, transform_key = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    kw = dict(crop_padding=2, hflip=True)
    after, after_labels = training_batch(aug_key, transform_key, images, labels, batch_transform=mark, **kw)
    before, before_labels = training_batch(aug_key, transform_key, images, labels,
                                           batch_transform=BeforeAugmentation(mark), **kw)
    assert np.all(np.asarray(after_labels) == 7) and np.all(np.asarray(before_labels) == 7)
    after, before = np.asarray(after), np.asarray(before)
    assert np.all(after[:, :2, :2] == 1.0) and after.sum() == 32 * 4  # the mark stays where it was put
    np.testing.assert_array_equal(before, np.asarray(crop_and_flip(aug_key, mark(None, to_float(images), labels)[0],
                                                                   2, True)))
    moved = [i for i in range(32) if not np.all(before[i, :2, :2] == 1.0)]
    assert len(moved) > 16  # shifted (partly cut off) or mirrored to the right in most images
    np.testing.assert_array_equal(  # no transform: augmentation only, the same keys
        np.asarray(training_batch(aug_key, transform_key, images, labels, **kw)[0]),
        np.asarray(crop_and_flip(aug_key, to_float(images), 2, True)))


def test_rotation_by_zero_is_identity_and_a_quarter_turn_is_rot90():
    from backdoor_core.augment import rotate

    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))
    turn = jax.jit(rotate, static_argnums=2)
    for nearest in (False, True):
        np.testing.assert_allclose(turn(x, jnp.zeros(2), nearest), x, atol=1e-6)
        np.testing.assert_allclose(turn(x, jnp.full(2, np.pi / 2), nearest), jnp.rot90(x, 1, axes=(1, 2)), atol=1e-5)
    # nearest neighbour copies pixels (or zero fill); bilinear blends them
    small = np.asarray(turn(x, jnp.full(2, 0.3), True))
    assert np.isin(small, np.append(np.asarray(x).ravel(), 0.0)).all()
    assert not np.isin(np.asarray(turn(x, jnp.full(2, 0.3), False)), np.asarray(x).ravel()).all()


def _changed_per_batch(recipe, keys, images, padding):
    """How many images of `images` [N,...] each key's `recipe` call changes: int [len(keys)]."""
    from backdoor_core.augment import augment

    out = jax.jit(jax.vmap(lambda k: augment(k, images, recipe, padding, False)))(keys)
    return np.asarray(jnp.any(out != images[None], axis=(2, 3, 4)).sum(-1))


def test_the_wanet_recipe_crops_and_rotates_whole_batches_as_the_official_post_tensor_transform():
    """WaNet's official `PostTensorTransform` decides per batch: crop on 80% of the batches (all its
    images), rotation on half of the batches, of about half their images (kornia's p = 0.5)."""
    images = jax.random.uniform(jax.random.PRNGKey(0), (16, 8, 8, 1)) + 0.5  # no zeros: a shift shows
    keys = jax.random.split(jax.random.PRNGKey(1), 400)
    changed = _changed_per_batch("wanet", keys, jnp.clip(images, 0, 1), 2)
    # cropped batches: each image moved unless its offset is (2, 2) (1 in 25)
    assert 0.7 < np.mean(changed >= 14) < 0.9
    # a batch neither cropped nor rotated: 0.2 * 0.5 (per image, as torchvision's, ~never)
    assert 0.05 < np.mean(changed == 0) < 0.17
    rotated_only = _changed_per_batch("wanet", keys, jnp.clip(images, 0, 1), 0)  # no crop: rotation alone
    assert 0.4 < np.mean(rotated_only == 0) < 0.6
    assert 0.4 < rotated_only[rotated_only > 0].mean() / 16 < 0.6


def test_the_iad_recipe_crops_and_rotates_every_image_with_nearest_neighbours():
    from backdoor_core.augment import augment, iad_augment

    images = jax.random.uniform(jax.random.PRNGKey(0), (64, 16, 16, 1))
    out = np.asarray(jax.jit(lambda k, x: augment(k, x, "iad", 0, False))(jax.random.PRNGKey(2), images))
    assert np.isin(out, np.append(np.asarray(images).ravel(), 0.0)).all()  # pixels copied, or zero fill
    # on 16x16 an angle under ~2.7 degrees moves no pixel centre past half a pixel: ~73% of images change
    assert 0.6 < (out != np.asarray(images)).any(axis=(1, 2, 3)).mean() < 0.85
    changed = _changed_per_batch("iad", jax.random.split(jax.random.PRNGKey(1), 50), images + 0.0, 2)
    assert (changed >= 60).all()  # every batch: per image, never per batch
    np.testing.assert_array_equal(out, np.asarray(jax.jit(iad_augment, static_argnums=(2, 3))(
        jax.random.PRNGKey(2), images, 0, False)))


def test_the_training_batch_and_config_take_the_recipe():
    from backdoor_core.augment import wanet_augment
    from backdoor_core.data import Split
    from backdoor_core.errors import InputError
    from backdoor_core.train import TrainConfig, training_batch

    images, labels = jnp.full((8, 8, 8, 3), 128, jnp.uint8), jnp.zeros((8,), jnp.int32)
    aug_key = jax.random.PRNGKey(3)
    got, expected = jax.jit(lambda: (  # one program: op by op the rotation compiles slowly
        training_batch(aug_key, jax.random.PRNGKey(4), images, labels, crop_padding=2, hflip=True,
                       augmentation="wanet")[0], wanet_augment(aug_key, to_float(images), 2, True)))()
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    split = Split(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int32), tuple("abcdefghij"), "cifar10")
    assert TrainConfig().with_dataset_defaults(split).crop_padding == 4  # BackdoorBench's
    for recipe in ("wanet", "iad"):
        assert TrainConfig(augmentation=recipe).with_dataset_defaults(split).crop_padding == 5  # their codes'
    assert TrainConfig(augmentation="iad", crop_padding=3).with_dataset_defaults(split).crop_padding == 3
    with pytest.raises(InputError, match="augmentation = 'autoaugment'; expected one of"):
        TrainConfig(augmentation="autoaugment").validate()
