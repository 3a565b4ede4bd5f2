"""The convolution implementation behind every registry model (and DHBE's generators).

On CPU backends XLA's native convolution is slow (one 3x3 conv layer, batch 128, 64->64 channels,
forward + backward: ~19 GFLOP/s on the project's 2-core machine), while the same convolution as
im2col - the kh x kw shifted slices of the padded input concatenated along channels, then one
matrix product with the kernel reshaped to [kh * kw * C_in, C_out] - runs at ~56-60 GFLOP/s,
because XLA:CPU's matrix product is well tuned. On GPUs and TPUs XLA's convolution (cuDNN) is
the fast one. `conv_fn()` picks: im2col on CPU, XLA elsewhere; `BACKDOOR_CONV=xla|im2col`
forces one. Both compute the same function (tests/test_models.py checks them against each
other), and the parameters are the same `nn.Conv` kernels, so checkpoints do not depend on it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("xla", "im2col")


def conv_impl() -> str:
    """'im2col' on CPU backends, 'xla' otherwise, unless BACKDOOR_CONV names one."""
    forced = os.environ.get("BACKDOOR_CONV")
    if forced:
        if forced not in IMPLEMENTATIONS:
            raise ValueError(f"BACKDOOR_CONV={forced!r}; expected one of {IMPLEMENTATIONS}")
        return forced
    return "im2col" if jax.default_backend() == "cpu" else "xla"


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
