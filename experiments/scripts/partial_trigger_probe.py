"""How much of a trigger does a backdoored model need? ASR along the line from clean to triggered images.

  PYTHONPATH=. python experiments/scripts/partial_trigger_probe.py RUN_DIR [--alphas 0.05 0.1 0.25 0.5 1]
      [--model OTHER_RUN_DIR] [--pgd_eps 6 32 [--num_images 500]]

PBE's observation (adversarial examples of a backdoored model land in its target) needs the
backdoor to answer a *small* change of the image: PGD climbs the gradient from the clean image
and stops at the first boundary it meets, inside a small ball. This probe measures how the
backdoor answers partial triggers: for each alpha it feeds the model x + alpha (T(x) - x) (float,
not rounded; x the test images that are not of the target class, T the run's own trigger,
`attacks.poison.triggered_test_set`) and prints the share predicted as the target (the ASR of the
partial trigger) with the median L2 and L-inf size of the change. `--pgd_eps` also runs PBE's PGD
and reports how its change lines up with the trigger's (`pgd_alignment`). `--model OTHER_RUN_DIR`
evaluates another model (e.g. a clean one of the same dataset) on this run's images and trigger:
what a partial trigger, or PGD, gives without a backdoor. Findings (docs/pbe.md, "Why the patch
stays out of reach"): along the straight line smooth triggers are not reached earlier than patches;
where PGD reaches the target it partly draws the trigger, patches included, but a patch's target
is rarely reached.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from backdoor_core import rundir
from backdoor_core.train import predict
from experiments.defenses.common import load_attack_run


def partial_triggers(clean: np.ndarray, triggered: np.ndarray, alpha: float) -> np.ndarray:
    """clean + alpha (triggered - clean) in [0, 1], float32 [N, H, W, C], from uint8 [N, H, W, C] pairs."""
    x = clean.astype(np.float32) / 255
    return x + np.float32(alpha) * (triggered.astype(np.float32) / 255 - x)


def change_sizes(clean: np.ndarray, partial: np.ndarray) -> tuple[float, float]:
    """(median L2, median L-inf) over images of partial - clean/255, in [0, 1]-pixel units."""
    delta = (partial - clean.astype(np.float32) / 255).reshape(len(clean), -1)
    return float(np.median(np.linalg.norm(delta, axis=1))), float(np.median(np.abs(delta).max(axis=1)))


def load(run_dir: Path, model_dir: Path | None = None) -> tuple:
    """(TriggeredTest of the attack run `run_dir`, module, variables of its model or of `model_dir`'s)."""
    run = load_attack_run(run_dir)
    if model_dir is None:
        return run.triggered, run.module, run.variables
    _, module, variables = rundir.load_model(model_dir)
    return run.triggered, module, variables


def probe(t, module, variables, alphas: list[float]) -> list[dict]:
    """One row per alpha: {'alpha', 'l2', 'linf' (medians, pixel units), 'target_share'} of the
    model on the non-target test images of `t` (`load`) moved alpha of the way to their triggered
    copies."""
    rows = []
    for alpha in alphas:
        partial = partial_triggers(t.clean_images, t.images, alpha)
        l2, linf = change_sizes(t.clean_images, partial)
        rows.append({"alpha": alpha, "l2": l2, "linf": linf,
                     "target_share": float(np.mean(predict(module, variables, partial) == t.targets))})
    return rows


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity [N] of each image's a [N, ...] and b [N, ...], flattened (0 where one is 0):
    PBE's selection score 1/2 + 1/2 cos (`pbe_jax.selection.consistency_scores`) mapped back."""
    from pbe_jax.selection import consistency_scores

    return 2 * consistency_scores(a.reshape(len(a), -1), b.reshape(len(b), -1)) - 1


def pgd_alignment(t, module, variables, eps: float, num_images: int, seed: int = 0) -> dict:
    """How PBE's PGD (untargeted L-inf, eps in 1/255 units, step eps/5, 7 steps, against the model's
    own predictions) moves `num_images` sampled non-target test images of `t` (`load`) relative to
    the trigger:
    {'flip_rate', 'target_share' (of the flipped), and the median cosine between the PGD change and
    the trigger's change T(x) - x over the images flipped to the target ('cos_target'), flipped
    elsewhere ('cos_other') and all ('cos_all')}; nan where a group is empty."""
    import jax

    from attacks.pgd import make_pgd_fn, pgd_dataset
    from experiments.detect import pgd_config

    pick = np.random.default_rng(seed).permutation(len(t.images))[:num_images]
    clean, trig, targets = t.clean_images[pick], t.images[pick], t.targets[pick]
    before = predict(module, variables, clean)
    pgd_fn = make_pgd_fn(module, variables, pgd_config(eps, "linf", 7))
    adv = pgd_dataset(pgd_fn, clean, before, jax.random.PRNGKey(seed))
    after = predict(module, variables, adv)
    x = clean.astype(np.float32) / 255
    cos = cosines(adv - x, trig.astype(np.float32) / 255 - x)
    flipped = after != before
    to_target = flipped & (after == targets)
    median = lambda m: float(np.median(cos[m])) if m.any() else float("nan")
    return {"flip_rate": float(flipped.mean()), "target_share": float(to_target.sum() / max(flipped.sum(), 1)),
            "cos_target": median(to_target), "cos_other": median(flipped & ~to_target), "cos_all": median(np.ones_like(flipped))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--model", type=Path, help="evaluate this run's model instead (same dataset)")
    parser.add_argument("--pgd_eps", type=float, nargs="*", default=[],
                        help="also run PBE's PGD at these L-inf radii (1/255 units) and report how its change aligns "
                             "with the trigger's")
    parser.add_argument("--num_images", type=int, default=500, help="images attacked for --pgd_eps")
    args = parser.parse_args()
    t, module, variables = load(args.run_dir, args.model)
    name = f"{args.model.name} (with {args.run_dir.name}'s trigger)" if args.model else args.run_dir.name
    print(f"{name}:\n| alpha | median L2 | median L-inf (/255) | target share |\n|---|---|---|---|")
    for row in probe(t, module, variables, args.alphas):
        print(f"| {row['alpha']:g} | {row['l2']:.2f} | {255 * row['linf']:.1f} | {100 * row['target_share']:.1f} |",
              flush=True)
    if args.pgd_eps:
        print("| PGD eps (/255) | flip rate | target share of flips | cos(PGD, trigger): to target | to other classes | all |"
              "\n|---|---|---|---|---|---|")
    for eps in args.pgd_eps:
        a = pgd_alignment(t, module, variables, eps, args.num_images)
        print(f"| {eps:g} | {100 * a['flip_rate']:.1f} | {100 * a['target_share']:.1f} | {a['cos_target']:.3f} | "
              f"{a['cos_other']:.3f} | {a['cos_all']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
