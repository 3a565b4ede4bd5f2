"""DHBE and DFAD as erase-CLI defenses: purify an attack run's model, write curves and grids."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from dhbe_jax import DHBEConfig, erase
from dhbe_jax import generators as gens
from dhbe_jax.erase import compiled_iteration
from dhbe_jax.triggers import add_full_triggers, add_patches
from experiments.common import dataclass_from_config
from experiments.defenses.common import AttackRun, finish_defense_run, image_grid, plot_history, with_der


def run(cfg, attack_run: AttackRun, out_dir: Path, mesh) -> dict:
    """DHBE with cfg.dhbe's settings on attack_run's model; returns the final metrics."""
    config = dataclass_from_config(DHBEConfig, cfg.dhbe)
    return _run(cfg, config, attack_run, out_dir, mesh)


def run_dfad(cfg, attack_run: AttackRun, out_dir: Path, mesh) -> dict:
    """DFAD: the same loop with lam = 0 (distillation only, no trigger generator)."""
    config = dataclasses.replace(dataclass_from_config(DHBEConfig, cfg.dhbe), lam=0.0)
    return _run(cfg, config, attack_run, out_dir, mesh)


def _run(cfg, config: DHBEConfig, attack_run: AttackRun, out_dir: Path, mesh) -> dict:
    spec = attack_run.spec
    result = erase((spec, attack_run.variables), config, jax.random.PRNGKey(cfg.seed),
                   eval_fn=lambda v: attack_run.evaluate(v, mesh), mesh=mesh, run_dir=out_dir,
                   log_every=cfg.log_every, eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
                   stop_after=cfg.stop_after)
    if not result.complete:
        return {"stopped_at": int(result.state.iteration)}
    metrics = with_der(attack_run.evaluate(result.variables, mesh), attack_run.teacher_metrics)
    curves = ("test_acc", "asr", "asr_strict", "ra", "average_test_acc", "average_asr")  # absent keys are skipped
    plot_history(result.history, curves, out_dir / "metrics.png",
                 f"{'DFAD' if config.lam == 0 else 'DHBE'} on {attack_run.attack.name}")
    plot_history(result.history, ("D", "R", "loss_student"), out_dir / "losses.png", "losses")
    _sample_grids(spec, config, result.state, mesh, out_dir)
    return finish_defense_run(out_dir, result.variables, metrics, teacher_metrics=attack_run.teacher_metrics,
                              full_sigma=config.sigma(spec.image_shape), iterations=config.iterations)


def _sample_grids(spec, config: DHBEConfig, state, mesh, out_dir: Path, n: int = 16) -> None:
    """PNG grids of G's synthetic samples and of the same samples with generated triggers."""
    players, _ = compiled_iteration(spec, config, mesh)
    state = jax.device_get(state)
    kz, kp, kf, kpos = jax.random.split(jax.random.PRNGKey(123), 4)
    x = gens.apply_train_mode(players.generator, state.generator, jax.random.normal(kz, (n, config.nz)))
    image_grid(np.asarray(x), out_dir / "synthetic_samples.png", "G(z): synthetic samples")
    if "patch" in state.trigger:
        p = gens.apply_train_mode(players.patch, state.trigger["patch"], jax.random.normal(kp, (n, config.nz_trigger)))
        image_grid(np.asarray(add_patches(kpos, x, p, per_sample=True)), out_dir / "patch_triggers.png",
                   "G(z) + generated patch triggers")
    if "full" in state.trigger:
        p = gens.apply_train_mode(players.full, state.trigger["full"], jax.random.normal(kf, (n, config.nz_trigger)))
        image_grid(np.asarray(add_full_triggers(x, p, config.sigma(spec.image_shape))), out_dir / "full_triggers.png",
                   "G(z) + generated full-image triggers")
