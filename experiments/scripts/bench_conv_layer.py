"""One 3x3 stride-1 conv layer, batch 128: XLA vs im2col vs Winograd, alternating, median ms.

For each layer shape and each implementation: the gradient of sum(conv(x, w)^2) with respect to
both x and w (a training step's work), to x only (PGD's work: forward + input gradient) and to
w only (forward + weight gradient); plus GFLOP/s of the first (3x the forward's FLOPs).

  PYTHONPATH=. python experiments/scripts/bench_conv_layer.py
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from backdoor_core.models.conv import im2col_conv, winograd_conv

rng = np.random.default_rng(0)
IMPLS = {"xla": lax.conv_general_dilated, "im2col": im2col_conv, "winograd": winograd_conv}
for cin, cout, hw, b in [(64, 64, 32, 128), (16, 16, 32, 128), (128, 128, 16, 128), (256, 256, 8, 128),
                         (512, 512, 4, 128), (64, 64, 8, 128)]:
    x = jnp.asarray(rng.normal(size=(b, hw, hw, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.05, jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    row = {}
    for grads, argnums in [("dx+dw", (0, 1)), ("dx", 0), ("dw", 1)]:
        fns = {}
        for name, f in IMPLS.items():
            loss = lambda x, w, f=f: (f(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn) ** 2).sum()
            fns[name] = jax.jit(jax.grad(loss, argnums=argnums))
            jax.block_until_ready(fns[name](x, w))
        t = {k: [] for k in fns}
        for _ in range(3):
            for k, g in fns.items():
                s = time.perf_counter()
                jax.block_until_ready(g(x, w))
                t[k].append(time.perf_counter() - s)
        row[grads] = {k: statistics.median(v) for k, v in t.items()}
    flop = 3 * 2 * b * hw * hw * cin * cout * 9 / 1e9
    print(f"{cin}->{cout} ch, {hw}x{hw}:",
          "; ".join(f"{g} ms " + " ".join(f"{k} {1000 * v:.0f}" for k, v in r.items()) for g, r in row.items()),
          "| dx+dw GFLOP/s " + " ".join(f"{k} {flop / v:.1f}" for k, v in row["dx+dw"].items()), flush=True)
