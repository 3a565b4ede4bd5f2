"""Adversarial fine-tuning: PBE's augmentation, the jitted PGD-in-the-loop SGD step, the epoch loop.

Mu, Niu, Wang, Wang, Jin, Hua, "Progressive Backdoor Erasing via connecting Backdoor and
Adversarial Attacks", CVPR 2023 (arXiv 2202.06312). PBE's steps 1-2 (and AFT) fine-tune the
backdoored model on its own untargeted PGD adversarial examples, labelled with the images'
assigned labels, which breaks the trigger -> target shortcut without knowing the trigger.

One training step (`make_trainer(...).step`, jitted, state donated, batch sharded):
  1. Split the state's key into the next key, an augmentation key and a PGD key.
  2. Augment the uint8 batch on device (`pbe_augment`, the official code's kornia
     `PostTensorTransform`): on 80% of the batches a random crop (zero pad 5), on half of them a
     rotation of about half the images by a uniform angle in +-10 degrees (bilinear, zero fill),
     and a horizontal flip with p 1/2 for datasets whose classes survive it (CIFAR). Before
     2026-12-07 the crop and rotation were drawn per image (p 0.8 and 0.5; `per_batch=False`).
  3. If the step is adversarial, replace the batch by untargeted L-inf PGD examples
     (`attacks.pgd.pgd`) of the current model in inference mode, against the batch's labels
     (official: eps 6/255, alpha 1.2/255, 7 steps, no random start; clipped to [0, 1]). The flag
     is static: adversarial and plain steps are two compiled programs. (One program with a
     `lax.cond` compiled once but ran 4x slower on XLA:CPU, whose convolutions inside a
     conditional's branch, like those of a rolled loop body, run far slower: an adversarial step
     at batch 128 took 13.9 s against 3.5 s for PreAct-ResNet-18 x1/4, 3.8 s against 0.94 s
     for the MNIST small CNN; `experiments/scripts/probe_cond_step.py`.)
  4. One SGD step on the cross-entropy of the train-mode model (batch statistics updated):
     PyTorch-style SGD, constant learning rate 1e-3, momentum 0.9, weight decay 5e-4.
`finetune_epochs` runs epochs of such steps; an `AdversarialSchedule` says which are adversarial.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

from attacks.pgd import PGDConfig, model_logits_fn, pgd
from backdoor_core.augment import post_tensor_transform, random_crop, random_flip, random_rotation, to_float
from backdoor_core.data import Split, batch_indices, default_augmentation, steps_per_epoch
from backdoor_core.errors import InputError, check_settings
from backdoor_core.sharding import check_batch_size, replicated, shard_batch
from backdoor_core.train import TrainConfig, TrainState, make_optimizer, sgd_update


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """PBE's training augmentation (the official code's kornia `PostTensorTransform`).

    Attributes:
      crop_padding: zero padding of the random crop; crop_prob: probability it is applied.
      rotation_degrees: rotation angle drawn uniformly in [-d, d]; rotation_prob: probability.
      hflip: random horizontal flip; None takes the dataset's default (CIFAR only).
      per_batch: True (the official code): crop_prob and rotation_prob are drawn once per batch,
        and a batch picked for rotation rotates each image with probability 1/2 (kornia's
        default; `backdoor_core.augment.post_tensor_transform`); False: both drawn per image
        (this library before 2026-12-07, and BackdoorBench's per-image FT transform).
    """

    crop_padding: int = 5
    crop_prob: float = 0.8
    rotation_degrees: float = 10.0
    rotation_prob: float = 0.5
    hflip: bool | None = None
    per_batch: bool = True

    def validate(self) -> "AugmentConfig":
        checks = [(self.crop_padding >= 0, "crop_padding", "non-negative"),
                  (0 <= self.crop_prob <= 1, "crop_prob", "a probability in [0, 1]"),
                  (0 <= self.rotation_degrees <= 180, "rotation_degrees", "in [0, 180]"),
                  (0 <= self.rotation_prob <= 1, "rotation_prob", "a probability in [0, 1]"),
                  (isinstance(self.per_batch, bool), "per_batch", "True or False")]
        check_settings("augmentation config", self, checks)
        return self

    def resolve(self, split: Split) -> "AugmentConfig":
        """hflip left as None replaced by the dataset's default (flip only for CIFAR)."""
        if self.hflip is not None:
            return self
        return dataclasses.replace(self, hflip=default_augmentation(split.name, split.image_shape)[1])


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The optimiser, attack and augmentation shared by PBE's rounds and AFT (official values).

    Attributes:
      learning_rate, momentum, weight_decay: PyTorch-style SGD.
      lr_schedule: "constant" (PBE's and AFT's) or "cosine" (BackdoorBench's FT baseline), annealed
        to 0 over `schedule_steps` optimiser steps (set by the caller from epochs x batches).
      batch_size: global minibatch (a multiple of the mesh's devices); the last short batch
        of an epoch is dropped so one compiled program serves every step.
      pgd: the adversarial examples' PGD (`PGDConfig.pbe()`).
      augment: the training augmentation (`AugmentConfig`).
    """

    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    lr_schedule: str = "constant"
    schedule_steps: int = 1
    pgd: PGDConfig = PGDConfig.pbe()
    augment: AugmentConfig = AugmentConfig()

    def finetune_config(self) -> "FinetuneConfig":
        """Only the fields above (the part a compiled step depends on)."""
        return FinetuneConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FinetuneConfig)})

    def optimizer(self) -> optax.GradientTransformation:
        """SGD with momentum and weight decay under `lr_schedule` (`backdoor_core.train.make_optimizer`)."""
        config = TrainConfig(epochs=1, batch_size=self.batch_size, learning_rate=self.learning_rate,
                             momentum=self.momentum, weight_decay=self.weight_decay, schedule=self.lr_schedule)
        return make_optimizer(config, total_steps=self.schedule_steps)  # a constant schedule ignores the length

    def validate_finetune(self) -> None:
        """Raises InputError naming the first bad optimiser, PGD or augmentation setting."""
        checks = [(self.learning_rate > 0, "learning_rate", "positive"), (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
                  (self.weight_decay >= 0, "weight_decay", "non-negative"), (self.batch_size >= 1, "batch_size", "at least 1"),
                  (self.lr_schedule in ("constant", "cosine"), "lr_schedule", "'constant' or 'cosine'"),
                  (self.schedule_steps >= 1, "schedule_steps", "at least 1")]
        check_settings(type(self).__name__, self, checks)
        self.pgd.validate()
        self.augment.validate()


@dataclasses.dataclass(frozen=True)
class AdversarialSchedule:
    """Which minibatches are adversarial: all of the first `epochs` epochs, then the first
    `batches` minibatches of the next epoch. PBE round 0: (all epochs, 0); PBE rounds >= 1:
    (0, 31); AFT: (3, 0)."""

    epochs: int
    batches: int = 0

    def is_adversarial(self, epoch: int, batch: int) -> bool:
        return epoch < self.epochs or (epoch == self.epochs and batch < self.batches)


def pbe_augment(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
    """PBE's augmentation of float images [N,H,W,C] in [0, 1] (module docstring, step 2).

    config.hflip must be resolved (a bool). Each image draws its own crop offset, angle and flip;
    whether a crop or rotation happens is drawn per batch (config.per_batch, the official code) or
    per image.
    """
    if config.per_batch:
        return post_tensor_transform(key, images, padding=config.crop_padding, crop_prob=config.crop_prob,
                                     degrees=config.rotation_degrees, rotation_prob=config.rotation_prob,
                                     hflip=config.hflip)
    crop_key, crop_on, rot_key, rot_on, flip_key = jax.random.split(key, 5)
    n = images.shape[0]
    if config.crop_padding and config.crop_prob:
        apply = jax.random.bernoulli(crop_on, config.crop_prob, (n, 1, 1, 1))
        images = jnp.where(apply, random_crop(crop_key, images, config.crop_padding), images)
    if config.rotation_degrees and config.rotation_prob:
        apply = jax.random.bernoulli(rot_on, config.rotation_prob, (n, 1, 1, 1))
        images = jnp.where(apply, random_rotation(rot_key, images, config.rotation_degrees), images)
    return random_flip(flip_key, images) if config.hflip else images


def training_inputs(model: nn.Module, config: FinetuneConfig, variables: dict, key: jax.Array,
                    images: jax.Array, labels: jax.Array, adversarial: bool) -> jax.Array:
    """Steps 2-3: the float batch [B,H,W,C] one SGD step trains on (augmented, PGD if adversarial).

    key: the step's input key (split into augmentation and PGD keys); adversarial: a Python bool
    (static: it selects the program, module docstring, step 3).
    PGD attacks `model` in inference mode with `variables` (the current model).
    """
    aug_key, pgd_key = jax.random.split(key)
    x = pbe_augment(aug_key, to_float(images), config.augment)
    return pgd(model_logits_fn(model, variables), x, labels, pgd_key, config.pgd) if adversarial else x


class Trainer(NamedTuple):
    """A compiled adversarial fine-tuning step for one (model, config, mesh).

    step(state, images uint8 [B,H,W,C], labels [B], adversarial: bool) -> (state, metrics):
      the jitted steps 1-4, state donated; one compiled program per value of `adversarial`.
    inputs(state, images, labels, adversarial) -> the float batch that step trains on (jitted
      steps 1-3; for tests and figures).
    """

    tx: optax.GradientTransformation
    step: Callable
    inputs: Callable


@functools.lru_cache(maxsize=8)
def make_trainer(model: nn.Module, config: FinetuneConfig, mesh) -> Trainer:
    """The `Trainer` of `model` under `config` (hflip resolved) on `mesh`; cached per arguments."""
    config = config.finetune_config()
    if config.augment.hflip is None:
        raise InputError("make_trainer: augment.hflip is None; resolve it for the dataset first (AugmentConfig.resolve)")
    tx = config.optimizer()

    def inputs(state: TrainState, images, labels, adversarial):
        _, key = jax.random.split(state.key)
        return training_inputs(model, config, state.variables(), key, images, labels, adversarial)

    def step(state: TrainState, images, labels, adversarial):
        next_key, key = jax.random.split(state.key)
        x = training_inputs(model, config, state.variables(), key, images, labels, adversarial)
        return sgd_update(model, tx, state.replace(key=next_key), x, labels)

    rep = replicated(mesh)
    return Trainer(tx, jax.jit(step, static_argnums=3, donate_argnums=0, out_shardings=(rep, rep)),
                   jax.jit(inputs, static_argnums=3))


EpochCallback = Callable[[int, TrainState, dict], None]


def finetune_epochs(trainer: Trainer, state: TrainState, split: Split, *, epochs: range,
                    schedule: AdversarialSchedule, batch_size: int, seed: int, mesh, origin: int = 0,
                    on_epoch: EpochCallback | None = None, progress: bool = True, desc: str = "",
                    stop_check: Callable[[], object] | None = None) -> TrainState:
    """Runs `trainer.step` over the epochs in `epochs` (a range of epoch indices, counted from 0).

    Epoch e visits split in the order batch_indices(seed=seed, epoch=e) (last short batch
    dropped); its batch b is adversarial when schedule.is_adversarial(e - origin, b).
    After each epoch on_epoch(e, state, row) gets row = {'epoch', 'step', 'train_loss',
    'train_acc', 'adversarial_batches', 'epoch_time_s'} (the loss is on the trained inputs).
    When stop_check() is truthy after an epoch (and its on_epoch), the remaining epochs are skipped.
    """
    check_batch_size(batch_size, mesh)
    if steps_per_epoch(len(split), batch_size) == 0:
        raise InputError(f"fine-tuning set of {len(split)} images is smaller than one batch of {batch_size}; "
                         "expected at least one full batch")
    for epoch in epochs:
        start, loss_sum, correct, seen, adversarial_batches = time.perf_counter(), 0.0, 0, 0, 0
        order = list(batch_indices(len(split), batch_size, seed=seed, epoch=epoch))
        for b, idx in enumerate(tqdm(order, desc=f"{desc}epoch {epoch + 1}", disable=not progress, leave=False)):
            adversarial = schedule.is_adversarial(epoch - origin, b)
            images, labels = shard_batch(mesh, split.images[idx], split.labels[idx])
            state, metrics = trainer.step(state, images, labels, bool(adversarial))
            loss_sum, correct = loss_sum + metrics["loss"] * len(idx), correct + metrics["correct"]
            seen, adversarial_batches = seen + len(idx), adversarial_batches + int(adversarial)
        row = {"epoch": epoch + 1, "step": int(state.step), "train_loss": float(loss_sum) / seen,
               "train_acc": int(correct) / seen, "adversarial_batches": adversarial_batches,
               "epoch_time_s": time.perf_counter() - start}
        if on_epoch is not None:
            on_epoch(epoch, state, row)
        if stop_check is not None and stop_check():
            break
    return state
