"""CLP as an erase-CLI defense: prune the attack run's model, evaluate, save (no data used)."""

from __future__ import annotations

import time
from pathlib import Path

from backdoor_core import rundir
from baselines import CLPConfig, clp
from experiments.common import dataclass_from_config
from experiments.defenses.common import AttackRun, finish_defense_run, with_der


def run(cfg, attack_run: AttackRun, out_dir: Path, mesh) -> dict:
    """Prunes with cfg.clp, logs one history row (metrics, pruned channels, time), saves the model."""
    start = time.perf_counter()
    variables, pruned = clp(attack_run.module, attack_run.variables, tuple(attack_run.spec.image_shape),
                            dataclass_from_config(CLPConfig, cfg.clp))
    seconds = time.perf_counter() - start
    metrics = with_der(attack_run.evaluate(variables, mesh), attack_run.teacher_metrics)
    count = sum(len(v) for v in pruned.values())
    rundir.append_history(out_dir, {"step": 1, **metrics, "pruned_channels": count, "elapsed_s": round(seconds, 3)})
    return finish_defense_run(out_dir, variables, metrics, teacher_metrics=attack_run.teacher_metrics,
                              pruned=pruned, pruned_channels=count)
