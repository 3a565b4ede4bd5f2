"""The baselines: CLP (channel Lipschitzness pruning) and FT (clean fine-tuning, AFT's loop)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backdoor_core import rundir
from backdoor_core.errors import InputError
from backdoor_core.models import ModelSpec, build_model, init_variables
from baselines import CLPConfig, channel_lipschitz, clp, conv_bn_pairs
from experiments.configs import erase_clp, erase_ft
from experiments.erase import erase_run
from pbe_jax.finetune import FinetuneConfig


def test_channel_lipschitz_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    scale, var = rng.normal(size=5).astype(np.float32), rng.uniform(0.5, 2, size=5).astype(np.float32)
    expected = [np.linalg.svd(kernel[..., k].transpose(2, 0, 1).reshape(4, 9), compute_uv=False).max()
                * abs(scale[k] / np.sqrt(var[k])) for k in range(5)]
    np.testing.assert_allclose(np.asarray(channel_lipschitz(kernel, scale, var)), expected, rtol=1e-5)


class ConvBNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Conv(16, (3, 3))(x))
        x = nn.relu(x)
        x = nn.BatchNorm(use_running_average=not train)(nn.Conv(16, (3, 3))(x))
        return nn.Dense(10)(x.mean((1, 2)))


def test_clp_prunes_exactly_the_planted_channel():
    model = ConvBNNet()
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3))))(jax.random.PRNGKey(0))
    params = jax.tree.map(np.array, variables["params"])
    params["Conv_1"]["kernel"][..., 7] *= 50.0  # one very sensitive channel in the second layer
    variables = {**variables, "params": params}
    pairs = conv_bn_pairs(model, variables, (8, 8, 3))
    assert [(p.conv, p.bn, p.exact) for p in pairs] == [(("Conv_0",), ("BatchNorm_0",), True),
                                                       (("Conv_1",), ("BatchNorm_1",), True)]
    pruned_vars, pruned = clp(model, variables, (8, 8, 3), CLPConfig(u=3.0))
    assert pruned == {"BatchNorm_0": [], "BatchNorm_1": [7]}
    bn = pruned_vars["params"]["BatchNorm_1"]
    assert bn["scale"][7] == 0 and bn["bias"][7] == 0
    for name in ("scale", "bias"):  # nothing else changed
        np.testing.assert_array_equal(np.delete(bn[name], 7), np.delete(params["BatchNorm_1"][name], 7))
        np.testing.assert_array_equal(pruned_vars["params"]["BatchNorm_0"][name], params["BatchNorm_0"][name])
    assert params["BatchNorm_1"]["scale"][7] != 0  # the input variables are not modified


def test_preact_pairs_cover_every_batchnorm():
    spec = ModelSpec("preact_resnet18", 10, (32, 32, 3), 0.25, (0.5,) * 3, (0.25,) * 3)
    variables = jax.eval_shape(lambda: init_variables(spec, jax.random.PRNGKey(0)))
    pairs = conv_bn_pairs(build_model(spec), variables, (32, 32, 3))
    bns = [k for k in jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0] if k[0][-1].key == "mean"]
    assert len(pairs) == len(bns) == 16  # 8 blocks x 2 BNs
    assert sum(p.exact for p in pairs) == 9  # stem -> first BN and each block's inner conv -> BN


class NoBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(3)(nn.Conv(4, (3, 3))(x).mean((1, 2)))


def test_clp_rejects_bad_u_and_models_without_batchnorm():
    with pytest.raises(InputError, match="u = -1"):
        CLPConfig(u=-1).validate()
    model = NoBatchNorm()
    variables = {"params": model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))["params"], "batch_stats": {}}
    with pytest.raises(InputError, match="no convolution followed by batch normalisation"):
        clp(model, variables, (4, 4, 1))


def test_clp_defense_run(badnets_run, tmp_path):
    out = tmp_path / "clp"
    cfg = erase_clp.get_config("smoke")
    cfg.num_devices = 1
    # u = 2: five channels of this teacher stand above it (z 2.35-3.22); at u = 3 only one, by 0.2 std.
    cfg.clp.u = 2.0
    metrics = erase_run("clp", str(badnets_run), cfg, str(out))
    record = rundir.read_record(out)
    assert record["status"] == "complete" and record["defense"] == "clp" and record["metrics"] == metrics
    assert record["pruned_channels"] == sum(len(v) for v in record["pruned"].values())
    assert record["pruned_channels"] > 0, record["pruned"]  # else the loop below checks nothing
    _, _, variables = rundir.load_model(out)
    for path, index in record["pruned"].items():
        bn = variables["params"]
        for name in path.split("/"):
            bn = bn[name]
        assert np.all(np.asarray(bn["scale"])[index] == 0)


def test_cosine_finetune_schedule_decays_and_bad_schedule_is_refused():
    tx = FinetuneConfig(learning_rate=0.1, momentum=0.0, weight_decay=0.0, lr_schedule="cosine",
                        schedule_steps=4).optimizer()
    params = jnp.zeros(())
    state, steps = tx.init(params), []
    for _ in range(4):
        update, state = tx.update(jnp.ones(()), state, params)
        steps.append(-float(update))
    np.testing.assert_allclose(steps, [0.1 * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(4)], rtol=1e-5)
    with pytest.raises(InputError, match="lr_schedule = 'linear'"):
        FinetuneConfig(lr_schedule="linear").validate_finetune()


def test_ft_defense_run_has_no_adversarial_batches(badnets_run, tmp_path):
    out = tmp_path / "ft"
    cfg = erase_ft.get_config("smoke")
    cfg.num_devices = 1
    cfg.clean_fraction = 0.1
    metrics = erase_run("ft", str(badnets_run), cfg, str(out))
    assert {"test_acc", "asr", "der"} <= set(metrics)
    record = rundir.read_record(out)
    assert record["defense"] == "ft" and record["config"]["defense"]["aft"]["lr_schedule"] == "cosine"
    epochs = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines() if '"epoch"' in l]
    rows = [r for r in epochs if r.get("event") == "epoch"]
    assert len(rows) == 2 and all(r["adversarial_batches"] == 0 for r in rows)
