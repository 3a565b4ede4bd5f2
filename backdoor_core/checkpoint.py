"""Orbax checkpoints: resumable training state and saved model variables.

`TrainCheckpoints` wraps an Orbax `CheckpointManager` that keeps the last few training states
(everything a resume needs), written atomically. `save_variables` / `load_variables` store a
model's {'params', 'batch_stats'}; loading first compares the stored tree's shapes with the
expected architecture so a mismatch gives one clear message rather than an Orbax traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from backdoor_core.errors import CheckpointError


def drop_closed_loop_reports() -> None:
    """Installs (once) a `sys.unraisablehook` that drops RuntimeError('Event loop is closed') and
    passes every other report to the hook it replaces.

    When an Orbax restore fails on one array (a truncated data file), tensorstore's reads of the
    others are still in flight; Orbax closes its asyncio loop on the way out, and each read that
    then completes raises that error in a callback, which Python prints as a traceback after our
    one-line CheckpointError (4 loads in 8 within a second here). Nothing is lost by dropping them:
    the restore has already failed and said why."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_loop = True
    sys.unraisablehook = hook


def abstract_tree(tree):
    """The shape/dtype skeleton of a pytree of arrays (what Orbax restores into)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _stored_shapes(path: Path) -> dict:
    """{'a/b/c': shape} for every array stored in the Orbax checkpoint at `path`."""
    try:
        # The handler reads the item's own metadata: a CheckpointManager step's item folder has no
        # step-level _CHECKPOINT_METADATA, for which the Checkpointer logs a warning on every resume.
        metadata = ocp.StandardCheckpointHandler().metadata(Path(path))
        tree = getattr(metadata, "tree", metadata)
    except Exception as e:  # Orbax raises several kinds for unreadable folders.
        raise CheckpointError(f"checkpoint {path} is missing or corrupt ({type(e).__name__}: {e})") from None
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(v.shape) for k, v in flat}


def check_compatible(path: Path, expected, what: str) -> None:
    """Raises CheckpointError naming the first array whose presence or shape differs."""
    stored = _stored_shapes(path)
    flat = jax.tree_util.tree_flatten_with_path(expected)[0]
    wanted = {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(v.shape) for k, v in flat}
    for name in sorted(set(stored) | set(wanted)):
        if stored.get(name) != wanted.get(name):
            raise CheckpointError(
                f"checkpoint {path} does not fit {what}: array {name!r} is stored with shape "
                f"{stored.get(name, 'absent')} but the model expects {wanted.get(name, 'absent')} "
                "(a checkpoint of another architecture, width or number of classes?)")


def save_variables(path: Path, variables) -> None:
    """Writes a pytree of arrays to `path` (a new directory), atomically. Never overwrites."""
    path = Path(path).absolute()
    if path.exists():
        raise CheckpointError(f"refusing to overwrite the existing checkpoint {path}")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, variables)
    checkpointer.wait_until_finished()


def load_variables(path: Path, like, what: str = "the model"):
    """Restores the pytree stored at `path` into the structure, shapes and dtypes of `like`."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    check_compatible(path, like, what)
    try:
        return ocp.StandardCheckpointer().restore(path, abstract_tree(like))
    except Exception as e:
        drop_closed_loop_reports()
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from None


class TrainCheckpoints:
    """The resumable training states of one run, under `directory`, last `max_to_keep` kept."""

    def __init__(self, directory: Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        """Saves `state` as step `step` (atomically: a crash leaves the previous one intact)."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def restore(self, like, step: int | None = None):
        """Restores step `step` (default: latest) into the structure of `like`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint under {self.directory}")
        check_compatible(self.directory / str(step) / "default", like, "the training state")
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_tree(like)))
        except Exception as e:
            drop_closed_loop_reports()
            raise CheckpointError(f"checkpoint {self.directory / str(step)} could not be read "
                                  f"({type(e).__name__}: {e})") from None

    def close(self) -> None:
        self._manager.close()
