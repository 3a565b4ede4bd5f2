"""The convolution implementation behind every registry model (and DHBE's generators).

Three implementations compute the same function with the same `nn.Conv` parameters (so
checkpoints do not depend on the choice): XLA's native convolution, and im2col - the kh x kw
shifted slices of the padded input concatenated along channels, then one matrix product with
the kernel reshaped to [kh * kw * C_in, C_out]. im2col was expected to be faster on XLA:CPU
(an earlier measurement on this project's 2-core machine: 19 vs 56-60 GFLOP/s for a 3x3
64->64 layer, batch 128, forward + backward), but with jax 0.10.2 it is not (2026-11-26,
docs/performance.md: XLA 36.5 vs im2col 31.5 GFLOP/s for that layer,
20.0 vs 11.8 at 16 channels; a ResNet-18 SGD step is equal at width 1, PGD at width 1/4 is 2.4x
slower with im2col, whose input gradient goes through pads and scatter-adds). So im2col is
not used unless asked for (`BACKDOOR_CONV=im2col`).

A third implementation, Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, CVPR 2016),
does pay on XLA:CPU, for the kernel gradient: a 3x3 stride-1 convolution becomes 16 matrix
products of [tiles, C_in] x [C_in, C_out] (2.25x fewer multiplications than direct convolution)
between two transforms made of additions only, and its gradients (automatic differentiation of
the same code) are matrix products too. Results equal XLA's to float32 rounding (relative error
~1e-6). Measured per layer (docs/performance.md), XLA:CPU's kernel-gradient convolution is 2-3x
slower than its forward one and Winograd's kernel gradient 2-3x faster than it, while for the
forward pass and the input gradient Winograd gains nothing. So the default, `auto`, on CPU
backends computes 3x3 stride-1 layers of at least WINOGRAD_MIN_CHANNELS input and output
channels and WINOGRAD_MIN_MACS multiply-adds per image (every such layer of a CIFAR ResNet-18
from width 1/4 up; not the small test-size models) with XLA's forward pass and input gradient
and Winograd's kernel gradient (`winograd_wgrad_conv`, a custom VJP), and everything else -
every layer on GPU/TPU - with XLA's convolution.
`BACKDOOR_CONV=xla|im2col|winograd` forces one implementation (winograd: forward and both
gradients by Winograd; it still leaves layers it cannot compute to XLA).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLEMENTATIONS = ("auto", "xla", "im2col", "winograd")
# `auto` on CPU takes the kernel gradient from Winograd only for layers with at least this many
# input and output channels and multiply-adds per image. Measured on the 2-core CPU
# (docs/performance.md): the hybrid makes a PreAct-ResNet-18 SGD step at width 1/4 (3x3 layers of
# 16-128 channels, 2.4M multiply-adds per image) 1.16-1.26x faster and one at width 1 1.2x, and
# leaves a DHBE iteration even; the all-Winograd path was slower at 16 channels. Below 2^21
# multiply-adds (the MNIST small CNN at width 1/2, the tests' models) layers stay on XLA, whose
# compile time is shorter.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_MACS = 2 ** 21


def conv_impl() -> str:
    """BACKDOOR_CONV if set (one of IMPLEMENTATIONS), else 'auto'."""
    forced = os.environ.get("BACKDOOR_CONV")
    if forced:
        if forced not in IMPLEMENTATIONS:
            raise ValueError(f"BACKDOOR_CONV={forced!r}; expected one of {IMPLEMENTATIONS}")
        return forced
    return "auto"


def conv_fn():
    """The `conv_general_dilated` argument for `nn.Conv`; None means XLA's convolution.

    auto: `winograd_wgrad_conv` (Winograd kernel gradient for wide 3x3 stride-1 layers) when JAX's
    default backend is the CPU, XLA's convolution on GPU/TPU.
    """
    impl = conv_impl()
    if impl == "auto":
        if jax.default_backend() != "cpu":
            return None
        return functools.partial(winograd_wgrad_conv, min_channels=WINOGRAD_MIN_CHANNELS, min_macs=WINOGRAD_MIN_MACS)
    return {"xla": None, "im2col": im2col_conv, "winograd": winograd_conv}[impl]


def _is_nhwc_hwio(lhs, rhs, dimension_numbers) -> bool:
    """Whether the layouts are NHWC x HWIO (None means lax's default NCHW x OIHW: not ours)."""
    if dimension_numbers is None or lhs.ndim != 4:
        return False
    return dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))


def _is_plain(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, kwargs) -> bool:
    """Whether a conv_general_dilated call is NHWC x HWIO, explicit padding, no dilation or groups."""
    return (feature_group_count == 1 and not kwargs and not isinstance(padding, str)
            and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and _is_nhwc_hwio(lhs, rhs, dimension_numbers))


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, precision=None, **kwargs):
    """lax.conv_general_dilated for NHWC x HWIO with explicit padding, as slices + one matmul.

    lhs [N, H, W, C_in], rhs [kh, kw, C_in, C_out] -> [N, H_out, W_out, C_out]. Any other case
    (dilation, groups, other layouts, string padding) is passed to lax.conv_general_dilated.
    """
    if not _is_plain(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, kwargs):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
    kh, kw, cin, cout = rhs.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = window_strides
    x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if (pt, pb, pl, pr) != (0, 0, 0, 0) else lhs
    n, h, w, _ = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, cin), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)  # [N, Ho, Wo, kh*kw*C_in]
    return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout), precision=precision)


# F(2x2, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A for a 4x4 input tile d and a 3x3 kernel g.
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def _combine(coefficients, terms):
    """sum_i coefficients[i] * terms[i], skipping zeros and multiplying only by non-unit factors."""
    out = None
    for c, t in zip(coefficients, terms):
        if c == 0:
            continue
        t = t if c == 1 else -t if c == -1 else c * t
        out = t if out is None else out + t
    return out


def winograd_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                  feature_group_count=1, precision=None, *, min_channels: int = 1, min_macs: int = 0, **kwargs):
    """lax.conv_general_dilated for 3x3 stride-1 NHWC x HWIO convolutions, by Winograd F(2x2, 3x3).

    lhs [N, H, W, C_in], rhs [3, 3, C_in, C_out], explicit padding ((pt, pb), (pl, pr)) ->
    [N, H + pt + pb - 2, W + pl + pr - 2, C_out]. The padded input is cut into overlapping 4x4
    tiles with stride 2 (read as contiguous slices of a 2x2 space-to-depth view), each tile is
    transformed by B^T d B, the 16 transformed positions are multiplied by the transformed kernel
    G g G^T (16 matrix products over the channels), and A^T m A gives each 2x2 output tile. An
    odd output side is padded to even and cropped. Any other call (other kernel sizes, strides,
    dilation, groups, layouts, or fewer than `min_channels` input or output channels) goes to
    lax.conv_general_dilated; so does a layer with fewer than `min_macs` multiply-adds per image.
    """
    if not _winograd_eligible(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                              feature_group_count, kwargs, min_channels, min_macs):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
    return _winograd(lhs, rhs, padding, precision)


def _winograd_eligible(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                       feature_group_count, kwargs, min_channels, min_macs) -> bool:
    """Whether a conv_general_dilated call is a plain 3x3 stride-1 layer at least this wide and large."""
    return (_is_plain(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, kwargs)
            and rhs.shape[:2] == (3, 3) and tuple(window_strides) == (1, 1)
            and min(rhs.shape[2], rhs.shape[3]) >= min_channels
            and (lhs.shape[1] + sum(padding[0]) - 2) * (lhs.shape[2] + sum(padding[1]) - 2) * 9 * rhs.shape[2]
            * rhs.shape[3] >= min_macs)


def _winograd(lhs, rhs, padding, precision=None):
    """The F(2x2, 3x3) computation of `winograd_conv` (NHWC x HWIO, stride 1, explicit padding)."""
    (pt, pb), (pl, pr) = padding
    n, h, w, cin = lhs.shape
    cout = rhs.shape[-1]
    ho, wo = h + pt + pb - 2, w + pl + pr - 2
    th, tw = -(-ho // 2), -(-wo // 2)  # output tiles per column / row
    x = jnp.pad(lhs, ((0, 0), (pt, pb + 2 * th - ho), (pl, pr + 2 * tw - wo), (0, 0)))
    x = x.reshape(n, th + 1, 2, tw + 1, 2, cin)  # x[n, a, p, b, q] = padded[n, 2a + p, 2b + q]
    d = [[x[:, i // 2:i // 2 + th, i % 2, j // 2:j // 2 + tw, j % 2, :] for j in range(4)] for i in range(4)]
    rows = [[_combine(_BT[k], [d[i][j] for i in range(4)]) for j in range(4)] for k in range(4)]
    v = [[_combine(_BT[l], rows[k]) for l in range(4)] for k in range(4)]  # B^T d B, each [N, th, tw, C_in]
    u = jnp.einsum("ki,ijco,lj->klco", _G, rhs, _G, precision=precision)  # G g G^T, [4, 4, C_in, C_out]
    tiles = n * th * tw
    m = [[jnp.dot(v[k][l].reshape(tiles, cin), u[k, l], precision=precision) for l in range(4)] for k in range(4)]
    cols = [[_combine(_AT[a], [m[k][l] for k in range(4)]) for l in range(4)] for a in range(2)]
    y = jnp.stack([jnp.stack([_combine(_AT[b], cols[a]) for b in range(2)], axis=1) for a in range(2)], axis=1)
    y = y.reshape(n, th, tw, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * th, 2 * tw, cout)
    return y[:, :ho, :wo, :]


def _xla_conv(lhs, rhs, padding):
    """XLA's stride-1 NHWC x HWIO convolution with explicit padding."""
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    return lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=dn)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _xla_forward_winograd_wgrad(lhs, rhs, padding):
    return _xla_conv(lhs, rhs, padding)


def _hybrid_fwd(lhs, rhs, padding):
    return _xla_conv(lhs, rhs, padding), (lhs, rhs)


def _hybrid_bwd(padding, residuals, g):
    lhs, rhs = residuals
    d_lhs = jax.vjp(lambda x: _xla_conv(x, rhs, padding), lhs)[1](g)[0]
    d_rhs = jax.vjp(lambda w: _winograd(lhs, w, padding), rhs)[1](g)[0]
    return d_lhs, d_rhs


_xla_forward_winograd_wgrad.defvjp(_hybrid_fwd, _hybrid_bwd)


def winograd_wgrad_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                        dimension_numbers=None, feature_group_count=1, precision=None, *, min_channels: int = 1,
                        min_macs: int = 0, **kwargs):
    """`auto`'s CPU convolution: XLA's forward and input gradient, Winograd's kernel gradient.

    Same arguments, shapes and eligibility as `winograd_conv`. Measured per 3x3 layer on the
    2-core CPU (docs/performance.md): XLA:CPU's kernel-gradient convolution is 2-3x slower than
    its forward one and Winograd's kernel gradient is 2-3x faster than it, while for the forward
    pass and the input gradient Winograd gains nothing over XLA (so PGD, which needs only those,
    is left as it was). A custom VJP (reverse mode only: no forward-mode derivatives through it)
    combines the two; where the kernel gradient is not needed (PGD, the generator steps of DHBE)
    XLA drops its computation. Ineligible calls go to lax.conv_general_dilated.
    """
    if not _winograd_eligible(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                              feature_group_count, kwargs, min_channels, min_macs) or precision is not None:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
    return _xla_forward_winograd_wgrad(lhs, rhs, tuple(tuple(p) for p in padding))
