"""experiments.bench: FLOP counting, a benchmark row without torch, and (where torch is
installed, not in CI) the PyTorch reference computing the same function on our weights."""

import numpy as np
import pytest

from backdoor_core.models import ModelSpec
from experiments import bench


def test_conv_gflop_of_cifar_resnet18():
    # CIFAR ResNet-18 at width 64: about 0.56 G multiply-adds per 32x32 image.
    gflop = bench.conv_gflop(ModelSpec("resnet18", 10, (32, 32, 3), 1.0, bench.CIFAR_MEAN, bench.CIFAR_STD), 2)
    assert 2 * 1.05 < gflop < 2 * 1.15
    quarter = bench.conv_gflop(ModelSpec("resnet18", 10, (32, 32, 3), 0.25, bench.CIFAR_MEAN, bench.CIFAR_STD), 2)
    assert quarter == pytest.approx(gflop / 16, rel=0.05)  # channels x1/4 on both sides of every conv


# The row's plumbing does not depend on the architecture: the small CNN compiles in a fraction of
# a ResNet's time (the CLI's own models are timed by the benchmarks, not by the suite).
@pytest.mark.parametrize("task", ["train", "pgd"])
def test_bench_row_without_torch(task):
    row = bench.bench(task, "small_cnn", 0.25, 8, vs=(), repeats=1, steps=1, threads=1)
    assert row["ours_s"] > 0 and row["ours_gflops"] > 0 and "torch_s" not in row and "xla_s" not in row


def test_bench_vs_xla_traces_its_step_with_xla_convolution(monkeypatch):
    monkeypatch.setenv("BACKDOOR_CONV", "winograd")
    seen = []
    real = bench.our_train

    def spy(*args):
        seen.append(bench.conv_impl())
        return real(*args)

    monkeypatch.setattr(bench, "our_train", spy)
    row = bench.bench("train", "small_cnn", 0.25, 8, vs=("xla",), repeats=1, steps=1, threads=1)
    assert seen == ["winograd", "xla"] and row["xla_s"] > 0 and row["ratio_xla_over_ours"] > 0
    assert bench.conv_impl() == "winograd"  # the environment is restored


@pytest.mark.parametrize("model", ["resnet18", "preact_resnet18"])
def test_torch_reference_matches_our_model(model):
    torch = pytest.importorskip("torch")
    import jax

    from backdoor_core.models import build_model, init_variables
    from experiments import bench_torch

    spec = ModelSpec(model, 10, (32, 32, 3), 0.125, bench.CIFAR_MEAN, bench.CIFAR_STD)
    variables = jax.device_get(init_variables(spec, jax.random.PRNGKey(1)))
    # Non-trivial batch statistics, so that a mis-copied BN shows.
    variables["batch_stats"] = jax.tree.map(lambda a: a + np.linspace(0.1, 0.5, a.size).astype(np.float32),
                                            variables["batch_stats"])
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    tmodel = bench_torch.load_flax_variables(
        bench_torch.TorchCifarResNet(10, 0.125, model == "preact_resnet18", bench.CIFAR_MEAN, bench.CIFAR_STD),
        variables).eval()
    with torch.no_grad():
        theirs = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    ours = np.asarray(build_model(spec).apply(variables, x, train=False))
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
