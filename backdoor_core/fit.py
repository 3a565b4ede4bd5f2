"""The resumable training loop shared by clean training and backdoor attacks.

`fit(spec, train, config, run_dir)` opens (or resumes) a run directory, trains with the
jitted step of `backdoor_core.train`, checkpoints the whole `TrainState`, evaluates after each
epoch, appends the history, and finally saves the model and marks the record complete.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
from tqdm import tqdm

from backdoor_core import rundir
from backdoor_core.checkpoint import TrainCheckpoints, save_variables
from backdoor_core.data import Split, batch_indices, steps_per_epoch
from backdoor_core.errors import InputError, check_run_counts
from backdoor_core.interrupt import stop_requested
from backdoor_core.models import ModelSpec, build_model, init_variables
from backdoor_core.sharding import check_batch_size, make_mesh, replicate, shard_batch
from backdoor_core.train import (BatchTransform, EvalFn, TrainConfig, TrainState, create_train_state,
                                 make_optimizer, make_train_step)


@dataclasses.dataclass
class FitResult:
    """What `fit` returns: final variables, the history rows, and whether training finished."""

    variables: dict
    history: list[dict]
    complete: bool
    run_dir: Path


def check_split_fits(split: Split, spec: ModelSpec, what: str = "training data") -> None:
    """Raises InputError if the split's image shape or classes do not match the model spec."""
    if split.image_shape != tuple(spec.image_shape):
        raise InputError(f"{what}: images are {split.image_shape}; model {spec.name} expects {tuple(spec.image_shape)}")
    if split.num_classes != spec.num_classes:
        raise InputError(f"{what}: {split.num_classes} classes; model {spec.name} has {spec.num_classes} outputs")


def fit(spec: ModelSpec, train: Split, config: TrainConfig, run_dir: Path, *, mesh=None,
        eval_fn: EvalFn | None = None, batch_transform: BatchTransform | None = None,
        initial_variables: dict | None = None, record: dict | None = None, defaults: dict | None = None,
        stop_after_steps: int | None = None, progress: bool = True) -> FitResult:
    """Trains `spec` on `train` into `run_dir`, resuming it if it holds an unfinished run.

    Args:
      spec: the architecture; train: the (possibly poisoned) training split.
      config: training settings; None augmentation fields take the dataset's defaults.
      run_dir: the run directory (created, or resumed if unfinished with the same config).
      mesh: device mesh (default: all devices); the batch must divide over it.
      eval_fn: variables -> dict of metrics, run after each epoch and at the end.
      batch_transform: jittable (key, images, labels) -> (images, labels) applied to every
        augmented training batch (on-the-fly poisoning).
      initial_variables: start from these instead of a fresh initialisation.
      record: extra fields for record.json; its 'config' entries join the resume check.
      defaults: the default values of `record['config']`'s other entries, record-shaped (e.g.
        {"attack": {...}}): a setting an unfinished run's older record lacks counts as equal when
        it is left at its default (`rundir.open_run`); the training config's own defaults are
        added here.
      stop_after_steps: stop (after checkpointing) once this many steps are done, leaving the
        run resumable (at an epoch's last step, after that epoch's evaluation and history row);
        used for time-boxed sessions and resume tests.
    Returns:
      FitResult with the final variables (host arrays) and the history.
    """
    config = config.with_dataset_defaults(train).validate()
    check_run_counts("training run", stop_after_steps=stop_after_steps)
    mesh = mesh or make_mesh()
    check_batch_size(config.batch_size, mesh)
    check_split_fits(train, spec)
    spe = steps_per_epoch(len(train), config.batch_size)
    if spe == 0:
        raise InputError(f"training data: {len(train)} images is less than one batch of {config.batch_size}")
    record = dict(record or {})
    record["config"] = {**record.get("config", {}), "train": dataclasses.asdict(config)}
    record = {"kind": "train", "dataset": train.name, "model": spec.to_dict(), **record}
    # The seed lives in the state, not the step: runs differing only in it share a program.
    tx, step_fn = compiled_train_step(spec, dataclasses.replace(config, seed=0), spe * config.epochs, mesh,
                                      batch_transform)
    with rundir.open_run(run_dir, record, with_train_defaults(defaults)) as (run_dir, resuming):
        checkpoints = TrainCheckpoints(run_dir / rundir.CHECKPOINTS, config.max_to_keep)
        state = _initial_state(spec, config, tx, initial_variables)
        if resuming and checkpoints.latest_step() is not None:
            state = checkpoints.restore(state)
            rundir.truncate_history(run_dir, int(state.step))
        state, complete = _run_epochs(step_fn, replicate(mesh, state), train, config, mesh, checkpoints,
                                      run_dir, eval_fn, stop_after_steps, progress)
        variables = jax.device_get(state.variables())
        if complete:
            save_variables(run_dir / rundir.MODEL, variables)
            final = eval_fn(variables) if eval_fn else {}
            rundir.update_record(run_dir, status="complete", metrics=final, steps=int(state.step))
        checkpoints.close()
    return FitResult(variables, rundir.read_history(run_dir), complete, run_dir)


def with_train_defaults(defaults: dict | None = None) -> dict:
    """`defaults` (record-shaped defaults of a run's `record['config']`, see `rundir.open_run`) with
    the TrainConfig's field defaults under "train": a training run recorded before a TrainConfig
    field existed (e.g. `augmentation`) resumes when the field is left at its default."""
    return {**(defaults or {}), "train": dataclasses.asdict(TrainConfig())}


@functools.lru_cache(maxsize=8)
def compiled_train_step(spec: ModelSpec, config: TrainConfig, total_steps: int, mesh,
                        batch_transform: BatchTransform | None):
    """(optimiser, jitted train step) for these settings; cached so that runs with the same
    settings in one process (a resumed run, clean runs of several seeds, the tests) share one
    compiled program. `batch_transform` is keyed by identity."""
    tx = make_optimizer(config, total_steps)
    return tx, make_train_step(build_model(spec), tx, mesh, crop_padding=config.crop_padding, hflip=config.hflip,
                               batch_transform=batch_transform, augmentation=config.augmentation)


def _initial_state(spec: ModelSpec, config: TrainConfig, tx, initial_variables: dict | None) -> TrainState:
    init_key, state_seed = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = initial_variables or init_variables(spec, init_key)
    return create_train_state(variables, tx, int(jax.random.randint(state_seed, (), 0, 2**31 - 1)))


def _run_epochs(step_fn, state: TrainState, train: Split, config: TrainConfig, mesh, checkpoints,
                run_dir: Path, eval_fn, stop_after_steps, progress) -> tuple[TrainState, bool]:
    """Runs the remaining epochs from `state.step`; returns (state, finished)."""
    spe = steps_per_epoch(len(train), config.batch_size)
    step = int(state.step)
    every = config.checkpoint_every_steps
    for epoch in range(step // spe, config.epochs):
        order = list(batch_indices(len(train), config.batch_size, seed=config.seed, epoch=epoch))
        order = order[step - epoch * spe:]
        start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(order, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for idx in bar:
            images, labels = shard_batch(mesh, train.images[idx], train.labels[idx])
            state, metrics = step_fn(state, images, labels)
            step += 1
            # Device scalars are summed without a host sync, so the next batch is queued early.
            loss_sum = loss_sum + metrics["loss"] * len(idx)
            correct = correct + metrics["correct"]
            seen += len(idx)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}", refresh=False)
            # A step budget or a Ctrl-C / SIGTERM under the CLI stops mid-epoch here, or at the
            # epoch's end below, after its evaluation: a resumed run starts with the next epoch,
            # so stopping here at an epoch's last step would lose that epoch's history row.
            budget_spent = stop_after_steps is not None and step >= stop_after_steps
            if (budget_spent and step % spe) or (stop_requested() and step % spe):
                checkpoints.save(step, state)
                return state, False
            if every and step % every == 0 and step % spe:
                checkpoints.save(step, state)
        seconds = time.perf_counter() - start
        row = {"epoch": epoch + 1, "step": step, "train_loss": float(loss_sum) / max(seen, 1),
               "train_acc": int(correct) / max(seen, 1), "epoch_time_s": seconds, "images_per_s": seen / seconds}
        if eval_fn is not None:
            row.update(eval_fn(jax.device_get(state.variables())))
        rundir.append_history(run_dir, row)
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        checkpoints.save(step, state)
        if (stop_after_steps is not None and step >= stop_after_steps) or stop_requested():
            return state, epoch + 1 == config.epochs
    return state, True
