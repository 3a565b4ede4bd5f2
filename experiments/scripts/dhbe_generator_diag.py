"""Where does DHBE's sample generator go? The teacher's and student's predicted classes on G's
batch, and the teacher's largest logit, every 5 iterations of the `cpu` DHBE loop.

  python experiments/scripts/dhbe_generator_diag.py RUN_DIR ["generator_warmup=0, balance_weight=0.0"] [ITERATIONS]

RUN_DIR is a finished attack run; the second argument overrides DHBEConfig fields of the `cpu`
variant (experiments/configs/erase_dhbe.py). Used for the Blended collapse in
docs/results_cifar10.md: without the warm-up and class-balance term G's batches drift into the
teacher's trigger region (every image class 0, teacher logits ~70).
"""
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

from dhbe_jax import DHBEConfig
from dhbe_jax.erase import compiled_iteration
from dhbe_jax.step import _Forward, init_state, make_generator_warmup
from backdoor_core.sharding import make_mesh, replicate
from experiments.configs.erase_dhbe import VARIANTS
from experiments.defenses.common import load_attack_run

run = load_attack_run(Path(sys.argv[1]).expanduser())
overrides = eval("dict(" + (sys.argv[2] if len(sys.argv) > 2 else "") + ")")
iterations = int(sys.argv[3]) if len(sys.argv) > 3 else 40
config = dataclasses.replace(DHBEConfig(**VARIANTS["cpu"]), **overrides)
mesh = make_mesh()
players, iteration = compiled_iteration(run.spec, config, mesh)
state = init_state(players, run.variables, config, jax.random.PRNGKey(0))
teacher = replicate(mesh, run.variables)
if config.generator_warmup:
    state, _ = make_generator_warmup(players, config, tuple(run.spec.image_shape), mesh)(state, teacher)
f = _Forward(players, config, tuple(run.spec.image_shape), mesh)


def report(i, state):
    x = f.synthesize(state.generator, jax.random.PRNGKey(10_000 + i))
    t = np.asarray(f.teacher(teacher, x))
    s = np.asarray(run.module.apply(state.student, x, train=False))
    acc = run.evaluate(jax.device_get(state.student), mesh)["test_acc"] if i % 20 == 0 else float("nan")
    print(f"iter {i:3d}  teacher classes on G's batch {np.bincount(t.argmax(-1), minlength=t.shape[-1])}  "
          f"student {np.bincount(s.argmax(-1), minlength=s.shape[-1])}  max teacher logit {t.max():5.1f}  "
          f"student C-Acc {acc:.3f}", flush=True)


report(0, state)
for i in range(1, iterations + 1):
    state, _ = iteration(state, teacher)
    if i % 5 == 0:
        report(i, state)
