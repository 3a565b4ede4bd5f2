"""One 3x3 conv layer, forward + backward (input and kernel gradients): XLA vs im2col vs Winograd, alternating; GFLOP/s."""
import time, statistics, jax, jax.numpy as jnp, numpy as np
from jax import lax
from backdoor_core.models.conv import im2col_conv, winograd_conv
rng = np.random.default_rng(0)
for cin, cout, hw, b in [(64, 64, 32, 128), (16, 16, 32, 128), (128, 128, 16, 128), (256, 256, 8, 128), (512, 512, 4, 128), (64, 64, 8, 128)]:
    x = jnp.asarray(rng.normal(size=(b, hw, hw, cin)), jnp.float32); w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.05, jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    fns = {}
    for name, f in [("xla", lax.conv_general_dilated), ("im2col", im2col_conv), ("winograd", winograd_conv)]:
        loss = lambda x, w, f=f: (f(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn) ** 2).sum()
        g = jax.jit(jax.grad(loss, argnums=(0, 1)))
        jax.block_until_ready(g(x, w)); fns[name] = g
    t = {k: [] for k in fns}
    for _ in range(5):
        for k, g in fns.items():
            s = time.perf_counter(); jax.block_until_ready(g(x, w)); t[k].append(time.perf_counter() - s)
    flop = 3 * 2 * b * hw * hw * cin * cout * 9 / 1e9
    print(cin, cout, hw, {k: f"{flop / statistics.median(v):.1f} GFLOP/s" for k, v in t.items()}, flush=True)
