"""Why does CLP (u = 3) remove one teacher's backdoor and not another's? Where the trigger's
channels sit in CLP's per-layer UCLC ranking.

  PYTHONPATH=. python experiments/scripts/clp_probe.py TEACHER_RUN [TEACHER_RUN ...] [--images N] [--top K]

For every (conv, BN) pair CLP scores (`baselines.clp.conv_bn_pairs`), the channel's trigger
response is the mean over N test images (true class not the target) of relu(BN(.))'s maximum
over space (a patch lights a few positions only), triggered minus clean, divided by the
channel's standard deviation over the clean images (a per-channel effect size). Per layer the
probe prints the channel with the largest response, its effect size and its UCLC z-score within
the layer, (UCLC - mean) / std (ddof 1), which CLP prunes when above u; then the K channels of
the whole network with the largest response, and, per u, how many of those K CLP would prune
and how many channels in all. Deep layers respond to the target class itself (the trigger
makes the model see class `target`), early ones to the trigger's pixels.
Used for the BadNets/CLP finding of docs/results_cifar10.md (2026-11-29).
"""
import argparse
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from backdoor_core.augment import to_float
from baselines.clp import _get, channel_lipschitz, conv_bn_pairs
from experiments.defenses.common import load_attack_run


def bn_activations(module, variables, images: np.ndarray, batch: int = 250) -> dict:
    """{BN path: [N, C] spatial maxima of relu(BN output)} for uint8 images [N, H, W, C]."""
    def forward(x):
        _, state = module.apply(variables, to_float(x), train=False, mutable=["intermediates"],
                                capture_intermediates=lambda m, name: isinstance(m, nn.BatchNorm))
        flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
        return {tuple(k.key for k in path[:-2]): jax.nn.relu(v).reshape(v.shape[0], -1, v.shape[-1]).max(axis=1)
                for path, v in flat}

    forward = jax.jit(forward)
    parts = [jax.device_get(forward(images[i:i + batch])) for i in range(0, len(images), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def probe(run_dir: Path, num_images: int, top: int, us=(3.0, 2.5, 2.0)) -> None:
    run = load_attack_run(run_dir)
    t = run.triggered
    idx = np.random.default_rng(0).permutation(len(t.images))[:num_images]
    clean = bn_activations(run.module, run.variables, t.clean_images[idx])
    trig = bn_activations(run.module, run.variables, t.images[idx])
    rows, per_layer, counts = [], [], {u: 0 for u in us}
    params, stats = run.variables["params"], run.variables["batch_stats"]
    for pair in conv_bn_pairs(run.module, run.variables, run.test.image_shape):
        bn = _get(params, pair.bn)
        uclc = np.asarray(channel_lipschitz(_get(params, pair.conv)["kernel"], bn["scale"],
                                            _get(stats, pair.bn)["var"]))
        z = (uclc - uclc.mean()) / uclc.std(ddof=1)
        for u in us:
            counts[u] += int(np.sum(z > u))
        effect = (trig[pair.bn].mean(0) - clean[pair.bn].mean(0)) / (clean[pair.bn].std(0) + 1e-6)
        rows += [("/".join(pair.bn), c, float(effect[c]), float(z[c])) for c in range(len(z))]
        best = int(np.argmax(effect))
        per_layer.append(f"  {'/'.join(pair.bn):28s} ch {best:3d}  effect {effect[best]:6.2f}  UCLC z {z[best]:5.2f}"
                         f"  (layer's max z {z.max():.2f})")
    rows.sort(key=lambda r: -r[2])
    name = run_dir.name
    m = run.teacher_metrics
    print(f"\n== {name} ({run.attack.name}; C-Acc {100 * m.get('test_acc', np.nan):.1f}, ASR "
          f"{100 * m.get('asr', np.nan):.1f}; {len(idx)} images)")
    print("per layer, the channel the trigger excites most (effect size: triggered - clean, in clean std):")
    print("\n".join(per_layer))
    print(f"top {top} of the whole network:")
    for layer, c, e, z in rows[:top]:
        print(f"  {layer:28s} ch {c:3d}  effect {e:6.2f}  UCLC z {z:5.2f}")
    for u in us:
        caught = sum(z > u for _, _, _, z in rows[:top])
        print(f"u = {u}: prunes {counts[u]} channels in all, {caught} of the top {top} trigger channels")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    for run_dir in args.runs:
        probe(run_dir.expanduser(), args.images, args.top)


if __name__ == "__main__":
    main()
