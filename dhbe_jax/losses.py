"""DHBE's losses. L1 is the mean absolute difference of raw logits, as in the official code.

- D = L1(S(x), T(x)): the distillation discrepancy (G maximises it, S minimises it).
- R = L1(S(x_p), S(x)): the trigger's effect on the student (G_p maximises it, S minimises it).
- TV: total variation over 4 directions (horizontal, vertical, both diagonals) of images
  [B, H, W, C]; TV1 sums the directions' mean absolute differences, TV2 their (unsquared)
  Frobenius norms over the batch (DeepInversion's image prior, used by the DHBE code).
"""

import jax
import jax.numpy as jnp


def l1_logits(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean absolute difference of two logit arrays [B, K] (a scalar)."""
    return jnp.mean(jnp.abs(a - b))


def _differences(x: jax.Array):
    """The four neighbour differences of images [B, H, W, C]."""
    return (x[:, :, :-1] - x[:, :, 1:], x[:, :-1, :] - x[:, 1:, :],
            x[:, 1:, :-1] - x[:, :-1, 1:], x[:, :-1, :-1] - x[:, 1:, 1:])


def tv_l1(x: jax.Array) -> jax.Array:
    """TV1: sum over the 4 directions of the mean absolute neighbour difference."""
    return sum(jnp.mean(jnp.abs(d)) for d in _differences(x))


def tv_l2(x: jax.Array) -> jax.Array:
    """TV2: sum over the 4 directions of the Frobenius norm of the neighbour differences."""
    return sum(jnp.sqrt(jnp.sum(d * d)) for d in _differences(x))


def balance_loss(logits: jax.Array) -> jax.Array:
    """log K - H(mean_b softmax(logits_b)) for logits [B, K]: 0 when the batch's predictions are
    spread evenly over the K classes, log K when they all fall in one class (DAFL's
    information-entropy loss, shifted to be non-negative)."""
    mean_p = jnp.mean(jax.nn.softmax(logits), axis=0)
    return jnp.log(logits.shape[-1]) + jnp.sum(mean_p * jnp.log(jnp.clip(mean_p, 1e-12)))


def confidence_loss(logits: jax.Array) -> jax.Array:
    """Mean per-sample entropy of softmax(logits) [B, K]: 0 for one-hot predictions."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))
