"""The DHBE loop: run jitted iterations, log, evaluate, checkpoint, resume.

`erase(teacher, config, rng)` returns the purified student and its history. With a
`run_dir`, it checkpoints the whole `DHBEState` every `checkpoint_every` iterations and
resumes from the latest checkpoint there, ending where an uninterrupted run ends. There is no
model selection: the final student is the result (as in the official code), or, with
`average_start` set, the mean of the students from that point on (a documented deviation).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable

import jax
from tqdm import tqdm

from backdoor_core import rundir
from backdoor_core.checkpoint import TrainCheckpoints
from backdoor_core.errors import InputError, check_argument, check_run_counts
from backdoor_core.interrupt import stop_requested
from backdoor_core.models import ModelSpec, build_model, check_variables_fit
from backdoor_core.sharding import check_batch_size, make_mesh, replicate
from dhbe_jax.step import DHBEConfig, DHBEState, init_state, make_generator_warmup, make_iteration, make_players


@dataclasses.dataclass
class EraseResult:
    """The purified student ({'params', 'batch_stats'}, host arrays), history, final state."""

    variables: dict
    history: list[dict]
    complete: bool
    state: DHBEState


def compiled_iteration(spec: ModelSpec, config: DHBEConfig, mesh):
    """(players, jitted iteration) for a model spec, config and mesh; cached so that runs with
    the same settings share one compiled program. G's warm-up runs before the game and is not
    part of the iteration, so configs that differ only in `generator_warmup` share it too."""
    return _compiled_iteration(spec, dataclasses.replace(config, generator_warmup=0), mesh)


@functools.lru_cache(maxsize=8)
def _compiled_iteration(spec: ModelSpec, config: DHBEConfig, mesh):
    players = make_players(build_model(spec), tuple(spec.image_shape), config)
    return players, make_iteration(players, config, tuple(spec.image_shape), mesh)


def check_erase_arguments(teacher, config: DHBEConfig, rng) -> None:
    """InputError unless `erase` got a (ModelSpec, variables) teacher whose variables fit its model,
    a valid DHBEConfig for its images and a PRNG key (each failed inside JAX or flax otherwise)."""
    if not (isinstance(teacher, tuple) and len(teacher) == 2 and isinstance(teacher[0], ModelSpec)):
        found = f"({', '.join(type(t).__name__ for t in teacher)})" if isinstance(teacher, tuple) else type(teacher).__name__
        raise InputError(f"DHBE: teacher is {found}; expected (ModelSpec, variables), e.g. (run.spec, run.variables)")
    check_argument("DHBE", "config", config, DHBEConfig, "a dhbe_jax.DHBEConfig")
    dtype = getattr(rng, "dtype", None)
    if dtype is None or not (jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or (dtype == "uint32" and rng.shape == (2,))):
        raise InputError(f"DHBE: rng is {rng!r}; expected a PRNG key, e.g. jax.random.PRNGKey(0)")
    spec, variables = teacher
    config.validate(spec.image_shape)
    check_variables_fit(build_model(spec), variables, spec.image_shape, f"DHBE: the teacher's variables ({spec.name})")


def erase(teacher: tuple[ModelSpec, dict], config: DHBEConfig, rng: jax.Array, *,
          eval_fn: Callable[[dict], dict] | None = None, mesh=None, run_dir: Path | None = None,
          log_every: int = 10, eval_every: int = 100, checkpoint_every: int = 100,
          stop_after: int | None = None, progress: bool = True) -> EraseResult:
    """Erases the backdoor of `teacher` = (spec, variables) with DHBE (DFAD when lam = 0).

    Args:
      config: DHBE settings; rng: PRNG key for the generators and latents.
      eval_fn: student variables -> metrics dict, run every `eval_every` iterations and at the end
        (for plots only: never used to pick a model); once the student average has started, also
        on the average, logged with the prefix `average_`.
      mesh: device mesh (default all devices); run_dir: where checkpoints and history go.
      stop_after: stop after this many iterations (checkpointed), leaving a resumable run; under
        `backdoor_core.interrupt.stop_on_signals` a Ctrl-C or SIGTERM stops likewise after the
        iteration in flight.
    Returns:
      EraseResult; `variables` is the final student, or the student average with `average_start`.
    """
    check_erase_arguments(teacher, config, rng)
    spec, teacher_variables = teacher
    check_run_counts("DHBE run", log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every,
                     stop_after=stop_after)
    mesh = mesh or make_mesh()
    check_batch_size(config.batch_size, mesh, "DHBE batch size")
    players, iteration = compiled_iteration(spec, config, mesh)
    state = init_state(players, teacher_variables, config, rng)
    checkpoints = TrainCheckpoints(Path(run_dir) / rundir.CHECKPOINTS) if run_dir else None
    resumed = bool(checkpoints and checkpoints.latest_step() is not None)
    if resumed:
        state = checkpoints.restore(state)
        rundir.truncate_history(run_dir, int(state.iteration))
    elif run_dir and rundir.read_history(run_dir):
        rundir.truncate_history(run_dir, -1)  # rows of an attempt stopped before its first checkpoint
    state, teacher_variables = replicate(mesh, state), replicate(mesh, teacher_variables)
    history = rundir.read_history(run_dir) if run_dir else []
    if config.generator_warmup and not resumed:  # a restored state has its warmed-up G already
        state, metrics = make_generator_warmup(players, config, tuple(spec.image_shape), mesh)(state, teacher_variables)
        row = {"step": 0, **{k: float(v) for k, v in metrics.items()}}
        history.append(row)
        if run_dir:
            rundir.append_history(run_dir, row)
    start = int(state.iteration)
    last = config.iterations if stop_after is None else min(stop_after, config.iterations)
    # elapsed_s counts the loop time of every attempt: a resumed run goes on from the last row's
    # (time between that row and the checkpoint it resumed from, and compile time, is included
    # only for the attempt that spent it).
    earlier = next((r["elapsed_s"] for r in reversed(history) if "elapsed_s" in r), 0.0)
    started = time.perf_counter() - earlier
    for i in tqdm(range(start + 1, last + 1), desc="DHBE", initial=start, total=config.iterations,
                  disable=not progress):
        state, metrics = iteration(state, teacher_variables)
        stopping = i < last and stop_requested() is not None  # Ctrl-C / SIGTERM under the CLI
        if i % log_every == 0 or i % eval_every == 0 or i == last or stopping:
            row = {"step": i, **{k: float(v) for k, v in metrics.items()},
                   "elapsed_s": round(time.perf_counter() - started, 3)}  # loop time so far, all attempts
            if eval_fn is not None and (i % eval_every == 0 or i == config.iterations):
                row.update(eval_fn(jax.device_get(state.student)))
                if config.averaged_after is not None and i > config.averaged_after:
                    row.update({f"average_{k}": v for k, v in eval_fn(jax.device_get(state.average)).items()})
            history.append(row)
            if run_dir:
                rundir.append_history(run_dir, row)
        if checkpoints and (i % checkpoint_every == 0 or i == last or stopping):
            checkpoints.save(i, state)
        if stopping:
            break
    if checkpoints:
        checkpoints.close()
    complete = int(state.iteration) >= config.iterations
    result = state.student if config.averaged_after is None else state.average
    return EraseResult(jax.device_get(result), history, complete, state)
