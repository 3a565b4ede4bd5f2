"""On-device augmentation: crops are shifted copies with zero fill; flips are exact mirrors."""

import jax
import jax.numpy as jnp
import numpy as np

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
