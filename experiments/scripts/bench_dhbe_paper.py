"""Time per DHBE iteration, `paper` config (batch 256, ngf 64), ResNet-18 width 1, CIFAR shape."""
import sys, time, jax
from backdoor_core.models import ModelSpec, init_variables
from dhbe_jax import DHBEConfig, erase
iters = int(sys.argv[1]) if len(sys.argv) > 1 else 40
spec = ModelSpec("resnet18", 10, (32, 32, 3), 1.0, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
variables = init_variables(spec, jax.random.PRNGKey(0))
t0 = time.perf_counter()
res = erase((spec, variables), DHBEConfig(), jax.random.PRNGKey(1), stop_after=iters, log_every=1, eval_every=10**9,
            checkpoint_every=10**9, progress=False)
rows = res.history
print("backend", jax.default_backend(), "devices", jax.devices())
print("first iteration (compile + run) s", rows[0]["elapsed_s"])
steady = (rows[-1]["elapsed_s"] - rows[4]["elapsed_s"]) / (len(rows) - 5)
print(f"steady s/iteration over {len(rows) - 5}: {steady:.4f}  total {time.perf_counter() - t0:.1f}s")
