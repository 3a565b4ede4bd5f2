"""How far the first DHBE (or DFAD) iterations move the student, and what that costs in C-Acc.

  PYTHONPATH=. python experiments/scripts/dhbe_early_drift.py RUN_DIR [--defense dhbe|dfad] \
      [--variant cpu] [--iterations 6] [--subset 3000] [--layers-at 3 6] [--set student_lr=0.005 ...]

RUN_DIR is a finished attack run (the teacher). After G's warm-up and after each of the first
`--iterations` iterations of the `erase_dhbe.py` variant's settings, prints the student's accuracy on a
fixed random subset of the clean test set (seed 0, `--subset` images, all classes), the
iteration's mean D and R, and the L2 distance of the student's parameters from the teacher's; at
the iterations in `--layers-at`, the 8 parameter arrays that moved most relative to their own
norm. Diagnostic only (issue 4's C-Acc question): the schedule is that of the whole run, so
iteration i here is iteration i of `experiments.erase` with the same settings.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backdoor_core.metrics import clean_accuracy
from backdoor_core.sharding import make_mesh, replicate
from backdoor_core.train import predict
from dhbe_jax import DHBEConfig
from dhbe_jax.erase import compiled_iteration
from dhbe_jax.step import init_state, make_generator_warmup
from experiments.common import dataclass_from_config, output_dir
from experiments.configs.erase_dhbe import get_config
from experiments.defenses.common import load_attack_run


def parameter_distance(params, reference) -> float:
    """L2 norm of (params - reference) over every array of the two same-structured pytrees."""
    return float(optax.global_norm(jax.tree.map(jnp.subtract, params, reference)))


def most_moved(params, reference, k: int = 8) -> list[tuple[float, float, str]]:
    """The k arrays with the largest |a - b| / |b|: (relative, absolute, path), largest first."""
    base = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
    rows = [(float(jnp.linalg.norm(a - base[path]) / (jnp.linalg.norm(base[path]) + 1e-12)),
             float(jnp.linalg.norm(a - base[path])), jax.tree_util.keystr(path))
            for path, a in jax.tree_util.tree_flatten_with_path(params)[0]]
    return sorted(rows, reverse=True)[:k]


def parse_overrides(items: list[str], config: DHBEConfig) -> dict:
    """{'name': value} from ['name=value', ...]; values as Python literals (0.005, False, (3, 5))."""
    fields = {f.name for f in dataclasses.fields(config)}
    overrides = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        try:
            overrides[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--set {item!r}: {text!r} is not a Python literal (a number, True/False, a tuple)")
    return overrides


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("--defense", choices=("dhbe", "dfad"), default="dhbe")
    parser.add_argument("--variant", default="cpu")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--subset", type=int, default=3000)
    parser.add_argument("--layers-at", type=int, nargs="*", default=[3, 6])
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="DHBEConfig overrides")
    args = parser.parse_args()

    run = load_attack_run(output_dir(args.run))
    config = dataclass_from_config(DHBEConfig, get_config(args.variant).dhbe)
    config = dataclasses.replace(config, **parse_overrides(args.set, config))
    if args.defense == "dfad":
        config = dataclasses.replace(config, lam=0.0)
    pick = np.random.default_rng(0).permutation(len(run.test.labels))[:args.subset]
    mesh = make_mesh()
    images, labels = run.test.images[pick], run.test.labels[pick]
    accuracy = lambda v: clean_accuracy(predict(run.module, v, images, mesh=mesh), labels)
    players, iteration = compiled_iteration(run.spec, config, mesh)
    state = replicate(mesh, init_state(players, run.variables, config, jax.random.PRNGKey(0)))
    teacher = replicate(mesh, run.variables)
    if config.generator_warmup:
        state, _ = make_generator_warmup(players, config, tuple(run.spec.image_shape), mesh)(state, teacher)
    print(f"teacher acc {accuracy(run.variables):.4f}; after G's warm-up (student untouched) "
          f"{accuracy(jax.device_get(state.student)):.4f}", flush=True)
    for i in range(1, args.iterations + 1):
        state, metrics = iteration(state, teacher)
        student = jax.device_get(state.student)
        print(f"iteration {i}: acc {accuracy(student):.4f}  D {float(metrics['D']):.3f}  R {float(metrics['R']):.3f}"
              f"  |W - W_teacher| {parameter_distance(student['params'], run.variables['params']):.4f}", flush=True)
        if i in args.layers_at:
            for rel, absolute, path in most_moved(student["params"], run.variables["params"]):
                print(f"    relative {rel:.4f}  absolute {absolute:.4f}  {path}", flush=True)


if __name__ == "__main__":
    main()
