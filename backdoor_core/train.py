"""Supervised training: jitted train/eval steps and a resumable, data-parallel training loop.

`fit` trains a classifier on a `Split` (clean or poisoned) and writes a run directory
(see `rundir`): Orbax checkpoints of the full `TrainState` every few steps, a metrics
history as it goes, and the final model. A run stopped anywhere resumes from its last
checkpoint and ends bit-identical to an uninterrupted run (batches depend on (seed, epoch),
augmentation keys live in the state).

Steps:
  1. `create_train_state`: variables from the registry, SGD with momentum and weight decay.
  2. `train_step` (jitted once, state donated): augment on device, optional batch transform
     (on-the-fly poisoning), forward in train mode, cross-entropy, SGD update.
  3. `predict_logits`: eval-mode forward over a dataset in fixed-size, device-sharded batches.
The loop itself (`fit`) lives in `backdoor_core.fit`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from backdoor_core.augment import AUGMENTATIONS, OFFICIAL_CROP_PADDING, augment, to_float
from backdoor_core.data import Split, check_pixels, default_augmentation
from backdoor_core.errors import check_settings, is_seed
from backdoor_core.metrics import clean_accuracy
from backdoor_core.sharding import make_mesh, replicate, replicated, shard_batch

SCHEDULES = ("cosine", "multistep", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Supervised training settings (defaults: BackdoorBench's PreAct-ResNet-18 recipe).

    Attributes:
      epochs: passes over the training split.
      batch_size: global batch, split over the mesh's devices (a multiple of their number).
      learning_rate, momentum, nesterov, weight_decay: SGD (weight decay added to gradients,
        as PyTorch's SGD does).
      schedule: "cosine" (to 0 over training), "multistep" (x gamma at each milestone, given as
        fractions of training) or "constant".
      warmup_epochs: linear warm-up from 0 before the schedule.
      augmentation: the training recipe, one of `backdoor_core.augment.AUGMENTATIONS`:
        "crop_flip" (BackdoorBench's), or the official WaNet ("wanet") or IAD ("iad") code's,
        which add a rotation (`backdoor_core.augment`).
      crop_padding, hflip: the crop's zero padding and the flip; None takes the dataset's default
        (`default_augmentation`; padding 5 for the "wanet" and "iad" recipes, as their codes).
      seed: seeds initialisation, batch order and augmentation.
      checkpoint_every_steps: save a resumable state this often (0: at each epoch end).
      max_to_keep: how many training checkpoints are kept.
    """

    epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    crop_padding: int | None = None
    hflip: bool | None = None
    augmentation: str = "crop_flip"
    seed: int = 0
    checkpoint_every_steps: int = 0
    max_to_keep: int = 2

    def validate(self) -> "TrainConfig":
        """Returns self, or raises InputError naming the first bad setting."""
        checks = [(self.epochs >= 1, "epochs", "at least 1"), (self.batch_size >= 1, "batch_size", "at least 1"),
                  (self.learning_rate > 0, "learning_rate", "positive"), (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
                  (self.weight_decay >= 0, "weight_decay", "non-negative"),
                  (self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}"),
                  (all(0 < m < 1 for m in self.milestones), "milestones", "fractions of training in (0, 1)"),
                  (self.warmup_epochs >= 0, "warmup_epochs", "non-negative"),
                  (self.crop_padding is None or self.crop_padding >= 0, "crop_padding", "non-negative"),
                  (self.augmentation in AUGMENTATIONS, "augmentation", f"one of {AUGMENTATIONS}"),
                  (self.checkpoint_every_steps >= 0, "checkpoint_every_steps", "non-negative"),
                  (is_seed(self.seed), "seed", "a non-negative integer")]
        check_settings("training config", self, checks)
        return self

    def with_dataset_defaults(self, split: Split) -> "TrainConfig":
        """Fills crop_padding and hflip left as None with the dataset's defaults (padding: the
        official codes' 5 for the "wanet" and "iad" recipes)."""
        padding, flip = default_augmentation(split.name, split.image_shape)
        padding = padding if self.augmentation == "crop_flip" else OFFICIAL_CROP_PADDING
        return dataclasses.replace(self, crop_padding=padding if self.crop_padding is None else self.crop_padding,
                                   hflip=flip if self.hflip is None else self.hflip)


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; checkpointed whole for resumption."""

    step: jax.Array  # int32 scalar: optimiser steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array  # uint32 [2]: split once per step for augmentation and transforms

    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """The step -> learning-rate function of `config` over `total_steps` optimiser steps."""
    warmup = int(round(config.warmup_epochs * total_steps / config.epochs))
    main = total_steps - warmup
    if config.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(config.learning_rate, max(main, 1))
    elif config.schedule == "multistep":
        bounds = {int(round(m * total_steps)) - warmup: config.gamma for m in config.milestones}
        schedule = optax.piecewise_constant_schedule(config.learning_rate, bounds)
    else:
        schedule = optax.constant_schedule(config.learning_rate)
    if warmup == 0:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup), schedule], [warmup])


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """PyTorch-style SGD: weight decay added to the gradient, then momentum, then the schedule."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(learning_rate_schedule(config, total_steps), momentum=config.momentum or None,
                  nesterov=config.nesterov))


def create_train_state(variables: dict, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A step-0 state around `variables` ({'params', 'batch_stats'}) with a fresh optimiser."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                      key=jax.random.PRNGKey(seed))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of logits [B, K] against int labels [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def sgd_update(model: nn.Module, tx: optax.GradientTransformation, state: TrainState, x: jax.Array,
               labels: jax.Array) -> tuple[TrainState, dict]:
    """One optimiser step on CE(model(x, train=True), labels), batch statistics updated.

    x: float images [B, H, W, C] in [0, 1]; labels: int [B]. Returns the state with step + 1
    (its key unchanged) and metrics {'loss': mean loss, 'correct': correct predictions}.
    """

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
        return cross_entropy(logits, labels), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
    return state, {"loss": loss, "correct": jnp.sum(jnp.argmax(logits, -1) == labels)}


BatchTransform = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True, eq=False)
class BeforeAugmentation:
    """Marks a batch transform that sees the batch before the augmentation (crop, flip), whose
    output is then augmented: WaNet's official order, where the warped images go through the
    random crop and flip. An unmarked transform sees the augmented batch. Hashed by identity,
    as plain transforms are (`backdoor_core.fit.compiled_train_step` caches on it)."""

    transform: BatchTransform

    def __call__(self, key, images, labels):
        return self.transform(key, images, labels)


def training_batch(aug_key: jax.Array, transform_key: jax.Array, images: jax.Array, labels: jax.Array, *,
                   crop_padding: int, hflip: bool, batch_transform: BatchTransform | None = None,
                   augmentation: str = "crop_flip") -> tuple[jax.Array, jax.Array]:
    """The batch one training step learns from: float images [B,H,W,C] in [0, 1] and labels [B].

    Images (uint8 or float) are augmented with `aug_key` (`backdoor_core.augment.augment`: the
    `augmentation` recipe, by default a random crop with zero padding and an optional flip) and
    passed through `batch_transform(transform_key, images, labels)` if given (on-the-fly
    poisoning): after the augmentation, or before it if the transform is wrapped in
    `BeforeAugmentation`."""
    x = to_float(images)
    first = isinstance(batch_transform, BeforeAugmentation)
    if first:
        x, labels = batch_transform(transform_key, x, labels)
    x = augment(aug_key, x, augmentation, crop_padding, hflip)
    if batch_transform is not None and not first:
        x, labels = batch_transform(transform_key, x, labels)
    return x, labels


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, mesh, *, crop_padding: int,
                    hflip: bool, batch_transform: BatchTransform | None = None, augmentation: str = "crop_flip"):
    """Builds the jitted step (state, images uint8 [B,H,W,C], labels [B]) -> (state, metrics).

    The batch is augmented on device and poisoned by `batch_transform` if given
    (`training_batch`), then one SGD step is taken. The input state is donated.
    Metrics: {'loss': mean loss, 'correct': number of correct predictions}.
    """

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        key, aug_key, transform_key = jax.random.split(state.key, 3)
        x, labels = training_batch(aug_key, transform_key, images, labels, crop_padding=crop_padding, hflip=hflip,
                                   batch_transform=batch_transform, augmentation=augmentation)
        new_state, metrics = sgd_update(model, tx, state, x, labels)
        return new_state.replace(key=key), metrics

    rep = replicated(mesh)
    return jax.jit(train_step, donate_argnums=0, out_shardings=(rep, rep))


@functools.partial(jax.jit, static_argnums=0)
def _eval_logits(model: nn.Module, variables: dict, images: jax.Array) -> jax.Array:
    return model.apply(variables, to_float(images), train=False)


def predict_logits(model: nn.Module, variables: dict, images: np.ndarray, *, mesh=None,
                   batch_size: int = 500) -> np.ndarray:
    """Eval-mode logits [N, K] for images [N, H, W, C] (uint8 or float in [0, 1]).

    Runs fixed-size batches (the last one zero-padded) split over the mesh, so one compiled
    program serves any N.
    """
    check_pixels(images)
    mesh = mesh or make_mesh()
    batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
    variables = replicate(mesh, variables)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start:start + batch_size])
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(_eval_logits(model, variables, shard_batch(mesh, chunk)))[:n])
    return np.concatenate(out)


def predict(model: nn.Module, variables: dict, images: np.ndarray, **kw) -> np.ndarray:
    """Predicted classes [N] (int32) for images [N, H, W, C]; see `predict_logits`."""
    return predict_logits(model, variables, images, **kw).argmax(-1).astype(np.int32)


EvalFn = Callable[[dict], dict]


def clean_eval_fn(model: nn.Module, test: Split, mesh=None) -> EvalFn:
    """An eval function variables -> {'test_acc': C-Acc on `test`}."""
    return lambda variables: {"test_acc": clean_accuracy(predict(model, variables, test.images, mesh=mesh), test.labels)}
