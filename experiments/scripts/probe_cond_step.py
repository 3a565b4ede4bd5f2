"""Why PBE's adversarial flag is static: one program with `lax.cond` against two programs.

  PYTHONPATH=. python experiments/scripts/probe_cond_step.py [small_cnn|preact_resnet18] [--rounds N]

Builds PBE's fine-tuning step (`pbe_jax.finetune.make_trainer`: augmentation, PGD-7 when
adversarial, one SGD step) for a fresh model at batch 128 (small_cnn x0.5 on 28x28x1, or
PreAct-ResNet-18 x1/4 on 32x32x3) and, beside it, the same step with the flag traced and
the PGD behind a `lax.cond` (the library's form until 2026-11-28). Times both kinds of step in
alternation and prints the median seconds of each and the ratio, and how far apart the two
programs' parameters are after each step of the first round (both start from one state and see
the same batches and keys: a nonzero gap is the two programs rounding differently).
"""

import argparse
import statistics
import time

import jax
import numpy as np

from attacks.pgd import PGDConfig, model_logits_fn, pgd
from backdoor_core.augment import to_float
from backdoor_core.models import ModelSpec, build_model
from backdoor_core.sharding import make_mesh
from backdoor_core.train import create_train_state, sgd_update
from pbe_jax.finetune import AugmentConfig, FinetuneConfig, make_trainer, pbe_augment

SPECS = {"small_cnn": ModelSpec(name="small_cnn", num_classes=10, image_shape=(28, 28, 1), width=0.5,
                                mean=(0.13,), std=(0.31,)),
         "preact_resnet18": ModelSpec(name="preact_resnet18", num_classes=10, image_shape=(32, 32, 3), width=0.25,
                                      mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))}


def cond_step(model, config: FinetuneConfig, tx):
    """The step with a traced flag: PGD inside `lax.cond` (one program for both kinds)."""

    def step(state, images, labels, adversarial):
        next_key, key = jax.random.split(state.key)
        aug_key, pgd_key = jax.random.split(key)
        x = pbe_augment(aug_key, to_float(images), config.augment)
        attack = lambda x: pgd(model_logits_fn(model, state.variables()), x, labels, pgd_key, config.pgd)  # noqa: E731
        x = jax.lax.cond(adversarial, attack, lambda x: x, x)
        return sgd_update(model, tx, state.replace(key=next_key), x, labels)

    return jax.jit(step, donate_argnums=0)


def params_gap(a, b) -> float:
    """The largest absolute difference between two parameter pytrees of the same structure."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="small_cnn", choices=sorted(SPECS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cond-first", action="store_true", help="time the lax.cond step first in each pair")
    args = parser.parse_args()
    spec = SPECS[args.model]
    model = build_model(spec)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((2, *spec.image_shape), np.float32), train=False)
    config = FinetuneConfig(pgd=PGDConfig.pbe(), augment=AugmentConfig(hflip=spec.image_shape[-1] == 3))
    trainer = make_trainer(model, config, make_mesh(1))
    traced = cond_step(model, config.finetune_config(), trainer.tx)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (128, *spec.image_shape), dtype=np.uint8)
    labels = rng.integers(0, 10, 128)
    fresh = lambda: jax.tree.map(np.array, create_train_state(variables, trainer.tx, 0))  # noqa: E731 (steps donate)
    states = {"static": fresh(), "cond": fresh()}
    run = {"static": lambda s, adv: trainer.step(s, images, labels, adv),
           "cond": lambda s, adv: traced(s, images, labels, np.bool_(adv))}
    if args.cond_first:
        run = dict(reversed(list(run.items())))
    times = {(name, adv): [] for name in run for adv in (False, True)}
    gaps = []
    for r in range(args.rounds + 1):  # round 0 compiles
        for adv in (False, True):
            for name, fn in run.items():
                start = time.perf_counter()
                states[name], metrics = fn(states[name], adv)
                jax.block_until_ready(metrics)
                if r:
                    times[name, adv].append(time.perf_counter() - start)
            if not r:
                gaps.append((adv, params_gap(states["static"].params, states["cond"].params)))
    print(f"{args.model}, batch 128, backend {jax.default_backend()}, median of {args.rounds}:")
    for adv in (False, True):
        cond, static = statistics.median(times["cond", adv]), statistics.median(times["static", adv])
        print(f"  {'adversarial' if adv else 'plain':11s} step: lax.cond {cond:7.3f} s, static flag {static:7.3f} s, "
              f"ratio {cond / static:5.2f}")
    for adv, gap in gaps:
        print(f"  after a{'n adversarial' if adv else ' plain'} step, max |static - lax.cond| over the parameters: {gap:.3g}")


if __name__ == "__main__":
    main()
