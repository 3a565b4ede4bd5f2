"""Dataset loading from .npz, image folders and archives; validation errors; batching."""

import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from backdoor_core import data
from backdoor_core.data import InputError, batch_indices, load_dataset, load_split, validate_split


def make_folder(root, shape=(8, 8, 3), per_class=3, classes=("cat", "dog")):
    """Writes root/{train,test}/<class>/<i>.png and returns the arrays written."""
    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "test"):
        images, labels = [], []
        for label, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(img.squeeze()).save(root / split / cls / f"{i}.png")
                images.append(img)
                labels.append(label)
        written[split] = (np.stack(images), np.array(labels))
    return written


def make_archive(tmp_path):
    """Packs tmp_path/src/pets (from make_folder) into tmp_path/pets.tar.gz and returns its path."""
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "pets", arcname="pets")
    return archive


def test_shipped_subset(mnist_subset):
    train, test = mnist_subset
    assert train.images.shape == (6000, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (1000, 28, 28, 1)
    assert train.num_classes == 10 and np.bincount(train.labels).tolist() == [600] * 10
    assert train.name == "mnist_subset"


def test_image_folder_round_trip(tmp_path):
    written = make_folder(tmp_path / "pets")
    train, test = load_dataset(str(tmp_path / "pets"))
    assert train.class_names == ("cat", "dog") and train.name == "pets"
    np.testing.assert_array_equal(train.images, written["train"][0])
    np.testing.assert_array_equal(test.labels, written["test"][1])


def test_grey_folder_has_one_channel(tmp_path):
    make_folder(tmp_path / "g", shape=(6, 6, 1))
    assert load_split(str(tmp_path / "g"), "train").images.shape == (6, 6, 6, 1)


def test_archive_is_extracted_and_cached(tmp_path, monkeypatch):
    written = make_folder(tmp_path / "src" / "pets")
    archive = make_archive(tmp_path)
    first = load_split(str(archive), "train")
    np.testing.assert_array_equal(first.images, written["train"][0])

    def no_decoding(*a, **k):
        raise AssertionError("the second load should come from the cache")

    monkeypatch.setattr(data, "_read_image_folder", no_decoding)
    second = load_split(str(archive), "train")
    np.testing.assert_array_equal(second.images, first.images)
    assert second.class_names == first.class_names


def test_an_archive_copied_afresh_hits_the_cache_and_a_changed_one_does_not(tmp_path, monkeypatch):
    # The cache was keyed by path and mtime: a machine whose shared data is copied again for
    # every session decoded CIFAR-10 again each time and kept every copy (0.4 GB a session).
    monkeypatch.setenv("BACKDOOR_CACHE", str(tmp_path / "cache"))
    written = make_folder(tmp_path / "src" / "pets")
    archive = make_archive(tmp_path)
    load_split(str(archive), "train")
    fresh = tmp_path / "elsewhere" / "pets.tar.gz"
    fresh.parent.mkdir()
    shutil.copyfile(archive, fresh)  # a new file: another path, another mtime, the same bytes
    os.utime(fresh, ns=(1, 1))
    decoded = []
    real = data._read_image_folder
    monkeypatch.setattr(data, "_read_image_folder", lambda d: decoded.append(d) or real(d))
    np.testing.assert_array_equal(load_split(str(fresh), "train").images, written["train"][0])
    assert decoded == [] and len(list((tmp_path / "cache" / "arrays").iterdir())) == 1
    with tarfile.open(fresh, "w:gz") as tar:  # other content under the same name
        tar.add(tmp_path / "src" / "pets" / "test", arcname="pets/train")
    np.testing.assert_array_equal(load_split(str(fresh), "train").images, written["test"][0])
    assert len(decoded) == 1


@pytest.mark.parametrize("source,message", [
    ("not_a_dataset", "unknown dataset 'not_a_dataset'"),
    ("/nonexistent/dir/", "neither an image-folder"),
    ("/nonexistent/x.npz", "does not exist"),
    ("/nonexistent/x.tar.gz", "does not exist"),
])
def test_unknown_or_missing_sources(source, message):
    with pytest.raises(InputError, match=message):
        load_split(source, "train")


def test_a_relative_source_is_found_from_the_working_directory_or_the_checkout(tmp_path, monkeypatch):
    """The shipped configs name `data/mnist_subset.npz` relative to the checkout: run from another
    working directory it is found there; a file of that name in the working directory comes first;
    one that exists in neither is an error naming both places."""
    monkeypatch.chdir(tmp_path)
    train = load_split("data/mnist_subset.npz", "train")
    assert train.name == "mnist_subset" and len(train.labels) == 6000
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "mnist_subset.npz", x_train=np.zeros((3, 8, 8, 1), np.uint8), y_train=np.array([0, 1, 1]),
             x_test=np.zeros((2, 8, 8, 1), np.uint8), y_test=np.array([0, 1]))
    assert len(load_split("data/mnist_subset.npz", "train").labels) == 3
    with pytest.raises(InputError, match=f"data/elsewhere.npz does not exist .*working directory {tmp_path} or the checkout"):
        load_split("data/elsewhere.npz", "train")


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(InputError, match="no class folders"):
        load_split(str(tmp_path / "empty"), "train")
    (tmp_path / "empty" / "train" / "a").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        load_split(str(tmp_path / "empty"), "train")


def test_missing_split_folder(tmp_path):
    make_folder(tmp_path / "d")
    import shutil
    shutil.rmtree(tmp_path / "d" / "test")
    with pytest.raises(InputError, match="no 'test' folder"):
        load_split(str(tmp_path / "d"), "test")


def test_images_of_different_sizes(tmp_path):
    make_folder(tmp_path / "d")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "d" / "train" / "dog" / "odd.png")
    with pytest.raises(InputError, match="expected 8x8"):
        load_split(str(tmp_path / "d"), "train")


def test_unknown_split():
    with pytest.raises(InputError, match="unknown split"):
        load_split("cifar10", "validation")


@pytest.mark.parametrize("images,labels,message", [
    (np.zeros((2, 4, 4, 3), np.float32), [0, 1], "dtype float32; expected uint8"),
    (np.zeros((2, 4, 4, 2), np.uint8), [0, 1], r"expected \[N, H, W, C\] with C = 1 or 3"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0, 1, 1], r"expected \[2\]"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0, 10], r"range over \[0, 10\]; expected values in \[0, 9\]"),
    (np.zeros((2, 4, 4, 3), np.uint8), [-1, 0], "range over"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0.0, 1.0], "expected integers"),
])
def test_validate_split_errors(images, labels, message):
    with pytest.raises(InputError, match=message):
        validate_split(images, np.asarray(labels), 10)


def test_npz_with_bad_labels(tmp_path):
    path = tmp_path / "bad.npz"
    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(path, x_train=x, y_train=np.array([0, 1, 2, 9]), x_test=x, y_test=np.array([0, 1, 2, 3]),
             class_names=np.array(["a", "b", "c", "d"]))
    with pytest.raises(InputError, match="expected values in"):
        load_split(str(path), "train")


def test_npz_missing_arrays(tmp_path):
    path = tmp_path / "half.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(InputError, match="lacks"):
        load_split(str(path), "test")


def test_batch_indices_seeded_permutation():
    a = list(batch_indices(10, 3, seed=1, epoch=0))
    b = list(batch_indices(10, 3, seed=1, epoch=0))
    c = list(batch_indices(10, 3, seed=1, epoch=1))
    assert len(a) == 3 and all(len(x) == 3 for x in a)  # drop_last drops the 10th index
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert len(set(np.concatenate(a))) == 9
    tail = list(batch_indices(10, 3, seed=None, drop_last=False))
    assert np.array_equal(np.concatenate(tail), np.arange(10))


def test_processes_extracting_the_same_archive_at_once_all_read_it_whole(tmp_path, monkeypatch):
    """Several processes on an empty cache (a matrix's cells, erase runs side by side) each
    load the same archive: every one gets the full split, and one extraction is left in place.
    Before extraction went through a private folder, processes read each other's half-written
    images (a GPU run lost two of three erase runs to a truncated JPEG)."""
    import os
    import subprocess
    import sys

    make_folder(tmp_path / "src" / "pets", shape=(32, 32, 3), per_class=150)
    monkeypatch.setenv("BACKDOOR_CACHE", str(tmp_path / "reference_cache"))
    reference = load_split(str(tmp_path / "src" / "pets"), "train").images  # decoded from the folder itself
    archive = make_archive(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys, numpy as np; from backdoor_core.data import load_split; "
            "s = load_split(sys.argv[1], 'train'); np.save(sys.argv[2], s.images)")
    env = {**os.environ, "BACKDOOR_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(archive), str(out / f"{i}.npy")], env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    for i in range(4):
        np.testing.assert_array_equal(np.load(out / f"{i}.npy"), reference)
    extracted = list((tmp_path / "cache" / "extracted").iterdir())
    assert len(extracted) == 1 and (extracted[0] / ".complete").exists()  # no private folder left behind


def test_a_half_extracted_folder_is_replaced(tmp_path, monkeypatch):
    """A folder left without its completion mark (an older version stopped mid-extraction) is
    extracted again rather than read."""
    monkeypatch.setenv("BACKDOOR_CACHE", str(tmp_path / "cache"))
    written = make_folder(tmp_path / "src" / "pets")
    archive = make_archive(tmp_path)
    target = data._extract_archive(archive)
    (target / ".complete").unlink()
    (target / "pets" / "train" / "cat" / "0.png").write_bytes(b"truncated")
    data._extract_archive(archive)
    np.testing.assert_array_equal(load_split(str(archive), "train").images, written["train"][0])


def test_a_folder_changed_inside_its_class_folders_is_decoded_again(tmp_path, monkeypatch):
    # The cache knew a folder by its path and its own mtime, which replacing, adding or removing an
    # image in a class folder leaves alone: the old images were served (until 2026-12-06).
    monkeypatch.setenv("BACKDOOR_CACHE", str(tmp_path / "cache"))
    written = make_folder(tmp_path / "pets")
    load_split(str(tmp_path / "pets"), "train")
    decoded = []
    real = data._read_image_folder
    monkeypatch.setattr(data, "_read_image_folder", lambda d: decoded.append(d) or real(d))
    np.testing.assert_array_equal(load_split(str(tmp_path / "pets"), "train").images, written["train"][0])
    assert decoded == []  # unchanged: from the cache
    folder_mtime = os.stat(tmp_path / "pets").st_mtime_ns
    new = np.full((8, 8, 3), 7, np.uint8)
    Image.fromarray(new).save(tmp_path / "pets" / "train" / "dog" / "1.png")
    assert os.stat(tmp_path / "pets").st_mtime_ns == folder_mtime
    images = load_split(str(tmp_path / "pets"), "train").images
    assert len(decoded) == 1
    np.testing.assert_array_equal(images[4], new)  # dog/1.png: cat 0-2, dog 0-2
    (tmp_path / "pets" / "train" / "dog" / "2.png").unlink()
    assert len(load_split(str(tmp_path / "pets"), "train").images) == 5 and len(decoded) == 2


def test_an_unreadable_image_names_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_CACHE", str(tmp_path / "cache"))
    make_folder(tmp_path / "pets", shape=(32, 32, 3))
    (tmp_path / "pets" / "train" / "cat" / "x.png").write_text("not an image")
    with pytest.raises(InputError, match=r"image .*cat/x.png could not be read \(UnidentifiedImageError\)"):
        load_split(str(tmp_path / "pets"), "train")
    (tmp_path / "pets" / "train" / "cat" / "x.png").unlink()
    cut = tmp_path / "pets" / "train" / "dog" / "1.png"
    cut.write_bytes(cut.read_bytes()[:200])  # the header intact, the pixels cut short
    with pytest.raises(InputError, match=r"image .*dog/1.png could not be decoded \(image file is truncated"):
        load_split(str(tmp_path / "pets"), "train")


def test_an_archive_cut_short_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    # tarfile raised EOFError, which went through as a traceback and left the half-extracted folder.
    monkeypatch.setenv("BACKDOOR_CACHE", str(tmp_path / "cache"))
    make_folder(tmp_path / "src" / "pets", shape=(32, 32, 3), per_class=20)
    archive = make_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:len(archive.read_bytes()) // 2])
    with pytest.raises(InputError, match="pets.tar.gz could not be extracted"):
        load_split(str(archive), "train")
    assert list((tmp_path / "cache" / "extracted").iterdir()) == []


def test_pixels_are_uint8_or_finite_floats_in_the_unit_range():
    # NaN images ran through detection silently (a NaN compares False with both bounds), and int64
    # pixels were called "float images".
    data.check_pixels(np.zeros((2, 4, 4, 1), np.uint8))
    data.check_pixels(np.ones((2, 4, 4, 1), np.float32))
    data.check_pixels(np.zeros((0, 4, 4, 1), np.int64))  # nothing to check
    for images, message in [(np.full((2, 4, 4, 1), 255, np.int64), "have dtype int64; expected uint8 pixels"),
                            (np.full((2, 4, 4, 1), np.nan, np.float32), "hold 32 NaN or infinite values"),
                            (np.full((2, 4, 4, 1), 255.0, np.float32), r"float pixels range over \[255, 255\]"),
                            (np.full((2, 4, 4, 1), -0.5), r"range over \[-0.5, -0.5\]")]:
        with pytest.raises(InputError, match=message):
            data.check_pixels(images, "images")
