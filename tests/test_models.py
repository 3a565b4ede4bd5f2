"""The model registry: every architecture builds, maps pixels to logits, honours its spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backdoor_core.errors import InputError
from backdoor_core.models import MODELS, ModelSpec, build_model, init_variables, spec_for_data
from backdoor_core.models.layers import Normalize
from conftest import jit_once


def spec(name, width=0.25, classes=10):
    shape = (28, 28, 1) if name == "small_cnn" else (32, 32, 3)
    c = shape[-1]
    return ModelSpec(name, classes, shape, width, (0.5,) * c, (0.25,) * c)


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_logits_and_features(name):
    # Shapes by abstract evaluation (no compilation), so every architecture is checked quickly.
    s = spec(name, classes=7)
    variables = jax.eval_shape(lambda: init_variables(s, jax.random.PRNGKey(0)))
    x = jax.ShapeDtypeStruct((2, *s.image_shape), jnp.float32)
    logits, state = jax.eval_shape(lambda v, x: build_model(s).apply(v, x, mutable=["intermediates"]), variables, x)
    assert logits.shape == (2, 7)
    assert state["intermediates"]["features"][0].shape[0] == 2


@pytest.mark.parametrize("name", ["small_cnn", "preact_resnet18"])
def test_forward_pass_is_finite_and_train_mode_updates_batch_stats(name):
    s = spec(name, classes=7)
    variables = init_variables(s, jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, *s.image_shape))
    logits, updates = jit_once(lambda v, x: build_model(s).apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert bool(jnp.all(jnp.isfinite(logits)))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))


def test_width_multiplier_scales_channels():
    small = count(jax.eval_shape(lambda: init_variables(spec("preact_resnet18", 0.25), jax.random.PRNGKey(0)))["params"])
    full = count(jax.eval_shape(lambda: init_variables(spec("preact_resnet18", 1.0), jax.random.PRNGKey(0)))["params"])
    assert 11.0e6 < full < 11.3e6  # PreAct-ResNet-18 has 11.17M parameters at width 1
    assert 12 < full / small < 17  # conv weights scale with width squared


def test_normalize_is_the_first_layer():
    out = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 1.0)).apply({}, jnp.ones((1, 1, 1, 3)))
    np.testing.assert_allclose(out.ravel(), [1.0, 3.0, 1.0])


def test_images_with_the_wrong_channel_count_are_refused():
    # A 1-channel image would broadcast against a 3-channel mean and run silently.
    s = spec("preact_resnet18")
    variables = jax.eval_shape(lambda: init_variables(s, jax.random.PRNGKey(0)))
    for shape in [(2, 32, 32, 1), (32, 32, 3)]:
        with pytest.raises(InputError, match=r"images of shape .* a model that takes 3-channel"):
            jax.eval_shape(build_model(s).apply, variables, jax.ShapeDtypeStruct(shape, jnp.float32))


def test_spec_round_trip_and_data_normalisation():
    images = np.stack([np.full((4, 4, 1), 0, np.uint8), np.full((4, 4, 1), 255, np.uint8)])
    s = spec_for_data("small_cnn", images, 10)
    assert s.mean == (0.5,) and s.std == (0.5,)
    assert ModelSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="resnet9000"), "unknown model 'resnet9000'"),
    (dict(num_classes=1), "expected at least 2"),
    (dict(width=0.0), "positive multiplier"),
    (dict(mean=(0.5, 0.5)), "one per image channel"),
])
def test_bad_specs(kwargs, message):
    base = dict(name="small_cnn", num_classes=10, image_shape=(28, 28, 1), width=1.0, mean=(0.5,), std=(0.5,))
    with pytest.raises(InputError, match=message):
        ModelSpec(**{**base, **kwargs})


@pytest.mark.parametrize("kernel, stride, pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (3, 1, 0)])
def test_im2col_conv_equals_xla_conv_with_gradients(kernel, stride, pad):
    from jax import lax

    from backdoor_core.models.conv import im2col_conv

    rng = np.random.default_rng(kernel + stride + pad)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 4, 6)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    conv = lambda f: lambda x, w: f(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=dn)
    # Each computation one compiled program (op by op, in a test session, ~8 s of compiling).
    ours, xla = conv(im2col_conv), conv(lax.conv_general_dilated)
    np.testing.assert_allclose(jit_once(ours)(x, w), jit_once(xla)(x, w), atol=1e-4, rtol=1e-5)
    grad = lambda f: jit_once(jax.grad(lambda x, w: (f(x, w) ** 2).sum(), argnums=(0, 1)))(x, w)
    for a, b in zip(grad(ours), grad(xla)):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("hw, pad", [((8, 7), ((1, 1), (1, 1))), ((5, 6), ((2, 1), (0, 3))), ((1, 1), ((1, 1), (1, 1)))])
def test_winograd_conv_equals_xla_conv_with_gradients(hw, pad):
    from jax import lax

    from backdoor_core.models.conv import winograd_conv

    rng = np.random.default_rng(sum(hw))
    x = jnp.asarray(rng.normal(size=(2, *hw, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 7)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    conv = lambda f: lambda x, w: f(x, w, (1, 1), pad, dimension_numbers=dn)
    ours, xla = conv(winograd_conv), conv(lax.conv_general_dilated)
    # Really computed by Winograd (no convolution primitive left), equal to float32 rounding.
    assert "conv_general_dilated" not in str(jax.make_jaxpr(ours)(x, w))
    np.testing.assert_allclose(jax.jit(ours)(x, w), xla(x, w), atol=1e-4, rtol=1e-5)
    grad = lambda f: jax.jit(jax.grad(lambda x, w: (f(x, w) ** 2).sum(), argnums=(0, 1)))(x, w)
    for a, b in zip(grad(ours), grad(xla)):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("kernel, stride, min_channels, min_macs",
                         [(3, 2, 1, 0), (1, 1, 1, 0), (5, 1, 1, 0), (3, 1, 16, 0), (3, 1, 1, 64 * 9 * 8 * 8 + 1)])
def test_winograd_conv_leaves_other_layers_to_xla(kernel, stride, min_channels, min_macs):
    from jax import lax

    from backdoor_core.models.conv import winograd_conv

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 8)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(kernel, kernel, 8, 8)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    args = (x, w, (stride, stride), ((1, 1), (1, 1)))
    ours = lambda x, w: winograd_conv(x, w, *args[2:], dimension_numbers=dn, min_channels=min_channels,
                                      min_macs=min_macs)
    assert "conv_general_dilated" in str(jax.make_jaxpr(ours)(x, w))
    np.testing.assert_array_equal(ours(x, w), lax.conv_general_dilated(*args, dimension_numbers=dn))


def test_winograd_wgrad_conv_is_xla_forward_and_winograd_kernel_gradient():
    from jax import lax

    from backdoor_core.models.conv import winograd_wgrad_conv

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 8, 7, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 6)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    conv = lambda f: lambda x, w: f(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    ours, xla = conv(winograd_wgrad_conv), conv(lax.conv_general_dilated)
    np.testing.assert_array_equal(jax.jit(ours)(x, w), xla(x, w))  # XLA's forward pass itself
    grad = lambda f, argnums: jax.jit(jax.grad(lambda x, w: (f(x, w) ** 2).sum(), argnums=argnums))
    for a, b in zip(grad(ours, (0, 1))(x, w), grad(xla, (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)
    # The kernel gradient is Winograd's (matrix products); with the input gradient only (PGD),
    # XLA drops it: no matrix product is left in the compiled program.
    hlo = lambda argnums: grad(ours, argnums).lower(x, w).compile().as_text()
    assert hlo(1).count(" dot(") >= 16 and " dot(" not in hlo(0)


def test_auto_conv_uses_winograd_on_cpu_only(monkeypatch):
    from backdoor_core.models import conv

    monkeypatch.delenv("BACKDOOR_CONV", raising=False)
    assert conv.conv_impl() == "auto"
    fn = conv.conv_fn()
    assert fn.func is conv.winograd_wgrad_conv
    assert fn.keywords == {"min_channels": conv.WINOGRAD_MIN_CHANNELS, "min_macs": conv.WINOGRAD_MIN_MACS}
    monkeypatch.setattr(conv.jax, "default_backend", lambda: "gpu")
    assert conv.conv_fn() is None  # XLA's convolution on accelerators
    monkeypatch.setenv("BACKDOOR_CONV", "xla")
    monkeypatch.setattr(conv.jax, "default_backend", lambda: "cpu")
    assert conv.conv_fn() is None


@pytest.mark.parametrize("name, width, image_shape, expected", [
    ("preact_resnet18", 0.25, (32, 32, 3), 13),  # the CPU configs' model: every 3x3 stride-1 layer but the stem
    ("small_cnn", 0.5, (28, 28, 1), 0),  # the quickstart's model: too small to pay
])
def test_auto_conv_routes_the_intended_layers_to_the_winograd_kernel_gradient(monkeypatch, name, width, image_shape,
                                                                              expected):
    from backdoor_core.models import conv

    monkeypatch.delenv("BACKDOOR_CONV", raising=False)
    monkeypatch.setattr(conv.jax, "default_backend", lambda: "cpu")
    spec = ModelSpec(name, 10, image_shape, width, (0.5,) * image_shape[-1], (0.25,) * image_shape[-1])
    model = build_model(spec)
    variables = init_variables(spec, jax.random.PRNGKey(0))
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, jnp.zeros((2, *image_shape))))
    assert jaxpr.count("custom_vjp_call") == expected


def test_registry_model_is_the_same_function_with_any_conv(monkeypatch):
    # `auto` is XLA's convolution for a model this small; `winograd` computes every 3x3 stride-1 layer.
    spec = ModelSpec("preact_resnet18", 10, (32, 32, 3), 0.125, (0.5,) * 3, (0.25,) * 3)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    outputs, convs = {}, {}
    for impl in ("xla", "winograd"):  # im2col: its own test above
        monkeypatch.setenv("BACKDOOR_CONV", impl)
        model = build_model(spec)
        variables = init_variables(spec, jax.random.PRNGKey(0))
        apply = lambda v, x: model.apply(v, x, train=False)
        outputs[impl] = np.asarray(jit_once(apply)(variables, x))
        convs[impl] = str(jax.make_jaxpr(apply)(variables, x)).count("conv_general_dilated")
    # Two different computations: the 14 3x3 stride-1 layers by Winograd, only the 3 stride-2 and
    # 3 1x1 shortcut convolutions left to XLA (else this compares XLA with itself).
    assert convs == {"xla": 20, "winograd": 6}
    np.testing.assert_allclose(outputs["winograd"], outputs["xla"], atol=1e-4, rtol=1e-4)
    monkeypatch.setenv("BACKDOOR_CONV", "nope")
    with pytest.raises(ValueError, match="BACKDOOR_CONV='nope'"):
        build_model(spec).apply(variables, x, train=False)

