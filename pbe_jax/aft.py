"""AFT: adversarial fine-tuning with a clean set, PBE's model-repair setting (Mu et al., CVPR 2023).

The defender holds the backdoored model and a (small) clean set. Algorithm (`aft`):
  1. Fine-tune the model on the clean set for `epochs` (20) epochs with PBE's optimiser (SGD,
     lr 1e-3 constant, momentum 0.9, wd 5e-4, batch 128) and augmentation;
  2. in the first `adversarial_epochs` (3) epochs every minibatch is replaced by its untargeted
     PGD adversarial examples (eps 6/255, alpha 1.2/255, 7 steps), the rest is plain fine-tuning.
  3. Evaluate every `eval_every_epochs` and at the end (log only), checkpoint after each epoch
     (a re-run resumes after the last finished epoch); return the final model.
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
from backdoor_core.train import EvalFn, create_train_state
from pbe_jax.finetune import AdversarialSchedule, FinetuneConfig, finetune_epochs, make_trainer


@dataclasses.dataclass(frozen=True)
class AFTConfig(FinetuneConfig):
    """AFT settings (official values); optimiser, PGD and augmentation: `FinetuneConfig`.

    Attributes:
      epochs: fine-tuning epochs on the clean set.
      adversarial_epochs: leading epochs in which every minibatch is adversarial.
      eval_every_epochs: how often eval_fn runs (it always runs after the last epoch).
      seed: batch order, augmentation and PGD keys.
    """

    epochs: int = 20
    adversarial_epochs: int = 3
    eval_every_epochs: int = 1
    seed: int = 0

    def validate(self, num_images: int | None = None) -> "AFTConfig":
        """Returns self, or raises InputError naming the first bad setting."""
        self.validate_finetune()
        checks = [(self.epochs >= 1, "epochs", "at least 1"),
                  (0 <= self.adversarial_epochs <= self.epochs, "adversarial_epochs", f"in [0, epochs = {self.epochs}]"),
                  (self.eval_every_epochs >= 1, "eval_every_epochs", "at least 1"),
                  (is_seed(self.seed), "seed", "a non-negative integer")]
        check_settings("AFT", self, checks)
        if num_images is not None and num_images < self.batch_size:
            raise InputError(f"AFT: the clean set has {num_images} images, fewer than one batch of {self.batch_size}; "
                             "expected a larger clean set or a smaller batch_size")
        return self


def aft(model: nn.Module, variables: dict, clean: Split, config: AFTConfig = AFTConfig(), *,
        eval_fn: EvalFn | None = None, mesh=None, run_dir: Path | None = None,
        stop_after_epochs: int | None = None, progress: bool = True) -> tuple[dict, list[dict]]:
    """Erases the backdoor of `model` with `variables` by adversarial fine-tuning on `clean`.

    Args mirror `pbe_jax.pbe` (stop_after_epochs: stop, checkpointed, after that many epochs).
    Returns (variables after the last epoch run, history rows with 'event' 'start' or 'epoch').
    """
    check_argument("AFT", "clean", clean, Split, SPLIT_EXPECTED)
    check_argument("AFT", "config", config, AFTConfig, "a pbe_jax.AFTConfig")
    config = dataclasses.replace(config, augment=config.augment.resolve(clean),
                                 schedule_steps=max(1, config.epochs * (len(clean) // config.batch_size)))
    config.validate(len(clean))
    check_variables_fit(model, variables, clean.image_shape, "AFT: variables")
    check_run_counts("AFT run", stop_after_epochs=stop_after_epochs)
    mesh = mesh or make_mesh()
    check_batch_size(config.batch_size, mesh)
    trainer = make_trainer(model, config.finetune_config(), mesh)
    state = create_train_state(variables, trainer.tx, config.seed)
    checkpoints = TrainCheckpoints(Path(run_dir) / rundir.CHECKPOINTS) if run_dir else None
    done = checkpoints.latest_step() if checkpoints else None
    if done is not None:
        state = checkpoints.restore(state)
    if run_dir:
        rundir.truncate_history(run_dir, int(state.step) if done is not None else -1)
    history = rundir.read_history(run_dir) if run_dir else []
    done = done or 0

    def log(row: dict) -> None:
        history.append(row)
        if run_dir:
            rundir.append_history(run_dir, row)

    if done == 0:
        log({"event": "start", "step": 0, "epoch": 0, **(eval_fn(variables) if eval_fn else {})})

    def on_epoch(epoch: int, state, row: dict) -> None:
        if eval_fn and ((epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.epochs):
            row = {**row, **eval_fn(jax.device_get(state.variables()))}
        log({"event": "epoch", **row})
        if checkpoints:
            checkpoints.save(epoch + 1, state)

    last = config.epochs if stop_after_epochs is None else min(stop_after_epochs, config.epochs)
    state = finetune_epochs(trainer, replicate(mesh, state), clean, epochs=range(done, last),
                            schedule=AdversarialSchedule(epochs=config.adversarial_epochs), batch_size=config.batch_size,
                            seed=config.seed, mesh=mesh, on_epoch=on_epoch, progress=progress,
                            desc="AFT " if config.adversarial_epochs else "FT ",  # FT is AFT without adversarial epochs
                            stop_check=stop_requested)  # Ctrl-C / SIGTERM under the CLI: after the epoch's checkpoint
    if checkpoints:
        checkpoints.close()
    return jax.device_get(state.variables()), history


def clean_subset(split: Split, fraction: float, seed: int) -> Split:
    """A uniformly random `fraction` of a clean split (AFT's clean set in the experiments)."""
    if not 0 < fraction <= 1:
        raise InputError(f"AFT: clean fraction {fraction!r}; expected a fraction in (0, 1]")
    if not is_seed(seed):
        raise InputError(f"AFT: clean-set seed {seed!r}; expected a non-negative integer")
    count = int(np.floor(fraction * len(split) + 0.5))
    if count == 0:
        raise InputError(f"AFT: a clean fraction {fraction} of {len(split)} images is empty; expected at least one image")
    return split.subset(np.sort(np.random.default_rng(seed).choice(len(split), count, replace=False)))
