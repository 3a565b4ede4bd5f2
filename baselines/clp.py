"""CLP: data-free backdoor removal by channel Lipschitzness pruning (Zheng et al., ECCV 2022).

A backdoor tends to live in a few channels that are very sensitive to their input. For a
convolution followed by batch normalisation, the output channel k computes
  y_k = (gamma_k / sigma_k) * (W_k * x) + const,   sigma_k = sqrt(running_var_k),
whose Lipschitz constant is bounded by UCLC_k = |gamma_k / sigma_k| * ||W_k||_2, W_k the kernel of
channel k reshaped to [C_in, kh * kw] and ||.||_2 its largest singular value. Within each layer,
channels with UCLC_k > mean + u * std (u = 3, std with Bessel's correction as torch.std) are
pruned by zeroing their BN scale and bias. No data and no training.

Which BN goes with which convolution: `conv_bn_pairs` traces the model once and pairs each
BatchNorm with the convolution whose output it normalises (VGG, ResNet, WRN, the small CNN). In
pre-activation blocks a BN normalises a residual sum; there, as the official code and
BackdoorBench do by module order, it is paired with the last convolution run before it with the
same number of channels (the pair is marked `exact=False`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backdoor_core.errors import InputError
from backdoor_core.models import check_variables_fit


@dataclasses.dataclass(frozen=True)
class CLPConfig:
    """CLP settings. u: threshold in standard deviations above the layer's mean UCLC (paper: 3)."""

    u: float = 3.0

    def validate(self) -> "CLPConfig":
        if not self.u >= 0:
            raise InputError(f"CLP: u = {self.u!r}; expected a non-negative number of standard deviations")
        return self


@dataclasses.dataclass(frozen=True)
class ConvBN:
    """A convolution and the BatchNorm that normalises its output (module paths in the params tree)."""

    conv: tuple[str, ...]
    bn: tuple[str, ...]
    exact: bool  # True: the BN's input is exactly this convolution's output


def conv_bn_pairs(module: nn.Module, variables: dict, image_shape: tuple[int, int, int]) -> list[ConvBN]:
    """The (conv, BN) pairs of `module`, found by tracing one abstract forward pass in eval mode."""
    events = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            m = context.module
            if isinstance(m, nn.Conv):
                events.append(("conv", tuple(m.path), out))
            elif isinstance(m, nn.BatchNorm):
                events.append(("bn", tuple(m.path), args[0]))
        return out

    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
    pairs, convs = [], []
    for kind, path, value in events:
        if kind == "conv":
            convs.append((path, value))
            continue
        exact = [p for p, out in convs if out is value]
        if exact:
            pairs.append(ConvBN(exact[-1], path, True))
            continue
        same_width = [p for p, out in convs if out.shape[-1] == value.shape[-1]]
        if same_width:
            pairs.append(ConvBN(same_width[-1], path, False))
    return pairs


def _get(tree: dict, path: tuple[str, ...]) -> dict:
    for name in path:
        tree = tree[name]
    return tree


@jax.jit
def channel_lipschitz(kernel: jax.Array, scale: jax.Array, var: jax.Array) -> jax.Array:
    """UCLC per output channel [C_out] of conv kernel [kh, kw, C_in, C_out] followed by BN (scale, var)."""
    kh, kw, cin, cout = kernel.shape
    w = jnp.transpose(kernel, (3, 2, 0, 1)).reshape(cout, cin, kh * kw)
    w = w * jnp.abs(scale / jnp.sqrt(var))[:, None, None]
    return jnp.linalg.svd(w, compute_uv=False).max(axis=-1)


def clp(module: nn.Module, variables: dict, image_shape: tuple[int, int, int],
        config: CLPConfig = CLPConfig()) -> tuple[dict, dict]:
    """Prunes high-UCLC channels. Returns (new variables, {BN path: pruned channel indices})."""
    config.validate()
    check_variables_fit(module, variables, image_shape, "CLP: variables")
    pairs = conv_bn_pairs(module, variables, image_shape)
    if not pairs:
        raise InputError(f"CLP: {type(module).__name__} has no convolution followed by batch normalisation; "
                         "expected a CNN with BatchNorm layers")
    params = jax.tree.map(np.array, variables["params"])  # a mutable copy
    pruned = {}
    for pair in pairs:
        bn = _get(params, pair.bn)
        stats = _get(variables["batch_stats"], pair.bn)
        uclc = np.asarray(channel_lipschitz(_get(params, pair.conv)["kernel"], bn["scale"], stats["var"]))
        threshold = uclc.mean() + config.u * uclc.std(ddof=1)
        index = np.flatnonzero(uclc > threshold)
        bn["scale"][index] = 0.0
        bn["bias"][index] = 0.0
        pruned["/".join(pair.bn)] = index.tolist()
    return {**variables, "params": params}, pruned
