"""Per-step cost of IAD's two training programs against a plain classifier step, at CIFAR-10
shapes (PreAct-ResNet-18 x1/4, batch 128), to size an IAD teacher for a CPU.

  PYTHONPATH=. python experiments/scripts/bench_iad_cpu.py [--reps 5] [--arch 32,3 16,3 16,2]

IAD trains in two programs (attacks/iad.py): the mask generator alone for `mask_epochs` epochs
(each step runs it forward and backward on the batch, 128 images, and pairs each output with a
shuffled one; the official code's two passes, on the batch and its shuffle, are timed beside it), then
joint steps (a classifier step whose batch has 20% of its images triggered by both generators,
the pattern generator updated too). Each program is compiled once, then timed over `reps`
steps after one warm-up step; the lines print seconds per step and the ratio to the plain
classifier step timed in the same run (the ratio is what carries over to a busy or another
machine). Random uint8 images stand in for CIFAR-10: the cost does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attacks import iad
from attacks.base import AttackConfig
from backdoor_core.augment import to_float
from backdoor_core.models import ModelSpec, build_model, init_variables
from backdoor_core.sharding import make_mesh, replicate, shard_batch
from backdoor_core.train import TrainConfig, create_train_state, make_optimizer, make_train_step

SHAPE, BATCH, CLASSES = (32, 32, 3), 128, 10


def two_pass_mask_step(params: iad.IADParams, channels: int, depth: int, tx):
    """The pre-training step as the official code computes it (the mask generator on the batch and
    on its shuffle, 2 x B images), the peer of `iad.make_mask_step`'s single pass."""

    def step(m_params, opt_state, images, key):
        x = to_float(images)
        x2 = x[jax.random.permutation(key, x.shape[0])]

        def loss_fn(p):
            m1, m2 = jnp.split(iad.generate_mask(p, jnp.concatenate([x, x2]), channels, depth), 2)
            density = jnp.mean(jax.nn.relu(m1 - params.mask_density))
            return params.lambda_norm * density + params.lambda_div * iad.diversity_loss(x, x2, m1, m2)

        loss, grads = jax.value_and_grad(loss_fn)(m_params)
        updates, opt_state = tx.update(grads, opt_state, m_params)
        return optax.apply_updates(m_params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def timed(step, carry, args, reps: int) -> float:
    """Mean seconds of `carry = step(carry, *args)[...]` over `reps` calls after one warm-up call."""
    carry = step(carry, *args)
    jax.block_until_ready(carry)
    start = time.perf_counter()
    for _ in range(reps):
        carry = step(carry, *args)
    jax.block_until_ready(carry)
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--arch", nargs="+", default=["32,3", "16,3", "16,2"],
                        help="generator base_channels,depth pairs (the official CIFAR-10 one is 32,3)")
    args = parser.parse_args()
    mesh = make_mesh()
    rng = np.random.default_rng(0)
    images = shard_batch(mesh, rng.integers(0, 256, (BATCH, *SHAPE), dtype=np.uint8))
    labels = shard_batch(mesh, rng.integers(0, CLASSES, (BATCH,), dtype=np.int32))
    spec = ModelSpec("preact_resnet18", CLASSES, SHAPE, width=0.25, mean=(0.5,) * 3, std=(0.25,) * 3)
    module, config = build_model(spec), TrainConfig(epochs=15, batch_size=BATCH, learning_rate=0.1)
    tx = make_optimizer(config, 1000)
    variables = jax.device_get(init_variables(spec, jax.random.PRNGKey(0)))  # host copies: steps donate
    plain = make_train_step(module, tx, mesh, crop_padding=4, hflip=True)
    base = timed(lambda s, x, y: plain(s, x, y)[0], replicate(mesh, create_train_state(variables, tx, 0)),
                 (images, labels), args.reps)
    print(f"classifier step (PreAct-18 x1/4, batch {BATCH}): {base:.3f} s  (ratio 1.00)")
    key = np.asarray(jax.random.PRNGKey(1))  # a host copy: the joint step donates its state (key included)
    for pair in args.arch:
        channels, depth = (int(v) for v in pair.split(","))
        params = iad.IADParams(base_channels=channels, depth=depth)
        g, m = jax.device_get(iad.init_generators(key, SHAPE, channels, depth))
        m_tx, m_step = iad._mask_program(params, channels, depth, mesh)
        mask = timed(lambda c, x, k: m_step(c[0], c[1], x, k)[:2], (replicate(mesh, m), replicate(mesh, m_tx.init(m))),
                     (images, key), args.reps)
        two = two_pass_mask_step(params, channels, depth, m_tx)
        mask2 = timed(lambda c, x, k: two(c[0], c[1], x, k)[:2], (replicate(mesh, m), replicate(mesh, m_tx.init(m))),
                      (images, key), args.reps)
        tx_g = iad.generator_optimizer(params, config, 1000)
        joint_step = iad.make_iad_step(module, tx, tx_g, mesh, params, AttackConfig(name="iad"), CLASSES,
                                       (channels, depth), BATCH, crop_padding=4, hflip=True)
        state = iad.IADState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                             generator=g, generator_opt_state=tx_g.init(g), mask_generator=m, key=key)
        joint = timed(lambda s, x, y: joint_step(s, x, y)[0], replicate(mesh, state), (images, labels), args.reps)
        print(f"generators {channels} channels, depth {depth}: mask step {mask:.3f} s (ratio {mask / base:.2f}; "
              f"two-pass step of the official code {mask2:.3f} s, ratio {mask2 / base:.2f}, {mask2 / mask:.2f}x ours), "
              f"joint step {joint:.3f} s (ratio {joint / base:.2f})")


if __name__ == "__main__":
    main()
