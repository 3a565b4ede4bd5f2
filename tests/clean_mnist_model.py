"""A small clean MNIST classifier shared by the attack test files (trained once per session).

`clean_mnist_model()` trains small_cnn (width 0.25) for one epoch on a random 2000-image subset
of the shipped MNIST subset with the library's jitted train step, and caches the result so
test_pgd.py and test_attacks_optimised.py pay for it once when they run together.
"""

import functools
from pathlib import Path

import jax
import numpy as np

from attacks.base import TrainedModel
from backdoor_core.data import batch_indices, load_dataset
from backdoor_core.models import build_model, init_variables, spec_for_data
from backdoor_core.sharding import make_mesh, replicate, shard_batch
from backdoor_core.train import TrainConfig, create_train_state, make_optimizer, make_train_step

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "mnist_subset.npz"
CONFIG = TrainConfig(epochs=1, batch_size=64, learning_rate=0.05, crop_padding=0, hflip=False, seed=0)


@functools.lru_cache(maxsize=None)
def clean_mnist_model(n: int = 2000, seed: int = 0):
    """(TrainedModel, the n training images it saw as a Split), after one epoch of SGD."""
    train = load_dataset(str(SHIPPED))[0]
    train = train.subset(np.random.default_rng(seed).permutation(len(train))[:n])
    spec = spec_for_data("small_cnn", train.images, train.num_classes, 0.25)
    module, mesh = build_model(spec), make_mesh(1)
    steps = n // CONFIG.batch_size
    tx = make_optimizer(CONFIG, steps)
    state = replicate(mesh, create_train_state(init_variables(spec, jax.random.PRNGKey(seed)), tx, seed))
    step = make_train_step(module, tx, mesh, crop_padding=0, hflip=False)
    for idx in batch_indices(n, CONFIG.batch_size, seed=seed):
        state, _ = step(state, *shard_batch(mesh, train.images[idx], train.labels[idx]))
    return TrainedModel(spec, module, jax.device_get(state.variables())), train
