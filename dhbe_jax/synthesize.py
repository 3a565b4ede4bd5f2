"""Synthetic images of a classifier without data: DHBE's sample generator fitted to the model alone.

`synthesize(spec, variables, num_images, rng)` gives images for tools that need inputs but
where the defender holds none (DHBE's setting), e.g. `pbe_jax.detect` on a data-free model.
Algorithm:
  1. A fresh sample generator G (DHBE's, `generators.SampleGenerator`, width `config.ngf`,
     emitting pixel images with the model's normalisation) from `rng`.
  2. `steps` Adam steps of G alone on DAFL's objective against the frozen model: class balance
     (log K - H(mean softmax) on each batch) + confidence (mean per-image entropy) + G's TV
     prior. This is DHBE's opt-in generator warm-up (`DHBEConfig.generator_warmup`,
     `step.make_generator_warmup`) run on its own: the same program, so the images are those a
     DHBE run with that warm-up starts its game from.
  3. ceil(num_images / batch) batches of G(z), z ~ N(0, I), G's batch-norm in training mode as
     in the game; the first `num_images` are returned.
The balance term keeps G from collapsing onto the region a noise-triggered teacher sends to its
target (docs/dhbe.md), so the images cover the classes the model knows rather than its trigger.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np

from backdoor_core.errors import InputError
from backdoor_core.models import ModelSpec, build_model
from backdoor_core.sharding import check_batch_size, make_mesh, replicate
from dhbe_jax.step import DHBEConfig, _Forward, init_state, make_generator_warmup, make_players

# DHBE's `cpu` generator settings (experiments/configs/erase_dhbe.py): batch 64, ngf 32, 200 warm-up steps.
SYNTHESIS = DHBEConfig(batch_size=64, ngf=32, lam=0.0)
SYNTHESIS_STEPS = 200


@functools.lru_cache(maxsize=4)
def _programs(spec: ModelSpec, config: DHBEConfig, mesh):
    """(players, jitted sampler (generator params, key) -> G(z) [batch, H, W, C] in [0, 1]) for a
    model spec, a config (`generator_warmup` = 0) and a mesh; cached, so that repeated calls (one
    per model of a detection table) compile once, the warm-up step included (it is cached per
    players)."""
    image_shape = tuple(spec.image_shape)
    players = make_players(build_model(spec), image_shape, config)
    return players, jax.jit(_Forward(players, config, image_shape, mesh).synthesize)


def synthesize(spec: ModelSpec, variables: dict, num_images: int, rng: jax.Array, *, steps: int = SYNTHESIS_STEPS,
               config: DHBEConfig = SYNTHESIS, mesh=None) -> tuple[np.ndarray, dict]:
    """Steps 1-3 for the model (`spec`, `variables`).

    Args:
      num_images: images returned (>= 1); steps: G's Adam steps (>= 0; 0 gives an untrained G's
        images); config: G's settings (ngf, nz, batch_size, generator_lr, TV weights) read off a
        DHBE config; its `lam` and trigger settings are unused.
    Returns:
      (float32 images [num_images, H, W, C] in [0, 1], metrics of the last step: warmup_balance
      and warmup_confidence, empty when steps = 0).
    """
    if num_images < 1:
        raise InputError(f"synthesize: num_images = {num_images}; expected at least 1")
    if steps < 0:
        raise InputError(f"synthesize: steps = {steps}; expected a non-negative number of generator steps")
    image_shape = tuple(spec.image_shape)
    config = dataclasses.replace(config, lam=0.0, generator_warmup=steps).validate(image_shape)
    mesh = mesh or make_mesh()
    check_batch_size(config.batch_size, mesh, "synthesis batch size")
    players, sample = _programs(spec, dataclasses.replace(config, generator_warmup=0), mesh)
    state = replicate(mesh, init_state(players, variables, config, rng))
    metrics = {}
    if steps:  # make_generator_warmup's step is cached per (players, config without the step count, mesh)
        state, metrics = make_generator_warmup(players, config, image_shape, mesh)(state, replicate(mesh, variables))
    keys = jax.random.split(jax.random.fold_in(state.key, 2), math.ceil(num_images / config.batch_size))
    images = np.concatenate([np.asarray(sample(state.generator, k)) for k in keys])[:num_images]
    return images.astype(np.float32), {k: float(v) for k, v in metrics.items()}
