"""TrojanNN (Liu, Ma, Aafer, Lee, Zhai, Wang, Zhang, "Trojaning Attack on Neural Networks",
NDSS 2018): a patch whose pixels are optimised to excite chosen neurons of a clean model.

Steps:
  1. `trojan_mask`: a 0/1 mask, a size x size square at the bottom-right corner (5x5 on 32x32
     images, scaled with the image: 4x4 on 28x28).
  2. `select_neurons`: the `num_neurons` penultimate neurons (the `intermediates/features` every
     model sows) with the largest summed absolute weight into the output layer
     (params['classifier']['kernel'], [F, K]).
  3. `optimize_pattern`: starting from a seeded uniform-noise patch, `steps` Adam steps (one
     jitted step, called in a host loop) minimise mean((a_j(x') - target_value)^2) over the
     chosen neurons j, where x' = (1 - mask) x + mask * pattern pastes the patch on a batch of
     training images; the pattern is clipped to [0, 1] after every step.
  4. The trigger pastes (replaces) the patch like BadNets; poisoning is dirty-label
     (`attacks.poison.poison_split`).
Defaults: TrojanZoo's (2 neurons, target activation 100, learning rate 0.1); 500 steps.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attacks.base import Attack, AttackConfig, TrainedModel
from attacks.triggers import Trigger
from backdoor_core.augment import to_float
from backdoor_core.data import Split
from backdoor_core.errors import InputError, check_settings


@dataclasses.dataclass(frozen=True)
class TrojanNNParams:
    """TrojanNN settings.

    Attributes:
      patch_size: side of the square patch in pixels; None: 5 on 32x32 images, scaled with the
        image height (4 on 28x28).
      num_neurons: how many penultimate neurons the patch excites.
      target_value: the activation the chosen neurons are pushed toward.
      steps, learning_rate: Adam steps on the patch's pixels.
      num_images: training images the patch is pasted on while optimising (0: a black image).
    """

    patch_size: int | None = None
    num_neurons: int = 2
    target_value: float = 100.0
    steps: int = 500
    learning_rate: float = 0.1
    num_images: int = 64


def patch_side(params: TrojanNNParams, image_shape: tuple[int, int, int]) -> int:
    """The patch side in pixels for images of `image_shape` (see TrojanNNParams.patch_size)."""
    if params.patch_size is not None:
        return int(params.patch_size)
    return max(1, int(round(5 * image_shape[0] / 32)))


def trojan_mask(image_shape: tuple[int, int, int], size: int) -> np.ndarray:
    """Step 1: float32 [H, W, 1], 1 on the size x size square at the bottom-right corner."""
    h, w, _ = image_shape
    mask = np.zeros((h, w, 1), np.float32)
    mask[h - size:, w - size:] = 1.0
    return mask


def select_neurons(params: dict, num_neurons: int) -> jax.Array:
    """Step 2: int32 [num_neurons], the features with the largest sum_k |kernel[f, k]|.

    params: a classifier's parameters holding params['classifier']['kernel'] [F, K].
    """
    kernel = params["classifier"]["kernel"]
    strength = jnp.abs(kernel).sum(axis=1)
    return jnp.argsort(-strength)[:num_neurons].astype(jnp.int32)


def penultimate_features(module: nn.Module, variables: dict, images: jax.Array) -> jax.Array:
    """The sown `intermediates/features` [N, F] of `module` in inference mode on images [N,H,W,C]."""
    _, state = module.apply(variables, images, train=False, mutable=["intermediates"])
    return state["intermediates"]["features"][0]


def paste(images: jax.Array, mask: jax.Array, pattern: jax.Array) -> jax.Array:
    """(1 - mask) * images + mask * pattern; images [N,H,W,C], mask [H,W,1], pattern [H,W,C]."""
    return (1.0 - mask) * images + mask * pattern


def neuron_loss(pattern, mask, images, features_fn, neurons, target_value) -> jax.Array:
    """Mean squared gap between the chosen neurons' activations and target_value (step 3)."""
    activations = features_fn(paste(images, mask, pattern))[:, neurons]
    return jnp.mean((activations - target_value) ** 2)


def optimize_pattern(module: nn.Module, variables: dict, mask: jax.Array, pattern: jax.Array,
                     images: jax.Array, neurons: jax.Array, params: TrojanNNParams) -> jax.Array:
    """Step 3: the optimised pattern [H,W,C] in [0, 1] (zero outside the mask).

    Runs `params.steps` Adam steps as a host loop over one jitted step (not a `lax.fori_loop`:
    XLA:CPU runs the convolutions of a rolled loop body several times slower,
    `attacks/low_frequency.py`).
    """
    tx = optax.adam(params.learning_rate)
    features_fn = lambda x: penultimate_features(module, variables, x)  # noqa: E731
    grad_fn = jax.grad(neuron_loss)

    @jax.jit
    def step(pattern, opt_state, images):
        g = grad_fn(pattern, mask, images, features_fn, neurons, params.target_value)
        updates, opt_state = tx.update(g, opt_state, pattern)
        return jnp.clip(optax.apply_updates(pattern, updates), 0.0, 1.0), opt_state

    opt_state = tx.init(pattern)
    for _ in range(int(params.steps)):
        pattern, opt_state = step(pattern, opt_state, images)
    return pattern * mask


def trojannn_trigger(model: TrainedModel, train: Split, params: TrojanNNParams, key: jax.Array) -> Trigger:
    """Steps 1-4: the masked-pattern trigger {'mask' [H,W,1], 'pattern' [H,W,C]} for `model`."""
    shape = train.image_shape
    mask = jnp.asarray(trojan_mask(shape, patch_side(params, shape)))
    init_key, pick_key = jax.random.split(key)
    pattern = jax.random.uniform(init_key, shape) * mask
    if params.num_images:
        pick = np.asarray(jax.random.permutation(pick_key, len(train))[:params.num_images])
        images = jnp.asarray(to_float(train.images[np.sort(pick)]))
    else:
        images = jnp.zeros((1, *shape), jnp.float32)
    neurons = select_neurons(model.variables["params"], params.num_neurons)
    pattern = optimize_pattern(model.module, model.variables, mask, pattern, images, neurons, params)
    return Trigger.make("masked_pattern", {"mask": mask, "pattern": pattern})


class TrojanNN(Attack):
    """Dirty-label optimised-patch attack (see the module docstring)."""

    name = "trojannn"
    params_type = TrojanNNParams
    needs_clean_model = True

    def validate(self, config: AttackConfig, params: TrojanNNParams, image_shape, num_classes) -> None:
        super().validate(config, params, image_shape, num_classes)
        side = patch_side(params, image_shape)
        if not 1 <= side <= min(image_shape[:2]):
            raise InputError(f"trojannn: patch_size {side} does not fit {image_shape[0]}x{image_shape[1]} images; "
                             f"expected 1 <= patch_size <= {min(image_shape[:2])}")
        checks = [(params.num_neurons >= 1, "num_neurons", "at least 1"), (params.steps >= 1, "steps", "at least 1"),
                  (params.learning_rate > 0, "learning_rate", "positive"),
                  (params.num_images >= 0, "num_images", "non-negative")]
        check_settings("trojannn", params, checks)

    def build_trigger(self, config, params, train, key, clean_model=None) -> Trigger:
        if clean_model is None:
            raise InputError("trojannn optimises its patch on a clean model; expected a clean_model, got None")
        features = clean_model.variables["params"]["classifier"]["kernel"].shape[0]
        if params.num_neurons > features:
            raise InputError(f"trojannn: num_neurons {params.num_neurons} exceeds the model's {features} "
                             "penultimate features")
        return trojannn_trigger(clean_model, train, params, key)


TROJANNN = TrojanNN()
