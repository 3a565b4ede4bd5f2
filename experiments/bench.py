"""Benchmarks: our jitted steps against PyTorch doing the same work, in the same process.

  python -m experiments.bench train [--vs torch xla] [--model resnet18] [--widths 0.25 1] [--batch 128]
  python -m experiments.bench pgd   [--vs torch xla] ...
  python -m experiments.bench dhbe  [--vs torch xla] [--batch 32] ...

`train`: one SGD step (momentum 0.9, wd 5e-4, cross-entropy, BN in train mode) of a CIFAR
ResNet-18 on a fixed float batch; PyTorch: the same model (experiments/bench_torch.py) with
our weights copied in, eager, `torch.optim.SGD`. `pgd`: PBE's PGD-7 (L-inf 6/255, step
1.2/255, no random start) on a batch; PyTorch: torchattacks.PGD on the same weights. `dhbe`:
one DHBE iteration (official settings: 5 student steps, a G step, a G_p step; patch triggers,
ngf 64, nz 256) with the student initialised from the model; PyTorch: the official code's
update loop written eagerly (`bench_torch.dhbe_iteration_fn`, same networks, same order). Timing:
after warm-up (compilation), the two sides alternate for `--repeats` rounds of `--steps` calls
each; the table gives the median seconds per call and the ratio torch / ours (> 1: we are
faster). torch uses `--threads` threads (default: the machine's cores) on `--torch-device` (cpu, or cuda
on a GPU machine: JAX then runs on the GPU too); JAX uses its default backend.
Before timing, both sides are checked to compute the same logits (max abs difference printed).
torch and torchattacks are optional benchmark dependencies (`pip install torch torchattacks`).
`--vs xla`: the same jitted step of ours traced with XLA's convolution in every layer
(BACKDOOR_CONV=xla), to measure what our convolution choice (`--conv`, default auto) gains.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from attacks.pgd import PGDConfig, make_pgd_fn
from backdoor_core.host_memory import keep_freed_memory, malloc_choice
from backdoor_core.models import ModelSpec, build_model, init_variables
from backdoor_core.models.conv import IMPLEMENTATIONS, conv_impl
from backdoor_core.sharding import make_mesh, replicate
from backdoor_core.train import TrainConfig, create_train_state, make_optimizer, sgd_update

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def conv_gflop(spec: ModelSpec, batch: int) -> float:
    """Forward multiply-adds x 2 of the model's convolutions and head on a batch, in GFLOP."""
    from flax import linen as nn

    flops = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        m = context.module
        if context.method_name == "__call__" and isinstance(m, (nn.Conv, nn.Dense)):
            cin = args[0].shape[-1]
            k = int(np.prod(getattr(m, "kernel_size", (1,))))
            flops.append(2 * np.prod(out.shape) * cin * k)
        return out

    module = build_model(spec)
    variables = jax.eval_shape(lambda: init_variables(spec, jax.random.PRNGKey(0)))
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((batch, *spec.image_shape), jnp.float32))
    return float(sum(flops)) / 1e9


def our_train(spec: ModelSpec, variables, x: np.ndarray, y: np.ndarray):
    """A zero-argument callable running one jitted SGD step (state donated) and waiting for it."""
    module = build_model(spec)
    tx = make_optimizer(TrainConfig(epochs=1, batch_size=len(x), learning_rate=0.1, schedule="constant"), 1)
    step = jax.jit(lambda s, x, y: sgd_update(module, tx, s, x, y), donate_argnums=0)
    box = [create_train_state(variables, tx, 0)]
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def run():
        box[0], metrics = step(box[0], xj, yj)
        metrics["loss"].block_until_ready()

    return run


def our_pgd(spec: ModelSpec, variables, x: np.ndarray, y: np.ndarray):
    """A zero-argument callable running PBE's PGD-7 on the batch and waiting for it."""
    fn = make_pgd_fn(build_model(spec), variables, PGDConfig.pbe(), make_mesh(1))
    xj, yj, key = jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(0)
    return lambda: fn(xj, yj, key).block_until_ready()


def our_dhbe(spec: ModelSpec, variables, batch: int):
    """A zero-argument callable running one jitted DHBE iteration (official settings, patch triggers)."""
    from dhbe_jax import DHBEConfig
    from dhbe_jax.erase import compiled_iteration
    from dhbe_jax.step import init_state

    config = DHBEConfig(batch_size=batch, trigger_families=("patch",))
    mesh = make_mesh(1)
    players, iteration = compiled_iteration(spec, config, mesh)
    box = [replicate(mesh, init_state(players, variables, config, jax.random.PRNGKey(0)))]
    teacher = replicate(mesh, variables)

    def run():
        box[0], metrics = iteration(box[0], teacher)
        jax.block_until_ready(metrics)

    return run


@contextlib.contextmanager
def conv_env(impl: str | None):
    """Sets BACKDOOR_CONV to `impl` (None: leave it) for the duration of the block."""
    old = os.environ.get("BACKDOOR_CONV")
    if impl is not None:
        os.environ["BACKDOOR_CONV"] = impl
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BACKDOOR_CONV", None)
        else:
            os.environ["BACKDOOR_CONV"] = old


def with_conv(impl: str | None, make):
    """`make()` built and every call of the callable it returns run under BACKDOOR_CONV=impl
    (models pick their convolution when traced, on the first call)."""
    with conv_env(impl):
        fn = make()

    def run():
        with conv_env(impl):
            fn()

    return run


def alternate(fns: dict, repeats: int, steps: int) -> dict:
    """Median seconds per call of each callable, timed in alternating rounds after one warm-up."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(task: str, model: str, width: float, batch: int, vs: tuple[str, ...], repeats: int, steps: int,
          threads: int, torch_device: str = "cpu") -> dict:
    """One benchmark row: seconds per call (ours and each of `vs`), ratios, GFLOP/s, logits agreement.

    `torch_device` places the PyTorch reference ("cpu" or "cuda"); each of its calls waits for the
    device before returning, as ours do (`block_until_ready`).
    """
    spec = ModelSpec(model, 10, (32, 32, 3), width, CIFAR_MEAN, CIFAR_STD)
    variables = jax.device_get(init_variables(spec, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int32)
    if task == "dhbe":
        make = lambda: our_dhbe(spec, variables, batch)
    else:
        make = lambda: (our_train if task == "train" else our_pgd)(spec, variables, x, y)
    fns = {"ours": with_conv(None, make)}
    if "xla" in vs:
        fns["xla"] = with_conv("xla", make)
    row = {"task": task, "model": model, "width": width, "batch": batch}
    if "torch" in vs:
        import torch

        from experiments import bench_torch

        torch.set_num_threads(threads)
        dev = torch.device(torch_device)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        tmodel = bench_torch.TorchCifarResNet(10, width, model == "preact_resnet18", CIFAR_MEAN, CIFAR_STD)
        tmodel = bench_torch.load_flax_variables(tmodel, variables).to(dev).eval()
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev)
        yt = torch.from_numpy(y.astype(np.int64)).to(dev)
        with torch.no_grad():
            theirs = tmodel(xt).cpu().numpy()
        ours = np.asarray(build_model(spec).apply(variables, jnp.asarray(x), train=False))
        row["max_logit_diff"] = float(np.abs(theirs - ours).max())
        if task == "train":
            fns["torch"] = (lambda step: lambda: step(xt, yt).item())(bench_torch.sgd_step_fn(tmodel))
        elif task == "dhbe":
            student = bench_torch.load_flax_variables(
                bench_torch.TorchCifarResNet(10, width, model == "preact_resnet18", CIFAR_MEAN, CIFAR_STD), variables)
            fns["torch"] = bench_torch.dhbe_iteration_fn(tmodel, student.to(dev), batch, device=dev)
        else:
            attack, row["torch_impl"] = bench_torch.pgd_fn(tmodel, 6 / 255, 1.2 / 255, 7)
            fns["torch"] = lambda: (attack(xt, yt), sync())
        row["torch_device"] = dev.type
    medians = alternate(fns, repeats, steps)
    # train: forward + backward (input and weight gradients) ~ 3x forward; PGD-7: 7 x (forward +
    # input gradient only) ~ 7 x 2x forward; DHBE: 5 student steps x (teacher forward + 2 student
    # forwards and backwards) + the G and G_p steps ~ 43x forward. Convolutions and the classifier
    # head only (BN, ReLU and the generators not counted).
    work = conv_gflop(spec, batch) * {"train": 3, "pgd": 14, "dhbe": 43}[task]
    row.update({f"{k}_s": round(v, 4) for k, v in medians.items()})
    row["ours_gflops"] = round(work / medians["ours"], 1)
    for peer in ("torch", "xla"):
        if peer in medians:
            row[f"{peer}_gflops"] = round(work / medians[peer], 1)
            row[f"ratio_{peer}_over_ours"] = round(medians[peer] / medians["ours"], 2)
    return row


def main(argv=None) -> int:
    try:
        keep_freed_memory()  # BACKDOOR_MALLOC=keep: for ours and PyTorch alike (both allocate with malloc)
    except ValueError as e:  # a bad BACKDOOR_MALLOC
        sys.exit(f"error: {e}")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("train", "pgd", "dhbe"))
    parser.add_argument("--vs", nargs="+", choices=("torch", "xla"), default=(),
                        help="also time the PyTorch reference and/or our step with XLA's convolution")
    parser.add_argument("--model", default="resnet18", choices=("resnet18", "preact_resnet18"))
    parser.add_argument("--widths", type=float, nargs="+", default=(0.25, 1.0))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--torch-device", default="cpu", choices=("cpu", "cuda"),
                        help="where the PyTorch reference runs (cuda: a GPU build of torch)")
    parser.add_argument("--conv", choices=IMPLEMENTATIONS, help="our convolution (default: auto; see backdoor_core/models/conv.py)")
    args = parser.parse_args(argv)
    if args.conv:
        os.environ["BACKDOOR_CONV"] = args.conv
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.default_backend()}), our conv {conv_impl()}, malloc {malloc_choice()}, batch {args.batch}, median of {args.repeats} rounds of {args.steps} calls")
    for width in args.widths:
        row = bench(args.task, args.model, width, args.batch, tuple(args.vs), args.repeats, args.steps, args.threads,
                    args.torch_device)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
