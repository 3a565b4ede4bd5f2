"""Test setup: 4 fake CPU devices (for the sharding tests) and small shared fixtures.

XLA_FLAGS must be set before JAX is imported, hence at the top of conftest. Tests that do not
ask for a mesh use a 1-device mesh so the others run at full speed.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from backdoor_core.data import Split, load_dataset  # noqa: E402
from backdoor_core.sharding import make_mesh  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "mnist_subset.npz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test decodes datasets into its own cache, never the user's."""
    monkeypatch.setenv("BACKDOOR_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def mnist_subset():
    """(train, test) of the shipped MNIST subset: 6000 / 1000 real 28x28 images."""
    return load_dataset(str(SHIPPED))


@pytest.fixture(scope="session")
def mesh1():
    return make_mesh(1)


@pytest.fixture(scope="session")
def mesh4():
    return make_mesh(4)


def random_split(n=64, shape=(32, 32, 3), num_classes=10, seed=0, name="synthetic") -> Split:
    """A generated split of uniform-noise uint8 images with balanced labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = (np.arange(n) % num_classes).astype(np.int32)
    return Split(images, labels, tuple(str(i) for i in range(num_classes)), name)


@pytest.fixture(scope="session")
def badnets_run(tmp_path_factory, mnist_subset):
    """A finished BadNets attack run (small_cnn width 0.5, 2 epochs on 3,000 shipped digits)."""
    from experiments.attack import run_attack
    from experiments.configs import attack_base

    train, test = mnist_subset
    keep = np.random.default_rng(0).permutation(len(train))[:3000]
    root = tmp_path_factory.mktemp("badnets")
    np.savez(root / "digits.npz", x_train=train.images[keep], y_train=train.labels[keep],
             x_test=test.images, y_test=test.labels)
    cfg = attack_base.get_config()
    cfg.dataset, cfg.out, cfg.num_devices, cfg.width = str(root / "digits.npz"), str(root / "run"), 1, 0.5
    cfg.train.update(dict(epochs=2, batch_size=64, learning_rate=0.05, crop_padding=2, hflip=False, seed=3))
    return run_attack(cfg).run_dir
