"""PBE: Progressive Backdoor Erasing (Mu, Niu, Wang, Wang, Jin, Hua, CVPR 2023; arXiv 2202.06312).

Setting: the defender holds the backdoored model and its poisoned training set (not knowing
which images are poisoned) and no clean set. Algorithm (`pbe`), as in the official code:
  1. Start subset: a uniformly random 5% of the training set (`initial_fraction`).
  2. Logits z^0 of the backdoored model on every training image, no augmentation, once.
  3. For round r = 0 .. R-1 (R = 1 + len(keep_fractions) = 4), never resetting the model:
     a. fine-tune on the current subset for `epochs_per_round` (10) epochs with SGD (lr 1e-3
        constant, momentum 0.9, wd 5e-4, batch 128) on CE of the assigned labels, where
        round 0 replaces every minibatch by its PGD adversarial examples and later rounds
        only the first `later_adversarial_batches` (31) minibatches of their first epoch
        (`pbe_jax.finetune`);
     b. evaluate (eval_fn: C-Acc, ASR, RA) and log the subset's size and, for diagnosis only,
        its true poison share;
     c. unless it is the last round: score every training image s_i = 1/2 + 1/2 cos(z_i^0,
        z_i^t) and keep the top keep_fractions[r] (20%, 50%, 70%) as the next subset
        (`pbe_jax.selection`);
     d. checkpoint the training state (a re-run resumes after the last finished round; a round
        stopped part-way resumes after its last finished epoch, from `epoch_checkpoints/`).
  4. Return the purified model (the official code never saves it and errors after the last
     round; here the caller saves it).
The optimiser state (momentum) carries over between rounds, as the model does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from backdoor_core import rundir
from backdoor_core.checkpoint import TrainCheckpoints
from backdoor_core.data import SPLIT_EXPECTED, Split
from backdoor_core.errors import InputError, check_argument, check_run_counts, check_settings, is_seed
from backdoor_core.interrupt import stop_requested
from backdoor_core.models import check_variables_fit
from backdoor_core.sharding import check_batch_size, make_mesh, replicate
from backdoor_core.train import EvalFn, TrainState, create_train_state, predict_logits
from pbe_jax.finetune import AdversarialSchedule, FinetuneConfig, finetune_epochs, make_trainer
from pbe_jax.selection import (consistency_scores, poison_stats, random_subset, score_stats,
                               select_clean_subset, subset_size)

EPOCH_CHECKPOINTS = "epoch_checkpoints"  # the state after each epoch, so a stopped round resumes mid-way


@dataclasses.dataclass(frozen=True)
class PBEConfig(FinetuneConfig):
    """PBE settings (defaults: the official code's); optimiser, PGD, augmentation: `FinetuneConfig`.

    Attributes:
      initial_fraction: share of the training set in the random start subset.
      keep_fractions: shares kept after rounds 0, 1, ...; strictly increasing, each above
        initial_fraction. Their number fixes the rounds: R = 1 + len(keep_fractions).
      epochs_per_round: fine-tuning epochs on the subset in every round (from round 1 on when
        first_round_epochs is set).
      first_round_epochs: epochs of round 0 (None: epochs_per_round, the official setting).
      first_round_adversarial_epochs: leading epochs of round 0 with every minibatch
        adversarial (None: all of them, the official setting).
      later_adversarial_batches: adversarial minibatches at the start of rounds >= 1.
      seed: start subset, batch order, augmentation and PGD keys.
    """

    initial_fraction: float = 0.05
    keep_fractions: tuple[float, ...] = (0.2, 0.5, 0.7)
    epochs_per_round: int = 10
    first_round_epochs: int | None = None
    first_round_adversarial_epochs: int | None = None
    later_adversarial_batches: int = 31
    seed: int = 0

    @property
    def rounds(self) -> int:
        return 1 + len(self.keep_fractions)

    def round_epochs(self, round_index: int) -> range:
        """Global indices of the epochs of round `round_index` (they seed its batch orders)."""
        first = self.epochs_per_round if self.first_round_epochs is None else self.first_round_epochs
        if round_index == 0:
            return range(first)
        start = first + (round_index - 1) * self.epochs_per_round
        return range(start, start + self.epochs_per_round)

    def schedule(self, round_index: int) -> AdversarialSchedule:
        """Which minibatches of round `round_index` are adversarial."""
        if round_index == 0:
            all_epochs = len(self.round_epochs(0))
            first = all_epochs if self.first_round_adversarial_epochs is None else self.first_round_adversarial_epochs
            return AdversarialSchedule(epochs=first)
        return AdversarialSchedule(epochs=0, batches=self.later_adversarial_batches)

    def validate(self, num_images: int | None = None) -> "PBEConfig":
        """Returns self, or raises InputError naming the first bad setting (sizes need num_images)."""
        self.validate_finetune()
        fractions = (self.initial_fraction, *self.keep_fractions)
        if not all(0 < f <= 1 for f in fractions):
            raise InputError(f"PBE: subset fractions {fractions} (initial_fraction, *keep_fractions); expected each in (0, 1]")
        if any(b <= a for a, b in zip(fractions, fractions[1:])):
            raise InputError(f"PBE: subset fractions {fractions} (initial_fraction, *keep_fractions) do not increase; "
                             "expected a strictly increasing sequence (the clean subset grows each round)")
        checks = [(self.epochs_per_round >= 1, "epochs_per_round", "at least 1"),
                  (self.first_round_epochs is None or self.first_round_epochs >= 1, "first_round_epochs",
                   "at least 1 or None (epochs_per_round)"),
                  (self.first_round_adversarial_epochs is None or self.first_round_adversarial_epochs >= 0,
                   "first_round_adversarial_epochs", "non-negative or None (all)"),
                  (self.later_adversarial_batches >= 0, "later_adversarial_batches", "non-negative"),
                  (is_seed(self.seed), "seed", "a non-negative integer")]
        check_settings("PBE", self, checks)
        if num_images is not None:
            smallest = subset_size(num_images, self.initial_fraction)
            if smallest < self.batch_size:
                raise InputError(f"PBE: initial_fraction {self.initial_fraction} of {num_images} training images gives "
                                 f"a subset of {smallest}, fewer than one batch of {self.batch_size}; expected a larger "
                                 "fraction, more images or a smaller batch_size")
        return self


def pbe(model: nn.Module, variables: dict, train: Split, config: PBEConfig = PBEConfig(), *,
        eval_fn: EvalFn | None = None, mesh=None, run_dir: Path | None = None,
        ground_truth: np.ndarray | None = None, stop_after_rounds: int | None = None,
        progress: bool = True) -> tuple[dict, list[dict]]:
    """Erases the backdoor of `model` with `variables` using its poisoned training split `train`.

    Args:
      model: the flax classifier; variables: its backdoored {'params', 'batch_stats'}.
      train: the poisoned training split (uint8 images, assigned labels).
      config: PBE settings; augment.hflip None takes the dataset's default.
      eval_fn: variables -> metrics dict (e.g. C-Acc, ASR, RA), run at the start and after each
        round, for the log only (never used to select anything).
      mesh: device mesh (default all devices); run_dir: where checkpoints/ and history.jsonl go
        (a run_dir holding a checkpoint is resumed after its last finished round, or after the
        last finished epoch of a round stopped part-way).
      ground_truth: indices of the truly poisoned images, for diagnostics only.
      stop_after_rounds: stop (checkpointed) once this many rounds are done.
    Returns:
      (variables after the last round run, history rows). Rows have 'event' in {'start',
      'epoch', 'round'}; round rows hold eval metrics and subset statistics.
    """
    check_argument("PBE", "train", train, Split, SPLIT_EXPECTED)
    check_argument("PBE", "config", config, PBEConfig, "a pbe_jax.PBEConfig")
    config = dataclasses.replace(config, augment=config.augment.resolve(train)).validate(len(train))
    _check_ground_truth(ground_truth, len(train))
    check_variables_fit(model, variables, train.image_shape, "PBE: variables")
    check_run_counts("PBE run", stop_after_rounds=stop_after_rounds)
    mesh = mesh or make_mesh()
    check_batch_size(config.batch_size, mesh)
    trainer = make_trainer(model, config.finetune_config(), mesh)
    z0 = predict_logits(model, variables, train.images, mesh=mesh)
    state = create_train_state(variables, trainer.tx, config.seed)
    checkpoints = TrainCheckpoints(Path(run_dir) / rundir.CHECKPOINTS) if run_dir else None
    epoch_checkpoints = TrainCheckpoints(Path(run_dir) / EPOCH_CHECKPOINTS, 1) if run_dir else None
    done, state = _resume(checkpoints, state, run_dir)
    if done == 0:
        subset = random_subset(len(train), config.initial_fraction, config.seed)
    else:  # the round's subset comes from the model at the round's start
        subset = _select(model, jax.device_get(state.variables()), train, z0, config.keep_fractions[done - 1], mesh)
    epochs_done, state = _resume_mid_round(epoch_checkpoints, state, config, done)
    if run_dir:  # rows written after the state resumed from are redone (all of them if nothing was saved)
        rundir.truncate_history(run_dir, int(state.step) if done or epochs_done else -1)
    history = rundir.read_history(run_dir) if run_dir else []
    log = _logger(history, run_dir)
    if done == 0 and not epochs_done:
        log({"event": "start", "rounds_done": 0, "step": 0, "next_subset_size": len(subset),
             **_prefixed(poison_stats(subset, ground_truth), "next_"), **(eval_fn(variables) if eval_fn else {})})
    state = replicate(mesh, state)
    last = config.rounds if stop_after_rounds is None else min(stop_after_rounds, config.rounds)
    for r in range(done, last):
        earlier = [row for row in history if row.get("event") == "epoch" and row.get("round") == r]
        state, subset, finished = _round(r, trainer, state, train, subset, z0, model, config, mesh, eval_fn,
                                         ground_truth, log, progress, earlier, epoch_checkpoints)
        if not finished:  # Ctrl-C / SIGTERM under the CLI mid-round: the epoch checkpoint resumes it
            break
        if checkpoints:
            checkpoints.save(r + 1, state)
        if stop_requested():  # Ctrl-C / SIGTERM under the CLI: stop at this round's checkpoint
            break
    if checkpoints:
        checkpoints.close()
        epoch_checkpoints.close()
    return jax.device_get(state.variables()), history


def _round(r: int, trainer, state: TrainState, train: Split, subset: np.ndarray, z0: np.ndarray, model,
           config: PBEConfig, mesh, eval_fn, ground_truth, log, progress: bool, earlier: list[dict],
           epoch_checkpoints: TrainCheckpoints | None):
    """Steps 3a-3c for round r, from after the epochs whose rows are `earlier` (a resumed round):
    returns (state, next subset, finished). Each epoch's state is saved to `epoch_checkpoints`;
    a stop request ends the round unfinished after the epoch in flight."""
    epochs = config.round_epochs(r)
    rows = list(earlier)

    def on_epoch(epoch, state, row):
        rows.append(row)
        log({"event": "epoch", "round": r, **row})
        if epoch_checkpoints is not None:
            epoch_checkpoints.save(epoch + 1, state)

    remaining = range(epochs.start + len(earlier), epochs.stop)
    state = finetune_epochs(trainer, state, train.subset(subset), epochs=remaining, schedule=config.schedule(r),
                            batch_size=config.batch_size, seed=config.seed, mesh=mesh, origin=epochs.start,
                            on_epoch=on_epoch, progress=progress, desc=f"PBE round {r} ", stop_check=stop_requested)
    if len(rows) < len(epochs):
        return state, subset, False
    variables = jax.device_get(state.variables())
    row = {"event": "round", "round": r, "rounds_done": r + 1, "step": int(state.step), "subset_size": len(subset),
           **poison_stats(subset, ground_truth), "train_loss": rows[-1]["train_loss"],
           "adversarial_batches": sum(x["adversarial_batches"] for x in rows), **(eval_fn(variables) if eval_fn else {})}
    if r + 1 < config.rounds:
        scores = consistency_scores(z0, predict_logits(model, variables, train.images, mesh=mesh))
        subset = select_clean_subset(scores, config.keep_fractions[r])
        row.update(next_subset_size=len(subset), **_prefixed(poison_stats(subset, ground_truth), "next_"),
                   **score_stats(scores, ground_truth))
    log(row)
    return state, subset, True


def _select(model, variables, train: Split, z0, fraction: float, mesh) -> np.ndarray:
    """Step 3c with the current model's logits."""
    return select_clean_subset(consistency_scores(z0, predict_logits(model, variables, train.images, mesh=mesh)), fraction)


def _resume(checkpoints: TrainCheckpoints | None, state: TrainState, run_dir) -> tuple[int, TrainState]:
    """(rounds finished, state) from the latest round checkpoint (0 and `state` if none)."""
    if checkpoints is None:
        return 0, state
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    done = checkpoints.latest_step()
    if done is None:
        return 0, state
    return int(done), checkpoints.restore(state)


def _resume_mid_round(epoch_checkpoints: TrainCheckpoints | None, state: TrainState, config: PBEConfig,
                      done: int) -> tuple[int, TrainState]:
    """(epochs of round `done` already run, state after them) from the latest epoch checkpoint if it
    lies inside that round (a round stopped part-way), else (0, `state`)."""
    if epoch_checkpoints is None or done >= config.rounds:
        return 0, state
    epochs, latest = config.round_epochs(done), epoch_checkpoints.latest_step()
    if latest is None or not epochs.start < latest < epochs.stop:
        return 0, state
    return latest - epochs.start, epoch_checkpoints.restore(state)


def _logger(history: list, run_dir):
    """A function row -> None appending to `history` and, with a run_dir, to its history.jsonl."""
    def log(row: dict) -> None:
        history.append(row)
        if run_dir:
            rundir.append_history(run_dir, row)
    return log


def _prefixed(d: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in d.items()}


def _check_ground_truth(indices, n: int) -> None:
    if indices is None:
        return
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or (len(indices) and (indices.min() < 0 or indices.max() >= n)):
        raise InputError(f"PBE: ground_truth has shape {indices.shape}, dtype {indices.dtype}; expected integer "
                         f"indices into the {n} training images")
