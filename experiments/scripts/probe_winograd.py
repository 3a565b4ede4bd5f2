"""Probe (issue 7, 2026-11-27): one 3x3 layer by XLA, Winograd F(2x2,3x3) and F(4x4,3x3), separate or
batched products: forward, input and kernel gradient times. Usage: PYTHONPATH=. python
experiments/scripts/probe_winograd.py 64x32 (channels x side, batch 128). Output quoted in docs/performance.md."""
import sys, time, numpy as np, jax, jax.numpy as jnp

from backdoor_core.models import conv as C

F4_BT = np.array([[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],[0,4,0,-5,0,1]],np.float32)
F4_G = np.array([[1/4,0,0],[-1/6,-1/6,-1/6],[-1/6,1/6,-1/6],[1/24,1/12,1/6],[1/24,-1/12,1/6],[0,0,1]],np.float32)
F4_AT = np.array([[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]],np.float32)
F2 = (C._BT, C._G, C._AT)
F4 = (F4_BT, F4_G, F4_AT)

def wino(lhs, rhs, padding, mats, batched):
    BT, G, AT = mats
    m = AT.shape[0]; a = BT.shape[0]
    (pt, pb), (pl, pr) = padding
    n, h, w, cin = lhs.shape; cout = rhs.shape[-1]
    ho, wo = h + pt + pb - 2, w + pl + pr - 2
    th, tw = -(-ho // m), -(-wo // m)
    x = jnp.pad(lhs, ((0,0),(pt, pb + m*th - ho + (m - 2)), (pl, pr + m*tw - wo + (m - 2)), (0,0)))
    # padded size: m*th + 2 + (m-2) = m*(th+1)
    x = x.reshape(n, th + 1, m, tw + 1, m, cin)
    d = [[x[:, i // m:i // m + th, i % m, j // m:j // m + tw, j % m, :] for j in range(a)] for i in range(a)]
    rows = [[C._combine(BT[k], [d[i][j] for i in range(a)]) for j in range(a)] for k in range(a)]
    v = [[C._combine(BT[l], rows[k]) for l in range(a)] for k in range(a)]
    u = jnp.einsum("ki,ijco,lj->klco", G, rhs, G)
    tiles = n * th * tw
    if batched:
        V = jnp.stack([v[k][l].reshape(tiles, cin) for k in range(a) for l in range(a)])
        M = jnp.einsum("ptc,pco->pto", V, u.reshape(a*a, cin, cout))
        mm = [[M[k*a+l] for l in range(a)] for k in range(a)]
    else:
        mm = [[jnp.dot(v[k][l].reshape(tiles, cin), u[k, l]) for l in range(a)] for k in range(a)]
    cols = [[C._combine(AT[p], [mm[k][l] for k in range(a)]) for l in range(a)] for p in range(m)]
    y = jnp.stack([jnp.stack([C._combine(AT[q], cols[p]) for q in range(m)], axis=1) for p in range(m)], axis=1)
    y = y.reshape(n, th, tw, m, m, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, m*th, m*tw, cout)
    return y[:, :ho, :wo, :]

def xla(lhs, rhs, padding): return C._xla_conv(lhs, rhs, padding)

def main(cin, hw, batch=128, reps=5):
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, hw, hw, cin)); wt = jax.random.normal(key, (3,3,cin,cin)) * 0.1
    g = jax.random.normal(key, (batch, hw, hw, cin))
    pad = ((1,1),(1,1))
    impls = {"xla": xla, "f2": lambda a,b,p: wino(a,b,p,F2,False), "f2b": lambda a,b,p: wino(a,b,p,F2,True),
             "f4": lambda a,b,p: wino(a,b,p,F4,False), "f4b": lambda a,b,p: wino(a,b,p,F4,True)}
    ref = xla(x, wt, pad)
    fns = {}
    for name, f in impls.items():
        err = float(jnp.max(jnp.abs(f(x, wt, pad) - ref)) / jnp.max(jnp.abs(ref)))
        fwd = jax.jit(lambda a, b, f=f: f(a, b, pad))
        dx = jax.jit(lambda a, b, gg, f=f: jax.vjp(lambda z: f(z, b, pad), a)[1](gg)[0])
        dw = jax.jit(lambda a, b, gg, f=f: jax.vjp(lambda z: f(a, z, pad), b)[1](gg)[0])
        fns[name] = (fwd, dx, dw); print(name, "relerr", f"{err:.1e}", flush=True)
    times = {n: [[], [], []] for n in fns}
    for r in range(reps + 1):
        for name, (fwd, dx, dw) in fns.items():
            for i, (fn, args) in enumerate([(fwd, (x, wt)), (dx, (x, wt, g)), (dw, (x, wt, g))]):
                fn(*args).block_until_ready(); t = time.perf_counter(); fn(*args).block_until_ready()
                if r: times[name][i].append(time.perf_counter() - t)
    print(f"cin={cin} hw={hw} batch={batch}: median ms fwd / dx / dw / total")
    for name, ts in times.items():
        med = [1000 * float(np.median(t)) for t in ts]
        print(f"  {name:4s} " + " / ".join(f"{m:7.1f}" for m in med) + f" / {sum(med):7.1f}")

if __name__ == "__main__":
    for spec in sys.argv[1:]:
        cin, hw = map(int, spec.split("x")); main(cin, hw)
