"""Datasets: loading, validation, caching and host-side batching.

A split is a `Split`: uint8 NHWC images, int32 labels, the class names and the number of
classes. `load_split(source, split)` reads it from

  (a) a tfds name (`TFDS_NAMES`), through `tensorflow_datasets`;
  (b) an image-folder directory `NAME/{train,test}/<class>/*` or a `.tar.gz` holding one
      (class folders sort lexicographically into label order);
  (c) an `.npz` with `x_train`, `y_train`, `x_test`, `y_test` (and optionally `class_names`).

A relative path is taken from the working directory, else from the checkout (`locate_source`).

Decoded folders and archives are cached as `.npz` under `cache_dir()` (an archive keyed by its
content, a folder by its path and every file's name, size and modification time), so a second
load is fast.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import tarfile
import uuid
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from backdoor_core.errors import InputError

TFDS_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist", "svhn_cropped", "gtsrb")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".gif")

# Datasets whose classes are symmetric under a left-right flip (signs and digits are not).
FLIP_DATASETS = ("cifar10", "cifar100")


# What the Python API's functions taking a split expect, for their errors (`errors.check_argument`).
SPLIT_EXPECTED = "a backdoor_core.data.Split (images, labels, class_names, name), e.g. from load_dataset"


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset.

    Attributes:
      images: uint8 array [N, H, W, C], C in {1, 3}.
      labels: int32 array [N], values in [0, num_classes).
      class_names: tuple of num_classes strings.
      name: short dataset name (e.g. "cifar10"), used for per-dataset defaults.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "Split":
        """The split restricted to `indices` (int array [M])."""
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])


def cache_dir() -> Path:
    """Where decoded datasets are cached: $BACKDOOR_CACHE or ~/.cache/backdoor_erasing."""
    return Path(os.environ.get("BACKDOOR_CACHE", Path.home() / ".cache" / "backdoor_erasing"))


def validate_split(images, labels, num_classes: int, what: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    """Checks images are uint8 [N, H, W, C] with C in {1, 3} and labels ints in [0, num_classes).

    Returns (images, labels as int32). Raises InputError naming `what` and what was expected.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8:
        raise InputError(f"{what}: images have dtype {images.dtype}; expected uint8 pixels in [0, 255]")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InputError(f"{what}: images have shape {images.shape}; expected [N, H, W, C] with C = 1 or 3")
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(f"{what}: labels have shape {labels.shape}; expected [{len(images)}] (one per image)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{what}: labels have dtype {labels.dtype}; expected integers")
    if len(labels) == 0:
        raise InputError(f"{what}: the split is empty; expected at least one image")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise InputError(f"{what}: labels range over [{labels.min()}, {labels.max()}]; "
                         f"expected values in [0, {num_classes - 1}] ({num_classes} classes)")
    return images, labels.astype(np.int32)


def check_pixels(images, what: str = "images") -> None:
    """Raises InputError unless `images` [N, ...] follow the pixel convention: uint8 in [0, 255], or
    finite floats in [0, 1]. Integers of another type, floats outside [0, 1] (pixels in [0, 255]
    as floats) and NaN or infinite values are named with what was found."""
    images = np.asarray(images)
    if images.dtype == np.uint8 or images.size == 0:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"{what} have dtype {images.dtype}; expected uint8 pixels in [0, 255] or floats in [0, 1]")
    if not np.isfinite(images).all():
        raise InputError(f"{what} hold {int((~np.isfinite(images)).sum())} NaN or infinite values; expected floats in [0, 1]")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise InputError(f"{what}: float pixels range over [{low:.3g}, {high:.3g}]; expected [0, 1]")


# The checkout this package runs from (an editable install), where the shipped configs' relative
# dataset paths (`data/mnist_subset.npz`, `../shared/data/cifar10.tar.gz`) point.
CHECKOUT = Path(__file__).resolve().parents[1]


def locate_source(source: str) -> Path:
    """The path a file or folder dataset `source` names: as given (relative to the working
    directory) where that exists, else, for a relative path that exists from the checkout (the
    shipped configs' `data/...` and `../shared/data/...`), that path; else as given, for the
    caller's error. The source string itself, recorded in run records, is never rewritten, so a
    run's `dataset_source` is the same from any working directory."""
    path = Path(str(source)).expanduser()
    if path.exists() or path.is_absolute():
        return path
    shipped = CHECKOUT / path
    return shipped if shipped.exists() else path


def dataset_name(source: str) -> str:
    """Short name of a source: the tfds name, or the file/folder name without its suffixes."""
    name = Path(str(source).rstrip("/")).name
    for suffix in (".tar.gz", ".tgz", ".npz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def load_split(source: str, split: str) -> Split:
    """Loads one split ("train" or "test") of `source`; see the module docstring for sources."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    source = str(source)
    path = locate_source(source)
    where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()} or the checkout {CHECKOUT})"
    if path.suffix == ".npz":
        if not path.is_file():
            raise InputError(f"dataset file {path} does not exist{where}; expected an .npz with x_train/y_train/x_test/y_test")
        return _load_npz(path, split)
    if source.endswith((".tar.gz", ".tgz")) or path.is_dir():
        if not path.exists():
            raise InputError(f"dataset {path} does not exist{where}; expected an image folder NAME/{{train,test}}/<class>/* or its .tar.gz")
        return _load_cached_folder(path, split)
    if source in TFDS_NAMES:
        return _load_tfds(source, split)
    if "/" in source or path.exists():
        raise InputError(f"dataset {source!r} is neither an image-folder directory, a .tar.gz of one, nor an .npz file")
    raise InputError(f"unknown dataset {source!r}; expected a tfds name (one of {', '.join(TFDS_NAMES)}), "
                     "an image-folder directory NAME/{train,test}/<class>/*, a .tar.gz of one, or an .npz file")


def load_dataset(source: str) -> tuple[Split, Split]:
    """(train, test) splits of `source`, checked to share class names and image shape."""
    train, test = load_split(source, "train"), load_split(source, "test")
    if train.class_names != test.class_names:
        raise InputError(f"dataset {source}: train classes {train.class_names} differ from test classes {test.class_names}")
    if train.image_shape != test.image_shape:
        raise InputError(f"dataset {source}: train images {train.image_shape} differ from test images {test.image_shape}")
    return train, test


def _load_npz(path: Path, split: str) -> Split:
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            need = {f"x_{split}", f"y_{split}"}
            if not need <= keys:
                raise InputError(f"dataset file {path} lacks {sorted(need - keys)}; expected arrays x_train, y_train, x_test, y_test")
            images, labels = f[f"x_{split}"], f[f"y_{split}"]
            names = tuple(str(c) for c in f["class_names"]) if "class_names" in keys else None
            num_classes = int(f["y_train"].max()) + 1 if names is None else len(names)
    except (OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"dataset file {path} could not be read as .npz ({e})") from None
    names = names or tuple(str(i) for i in range(num_classes))
    images, labels = validate_split(images, labels, len(names), what=f"{path} ({split})")
    return Split(images, labels, names, dataset_name(str(path)))


def _source_key(path: Path, split: str | None = None) -> str:
    """12 hex digits naming a dataset source in the cache. An archive is named by its content
    (SHA-1 of its bytes: 0.03 s for CIFAR-10's 20 MB here), so a copy of it elsewhere, or the same
    file copied afresh with a new mtime (a machine whose shared data is re-created for each
    session), hits the cache instead of decoding and storing another ~0.4 GB; a folder's `split`
    by the folder's path and every file of that split (`_folder_listing`), so an image replaced,
    added or removed in a class folder is decoded again (keyed by the folder's own mtime until
    2026-12-06, which such changes leave alone: the cache then served the old images)."""
    stat = path.stat()
    if path.is_file():
        return _content_key(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    listing = _folder_listing(_find_split_dir(path, split) if split else path)
    return hashlib.sha1(f"{path.resolve()}\n{listing}".encode()).hexdigest()[:12]


def _folder_listing(root: Path) -> str:
    """One line 'relative path:size:mtime_ns' per file below `root`, sorted (stat only, no reads)."""
    lines = []
    for directory, _, names in os.walk(root):
        for name in names:
            stat = os.stat(os.path.join(directory, name))
            lines.append(f"{os.path.relpath(os.path.join(directory, name), root)}:{stat.st_size}:{stat.st_mtime_ns}")
    return "\n".join(sorted(lines))


@functools.lru_cache(maxsize=16)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    """SHA-1 (12 hex digits) of the file at `path`; size and mtime only key the memo, so a file
    changed in place is hashed again."""
    del size, mtime_ns
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _load_cached_folder(path: Path, split: str) -> Split:
    """Loads a folder or archive split, decoding it once into the cache."""
    name = dataset_name(str(path))
    cached = cache_dir() / "arrays" / f"{name}-{_source_key(path, split)}-{split}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as f:
            return Split(f["images"], f["labels"], tuple(str(c) for c in f["class_names"]), name)
    root = _extract_archive(path) if path.is_file() else path
    images, labels, names = _read_image_folder(_find_split_dir(root, split))
    images, labels = validate_split(images, labels, len(names), what=f"{path} ({split})")
    cached.parent.mkdir(parents=True, exist_ok=True)
    # A name of this process's own: several processes (a matrix's cells started side by side)
    # may decode the same split at once, and a shared temporary file would interleave them.
    tmp = cached.with_name(f"{cached.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz")
    np.savez(tmp, images=images, labels=labels, class_names=np.array(names))
    os.replace(tmp, cached)
    return Split(images, labels, names, name)


def _extract_archive(path: Path) -> Path:
    """Extracts a .tar.gz once into the cache and returns the extraction root.

    The archive is extracted into a folder of this process's own and renamed into place, so
    that processes started side by side on an empty cache never read each other's half-written
    files (seen on a GPU machine: three erase runs, two failed decoding a truncated JPEG).
    """
    target = cache_dir() / "extracted" / f"{dataset_name(str(path))}-{_source_key(path)}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / ".complete").touch()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # EOFError: an archive cut short
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"dataset archive {path} could not be extracted ({e}); expected a .tar.gz of an image folder") from None
    if target.exists() and not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)  # left by an older version interrupted mid-extraction
    try:
        os.rename(tmp, target)
    except OSError:  # another process put its complete copy in place first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / ".complete").exists():
            raise InputError(f"dataset archive {path} could not be extracted into {target}") from None
    return target


def _find_split_dir(root: Path, split: str) -> Path:
    """Finds `split/` directly under root or under its single top-level folder."""
    for candidate in (root / split, *(d / split for d in sorted(root.iterdir()) if d.is_dir())):
        if candidate.is_dir():
            return candidate
    raise InputError(f"dataset {root} has no '{split}' folder; expected NAME/{{train,test}}/<class>/*")


def _read_image_folder(split_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decodes split_dir/<class>/* into uint8 [N, H, W, C], int32 [N] and sorted class names."""
    from tqdm import tqdm

    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise InputError(f"dataset folder {split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(p for p in (split_dir / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise InputError(f"dataset folder {split_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    with _open_image(files[0]) as first:
        mode = "L" if first.mode in ("L", "1", "I;16", "I") else "RGB"
        size = first.size
    images = np.empty((len(files), size[1], size[0], 1 if mode == "L" else 3), np.uint8)
    for i, f in enumerate(tqdm(files, desc=f"decoding {split_dir}", leave=False, mininterval=2)):
        with _open_image(f) as im:
            if im.size != size:
                raise InputError(f"image {f} is {im.size[0]}x{im.size[1]}; expected {size[0]}x{size[1]} like the first image")
            try:
                images[i] = np.asarray(im.convert(mode)).reshape(images.shape[1:])
            except OSError as e:  # a file cut short: the header read, the pixels not
                raise InputError(f"image {f} could not be decoded ({e}); expected a readable image file") from None
    return images, np.asarray(labels, np.int32), tuple(classes)


def _open_image(path: Path):
    """PIL's Image.open(path), with a file that is not an image (or cannot be opened) as an InputError."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"image {path} could not be read ({type(e).__name__}); expected a PNG or JPEG file "
                         "(or remove it from the class folder)") from None


def _load_tfds(name: str, split: str) -> Split:
    cached = cache_dir() / "arrays" / f"tfds-{name}-{split}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as f:
            return Split(f["images"], f["labels"], tuple(str(c) for c in f["class_names"]), name)
    try:
        import tensorflow_datasets as tfds

        data, info = tfds.load(name, split=split, batch_size=-1, as_supervised=True, with_info=True)
    except Exception as e:  # tfds raises many kinds (download, missing builder...).
        raise InputError(f"tfds could not load {name!r} split {split!r} ({type(e).__name__}: {e}); "
                         "without internet, point --dataset at an image folder or .tar.gz instead") from None
    images, labels = tfds.as_numpy(data)
    names = tuple(info.features["label"].names)
    images, labels = validate_split(images, labels, len(names), what=f"tfds {name} ({split})")
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cached, images=images, labels=labels, class_names=np.array(names))
    return Split(images, labels, names, name)


def batch_indices(num_examples: int, batch_size: int, *, seed: int | None, epoch: int = 0,
                  drop_last: bool = True) -> Iterator[np.ndarray]:
    """Yields index arrays [batch_size] over range(num_examples).

    With a seed, the order is a permutation drawn from (seed, epoch), so an epoch's batches are
    reproducible after a resume. Without one, the order is sequential. With drop_last the final
    short batch is dropped; otherwise it is yielded short.
    """
    if seed is None:
        order = np.arange(num_examples)
    else:
        order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    stop = num_examples - num_examples % batch_size if drop_last else num_examples
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of full batches in an epoch (training drops the last short batch)."""
    return num_examples // batch_size


def default_augmentation(name: str, image_shape: tuple[int, int, int]) -> tuple[int, bool]:
    """(crop padding, horizontal flip) used by default for a dataset: pad 4 (2 below 32 px)."""
    padding = 4 if image_shape[0] >= 32 else 2
    return padding, name in FLIP_DATASETS
