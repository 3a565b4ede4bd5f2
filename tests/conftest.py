"""Test setup: 4 fake CPU devices (for the sharding tests) and small shared fixtures.

XLA_FLAGS must be set before JAX is imported, hence at the top of conftest. Tests that do not
ask for a mesh use a 1-device mesh so the others run at full speed.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile

# XLA's backend optimisation level 1 instead of 2: most of the suite's time is XLA compiling, which
# level 1 cuts by a quarter (DHBE's test iteration: 13.8 s -> 10.4 s to compile, 0.088 -> 0.092 s to
# run, on the 2-core CPU); it changes only the machine code's speed and float rounding, never what
# a program computes. On a machine of at most two cores, single-threaded Eigen (convolutions,
# matrix products) too: the suite runs two xdist workers there, and each worker's Eigen pool of
# two threads only oversubscribed the cores (2-core CPU: whole suite 655 -> 622 s, the
# training-heavy tests 10% faster). The command lines the tests start inherit these flags.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=1"
                      + (" --xla_cpu_multi_thread_eigen=false" if (os.cpu_count() or 1) <= 2 else ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# A persistent XLA compilation cache for the test session: most of the suite's time is XLA
# compiling, and its tests, xdist's two workers and the CLI subprocesses the tests start (which
# inherit these variables) compile many of the same programs. One folder for all of them, made by
# the session's first process (xdist's controller), which deletes it at exit; never the user's own
# JAX cache. One folder, not one per worker: JAX puts the folder's path into every cache key (its
# GPU autotuning cache lives there), so two folders never share an entry. A size limit makes JAX
# lock the folder (with the `filelock` package) around each read and write, so that two processes
# never read or write one entry at once.
if "BACKDOOR_TEST_JAX_CACHE" not in os.environ:
    os.environ["BACKDOOR_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="backdoor-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["BACKDOOR_TEST_JAX_CACHE"], ignore_errors=True)
JAX_CACHE = os.environ["BACKDOOR_TEST_JAX_CACHE"]
if importlib.util.find_spec("filelock") is None:  # JAX refuses a size limit without it
    raise ImportError("tests: the filelock package is missing; expected it installed (pip install -r requirements.txt)")
JAX_CACHE_SETTINGS = {"compilation_cache_dir": JAX_CACHE, "persistent_cache_min_compile_time_secs": 0,
                      "compilation_cache_max_size": 8 << 30}
os.environ.update({f"JAX_{k.upper()}": str(v) for k, v in JAX_CACHE_SETTINGS.items()})
# ... without JAX's O(n) eviction scan before each write, in this process and (through
# PYTHONPATH, which Python reads at start) in the workers and the command lines the tests start:
# tests/site/sitecustomize.py says why.
SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
if SITE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SITE, os.environ.get("PYTHONPATH")]))
_site = importlib.util.spec_from_file_location("backdoor_test_site", os.path.join(SITE, "sitecustomize.py"))
_site.loader.exec_module(importlib.util.module_from_spec(_site))  # this process started before PYTHONPATH was set

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Also set here, in case a plugin imported JAX before this file set the variables (the cache is
# opened at the first compilation).
for _name, _value in JAX_CACHE_SETTINGS.items():
    jax.config.update(f"jax_{_name}", _value)

from backdoor_core.data import Split, load_dataset  # noqa: E402
from backdoor_core.sharding import make_mesh  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "mnist_subset.npz"


def jit_once(fun, **kwargs):
    """jax.jit for a test's reference computation that runs once: compiled with XLA's backend
    optimisation level 0, which on this CPU compiles several times faster and changes only
    float rounding (the comparisons' tolerances are float-level)."""
    return jax.jit(fun, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


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


# The recipe of the session's two trained digit models (below): small_cnn at width 0.5, 2 epochs.
DIGITS_RECIPE = dict(epochs=2, batch_size=64, learning_rate=0.05, crop_padding=2, hflip=False, seed=3)


def digits_3000(train: Split) -> Split:
    """The 3,000 random training digits both session models see (the shipped subset is sorted by class)."""
    return train.subset(np.random.default_rng(0).permutation(len(train))[:3000])


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder) -> Path` run once per test session, by whichever xdist worker asks first; the
    others wait on a file lock and get the same path (so its users must only read it). A build
    that fails is tried again by the next worker that asks, in a fresh folder."""
    import filelock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this session's folder, shared by its workers (one process: its own)
    done = root / f"{name}.done"
    with filelock.FileLock(str(root / f"{name}.lock")):
        if done.exists():
            return Path(done.read_text())
        result = build(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root)))
        done.write_text(str(result))
        return result


@pytest.fixture(scope="session")
def badnets_run(tmp_path_factory, mnist_subset):
    """A finished BadNets attack run (small_cnn width 0.5, 2 epochs on `digits_3000`), made by the
    attack CLI's `run_attack` and shared (read-only) by the tests that need a backdoored teacher,
    in both xdist workers: trained once per test session."""
    from experiments.attack import run_attack
    from experiments.configs import attack_base

    def build(root: Path) -> Path:
        train, test = mnist_subset
        train = digits_3000(train)
        np.savez(root / "digits.npz", x_train=train.images, y_train=train.labels,
                 x_test=test.images, y_test=test.labels)
        cfg = attack_base.get_config()
        cfg.dataset, cfg.out, cfg.num_devices, cfg.width = str(root / "digits.npz"), str(root / "run"), 1, 0.5
        cfg.train.update(DIGITS_RECIPE)
        return run_attack(cfg).run_dir

    return built_once(tmp_path_factory, "badnets", build)


@pytest.fixture(scope="session")
def clean_digits_fit(tmp_path_factory, mnist_subset):
    """(fit's result, spec, run_dir) of a clean small_cnn trained like `badnets_run`, evaluated on
    the full shipped test split after each epoch: the clean reference of the BadNets test and the
    subject of the training test. Trained once per test session, by whichever xdist worker asks
    first (each worker had trained its own, ~20 s): the result `fit` returned is kept beside the run
    directory with numpy (its variables in returned.npz, history and completion in returned.json), so
    that every worker gets what `fit` returned, not only what it saved."""
    import json
    import types

    from flax import traverse_util

    from backdoor_core.fit import fit
    from backdoor_core.models import build_model, spec_for_data
    from backdoor_core.train import TrainConfig, clean_eval_fn

    train, test = mnist_subset
    train = digits_3000(train)
    spec = spec_for_data("small_cnn", train.images, train.num_classes, 0.5)

    def build(root: Path) -> Path:
        mesh = make_mesh(1)
        result = fit(spec, train, TrainConfig(**DIGITS_RECIPE), root / "run", mesh=mesh,
                     eval_fn=clean_eval_fn(build_model(spec), test, mesh), progress=False)
        np.savez(root / "returned.npz", **traverse_util.flatten_dict(jax.device_get(result.variables), sep="/"))
        (root / "returned.json").write_text(json.dumps({"history": result.history, "complete": result.complete}))
        return root

    root = built_once(tmp_path_factory, "clean_digits", build)
    with np.load(root / "returned.npz") as saved:
        variables = traverse_util.unflatten_dict(dict(saved), sep="/")
    returned = json.loads((root / "returned.json").read_text())
    result = types.SimpleNamespace(variables=variables, history=returned["history"], complete=returned["complete"])
    return result, spec, root / "run"
