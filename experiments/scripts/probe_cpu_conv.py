"""Where a CPU training step spends its time: per-layer probes behind docs/performance.md.

Prints, at batch 128 (median ms of 5 calls, each after one warm-up call):
  1. 3x3 stride-1 layers of a CIFAR ResNet-18: forward, input gradient and kernel gradient, each
     alone, with XLA's convolution and with Winograd F(2x2, 3x3) (`backdoor_core.models.conv`);
  2. batch norm (train mode) + ReLU, forward and backward, on [128, 32, 32, 64]: Flax vs PyTorch
     (skipped without torch);
  3. the kernel gradient of a 1x1 stride-2 shortcut: XLA's vs one matrix product.

  PYTHONPATH=. python experiments/scripts/probe_cpu_conv.py
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from backdoor_core.models.conv import _winograd

rng = np.random.default_rng(0)
PAD = ((1, 1), (1, 1))


def median_ms(fn, *args, reps=5):
    """Median wall time of fn(*args) in ms over `reps` calls, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def xla_conv(x, w, stride=1, padding=PAD):
    """XLA's NHWC x HWIO convolution."""
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def winograd(x, w):
    """Winograd F(2x2, 3x3), stride 1, padding 1."""
    return _winograd(x, w, PAD)


def layer_times(conv, x, w, g):
    """ms of the forward pass, the input gradient alone and the kernel gradient alone."""
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, w: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    return {name: median_ms(f, x, w) for name, f in (("fwd", fwd), ("dx", dx), ("dw", dw))}


print("1. 3x3 stride-1 layers, batch 128, ms (fwd / input grad / kernel grad)", flush=True)
for channels, hw in [(16, 32), (32, 16), (64, 8), (128, 4), (64, 32), (128, 16), (256, 8), (512, 4)]:
    x = jnp.asarray(rng.normal(size=(128, hw, hw, channels)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, channels, channels)) * 0.05, jnp.float32)
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    cells = []
    for name, conv in (("xla", xla_conv), ("winograd", winograd)):
        t = layer_times(conv, x, w, g)
        cells.append(f"{name} {t['fwd']:.0f} / {t['dx']:.0f} / {t['dw']:.0f}")
    print(f"  {channels} ch, {hw}x{hw}: " + " | ".join(cells), flush=True)

print("2. BN (train) + ReLU, fwd + bwd, [128, 32, 32, 64], ms", flush=True)
import flax.linen as nn  # noqa: E402

x = rng.normal(size=(128, 32, 32, 64)).astype(np.float32)
g = rng.normal(size=x.shape).astype(np.float32)
bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
variables = bn.init(jax.random.PRNGKey(0), x)


def bn_relu_loss(params, x):
    """sum(relu(BN(x)) * g) with batch statistics."""
    y, _ = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
    return (jax.nn.relu(y) * g).sum()


ours = median_ms(jax.jit(jax.grad(bn_relu_loss, argnums=(0, 1))), variables["params"], jnp.asarray(x))
try:
    import torch

    torch.set_num_threads(2)
    tbn = torch.nn.BatchNorm2d(64)
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    gt = torch.tensor(g).permute(0, 3, 1, 2).contiguous()

    def torch_step():
        (torch.relu(tbn(xt)) * gt).sum().backward()

    torch_step()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        torch_step()
        times.append(time.perf_counter() - start)
    print(f"  jax {ours:.1f} | torch {1e3 * statistics.median(times):.1f}", flush=True)
except ImportError:
    print(f"  jax {ours:.1f} | torch not installed", flush=True)

print("3. kernel gradient of a 1x1 stride-2 conv, 16 -> 32 channels, 32x32 input, ms", flush=True)
x = jnp.asarray(rng.normal(size=(128, 32, 32, 16)), jnp.float32)
w = jnp.asarray(rng.normal(size=(1, 1, 16, 32)) * 0.05, jnp.float32)
g = jnp.asarray(rng.normal(size=(128, 16, 16, 32)), jnp.float32)
xla_dw = jax.jit(lambda x, w: jax.vjp(lambda w: xla_conv(x, w, 2, ((0, 0), (0, 0))), w)[1](g)[0])
matmul_dw = jax.jit(lambda x, w: (x[:, ::2, ::2, :].reshape(-1, 16).T @ g.reshape(-1, 32)).reshape(1, 1, 16, 32))
np.testing.assert_allclose(xla_dw(x, w), matmul_dw(x, w), rtol=1e-4, atol=1e-3)
print(f"  xla {median_ms(xla_dw, x, w):.1f} | one matmul {median_ms(matmul_dw, x, w):.1f}", flush=True)
