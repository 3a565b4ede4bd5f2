"""Probe (issue 7, 2026-11-27): the Winograd input transform alone at 64 channels, 32x32, batch 128, in
several formulations (kept separate, stacked, separable, Kronecker). Usage: PYTHONPATH=. python
experiments/scripts/probe_winograd_transform.py. Output quoted in docs/performance.md."""
import time, numpy as np, jax, jax.numpy as jnp
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_winograd import F2, F4, C
def bench(f, *a):
    out = f(*a); jax.block_until_ready(out); ts=[]
    for _ in range(7):
        t=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t)
    return 1000*np.median(ts)
n, hw, cin = 128, 32, 64
x = jax.random.normal(jax.random.PRNGKey(0), (n, hw, hw, cin))
for mats in (F2, F4):
    BT, G, AT = mats; m = AT.shape[0]; a = BT.shape[0]; th = tw = hw // m
    def padded(lhs):
        return jnp.pad(lhs, ((0,0),(1, m - 1), (1, m - 1), (0,0))).reshape(n, th + 1, m, tw + 1, m, cin)
    def cur(lhs, stack):
        xx = padded(lhs)
        d = [[xx[:, i // m:i // m + th, i % m, j // m:j // m + tw, j % m, :] for j in range(a)] for i in range(a)]
        rows = [[C._combine(BT[k], [d[i][j] for i in range(a)]) for j in range(a)] for k in range(a)]
        v = [C._combine(BT[l], rows[k]) for k in range(a) for l in range(a)]
        return jnp.stack(v) if stack else v
    def sep(lhs, stack):
        xp = jnp.pad(lhs, ((0,0),(1, m - 1), (1, m - 1), (0,0)))
        W = xp.shape[2]
        xr = xp.reshape(n, th + 1, m, W, cin)
        rows = [C._combine(BT[k], [xr[:, i // m:i // m + th, i % m] for i in range(a)]) for k in range(a)]  # [n, th, W, c]
        out = []
        for k in range(a):
            rc = rows[k].reshape(n, th, tw + 1, m, cin)
            for l in range(a):
                out.append(C._combine(BT[l], [rc[:, :, j // m:j // m + tw, j % m] for j in range(a)]))
        return jnp.stack(out) if stack else out
    def kron(lhs, stack):
        xx = padded(lhs)
        d = jnp.stack([xx[:, i // m:i // m + th, i % m, j // m:j // m + tw, j % m, :] for i in range(a) for j in range(a)], axis=0)
        K = np.kron(BT, BT)
        return jnp.einsum("pq,qntsc->pntsc", K, d)
    ref = jax.jit(lambda z: cur(z, True))(x)
    for name, f in [("cur_stack", cur), ("cur_list", cur), ("sep_stack", sep), ("sep_list", sep), ("kron", kron)]:
        st = "list" not in name
        jf = jax.jit(lambda z, f=f, st=st: f(z, st))
        o = jf(x); o = jnp.stack(o) if isinstance(o, list) else o
        print(f"m={m} {name:10s} {bench(jf, x):7.1f} ms  err {float(jnp.max(jnp.abs(o-ref))):.1e}", flush=True)
