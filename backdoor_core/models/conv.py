"""The convolution implementation behind every registry model (and DHBE's generators).

Two implementations compute the same function with the same `nn.Conv` parameters (so
checkpoints do not depend on the choice): XLA's native convolution, and im2col - the kh x kw
shifted slices of the padded input concatenated along channels, then one matrix product with
the kernel reshaped to [kh * kw * C_in, C_out]. im2col was expected to be faster on XLA:CPU
(an earlier measurement on this project's 2-core machine: 19 vs 56-60 GFLOP/s for a 3x3
64->64 layer, batch 128, forward + backward), but with jax 0.10.2 it is not (2026-11-26,
docs/performance.md: XLA 36.5 vs im2col 31.5 GFLOP/s for that layer,
20.0 vs 11.8 at 16 channels; a ResNet-18 SGD step is equal at width 1, PGD at width 1/4 is 2.4x
slower with im2col, whose input gradient goes through pads and scatter-adds). So XLA's
convolution is the default everywhere; `BACKDOOR_CONV=im2col` selects the other, for machines or
versions where it pays.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("xla", "im2col")


def conv_impl() -> str:
    """'xla' (measured fastest here on CPU too), unless BACKDOOR_CONV names 'im2col'."""
    forced = os.environ.get("BACKDOOR_CONV")
    if forced:
        if forced not in IMPLEMENTATIONS:
            raise ValueError(f"BACKDOOR_CONV={forced!r}; expected one of {IMPLEMENTATIONS}")
        return forced
    return "xla"


def conv_fn():
    """The `conv_general_dilated` argument for `nn.Conv`: im2col_conv, or None (XLA's)."""
    return im2col_conv if conv_impl() == "im2col" else None


def _is_nhwc_hwio(lhs, rhs, dimension_numbers) -> bool:
    """Whether the layouts are NHWC x HWIO (None means lax's default NCHW x OIHW: not ours)."""
    if dimension_numbers is None or lhs.ndim != 4:
        return False
    return dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, precision=None, **kwargs):
    """lax.conv_general_dilated for NHWC x HWIO with explicit padding, as slices + one matmul.

    lhs [N, H, W, C_in], rhs [kh, kw, C_in, C_out] -> [N, H_out, W_out, C_out]. Any other case
    (dilation, groups, other layouts, string padding) is passed to lax.conv_general_dilated.
    """
    plain = (feature_group_count == 1 and not kwargs and not isinstance(padding, str)
             and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and _is_nhwc_hwio(lhs, rhs, dimension_numbers))
    if not plain:
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
