"""Model registry: classifiers by short name, described by a `ModelSpec`.

A `ModelSpec` (architecture name, number of classes, input shape, width multiplier and the
dataset's normalisation) is all a run directory needs to rebuild its model. Every model maps
float32 NHWC pixels in [0, 1] to logits, takes `train` for batch norm, and sows its pooled
penultimate features as `intermediates/features`.

Models from other packages (docs/extending.md): the entry-point group `backdoor_erasing.models`
(`name = "module:constructor"`), or `register_model` inside one process. A constructor takes
(num_classes, width, mean, std) and returns a module with that contract.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backdoor_core.errors import InputError
from backdoor_core.plugins import check_plugin_name, entry_point_plugins, resolve
from backdoor_core.models.resnet import preact_resnet18, resnet18, resnet34
from backdoor_core.models.small_cnn import SmallCNN
from backdoor_core.models.vgg import VGG, VGG_LAYERS
from backdoor_core.models.wrn import WideResNet

MODELS: dict[str, "Callable[..., nn.Module] | str"] = {
    "preact_resnet18": preact_resnet18,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "wrn16_1": functools.partial(WideResNet, 16, 1),
    "wrn16_2": functools.partial(WideResNet, 16, 2),
    "wrn16_4": functools.partial(WideResNet, 16, 4),
    "wrn40_1": functools.partial(WideResNet, 40, 1),
    "wrn40_2": functools.partial(WideResNet, 40, 2),
    "vgg11_bn": functools.partial(VGG, VGG_LAYERS["vgg11"]),
    "vgg16_bn": functools.partial(VGG, VGG_LAYERS["vgg16"]),
    "small_cnn": SmallCNN,
}
BUILT_IN = frozenset(MODELS)
ENTRY_POINT_GROUP = "backdoor_erasing.models"
MODELS.update(entry_point_plugins(ENTRY_POINT_GROUP, BUILT_IN, "model"))


def register_model(name: str, constructor: "Callable[..., nn.Module] | str") -> None:
    """Makes `constructor` ((num_classes, width, mean, std) -> flax module, or "module:attribute"
    naming one) known as `name` to this process; a built-in name is refused."""
    check_plugin_name(name, BUILT_IN, "model")
    if not (callable(constructor) or isinstance(constructor, str)):
        raise InputError(f"register_model({name!r}, ...): expected a constructor or a 'module:attribute' string")
    MODELS[name] = constructor


def model_constructor(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as `name` (a plugin's imported on first use)."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    entry = MODELS[name]
    return resolve(entry, f"model {name!r}") if isinstance(entry, str) else entry


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier.

    Attributes:
      name: registry key (see `MODELS`).
      num_classes: size of the output layer.
      image_shape: (H, W, C) of the inputs.
      width: channel multiplier (0.25 gives PreAct-ResNet-18 with 16 base channels).
      mean, std: per-channel normalisation applied by the first layer, length C.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    width: float = 1.0
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self):
        if self.name not in MODELS:
            raise InputError(f"unknown model {self.name!r}; expected one of {', '.join(MODELS)}")
        if self.num_classes < 2:
            raise InputError(f"model {self.name}: num_classes = {self.num_classes}; expected at least 2")
        if self.width <= 0:
            raise InputError(f"model {self.name}: width = {self.width}; expected a positive multiplier")
        channels = self.image_shape[-1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise InputError(f"model {self.name}: mean/std have {len(self.mean)}/{len(self.std)} entries; "
                             f"expected one per image channel ({channels})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(d["name"], int(d["num_classes"]), tuple(d["image_shape"]), float(d["width"]),
                   tuple(d["mean"]), tuple(d["std"]))


def spec_for_data(name: str, images: np.ndarray, num_classes: int, width: float = 1.0) -> ModelSpec:
    """A spec whose normalisation is the per-channel mean/std of `images` (uint8 [N, H, W, C])."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean = tuple(float(m) for m in pixels.mean(0).round(4))
    std = tuple(float(s) for s in pixels.std(0).round(4))
    return ModelSpec(name, num_classes, tuple(int(s) for s in images.shape[1:]), width, mean, std)


def build_model(spec: ModelSpec) -> nn.Module:
    """The flax module described by `spec`."""
    return model_constructor(spec.name)(num_classes=spec.num_classes, width=spec.width, mean=spec.mean, std=spec.std)


def init_variables(spec: ModelSpec, key: jax.Array) -> dict:
    """Fresh variables {'params', 'batch_stats'} for `spec`.

    Jitted as one program: op-by-op initialisation compiles every random draw separately,
    which takes seconds per model on a CPU.
    """
    if isinstance(key, jax.core.Tracer):  # inside another jit (eval_shape, say): part of its program
        return _init(spec, key)
    return _init_program()(spec, key)


def _init(spec: ModelSpec, key: jax.Array) -> dict:
    dummy = jnp.zeros((1, *spec.image_shape), jnp.float32)
    variables = build_model(spec).init(key, dummy, train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def variable_shapes(tree) -> dict[str, tuple[int, ...]]:
    """{'collection/module/.../name': shape} for every array of a variables tree (arrays or
    ShapeDtypeStructs), for comparing two trees leaf by leaf."""
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_variables_fit(module: nn.Module, variables: dict, image_shape: tuple[int, ...],
                        what: str = "variables") -> None:
    """Raises InputError unless `variables` are variables of `module` for images [N, *image_shape]:
    the arrays `module.init` makes there (collections, names, shapes; traced only, nothing runs),
    and no others. The message names the first differences: variables of another width or
    architecture, a missing `batch_stats` collection, or images of another size than the model's
    (which a dense layer after a flatten notices). Without it such variables fail inside flax
    (ScopeParamShapeError, ScopeCollectionNotFound) on the first batch."""
    if not isinstance(variables, Mapping) or "params" not in variables:
        found = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise InputError(f"{what}: expected a dict with 'params' (and 'batch_stats' for batch norm), got {found}")
    dummy = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    expected = variable_shapes(jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), dummy))
    given = variable_shapes(variables)
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    other = [f"{k} {given[k]} (expected {expected[k]})" for k in expected if k in given and given[k] != expected[k]]
    if not (missing or extra or other):
        return
    first = lambda items: sorted(items, key=lambda k: not k.startswith("params/"))[:2]  # noqa: E731
    parts = [f"{len(items)} {label}, e.g. {', '.join(first(items))}"
             for label, items in (("differ in shape", other), ("missing", missing), ("not in the model", extra)) if items]
    hint = "another width or architecture, or images of another size?" if other else \
        "variables of another architecture, or a collection left out?"
    raise InputError(f"{what} do not fit {type(module).__name__} for [N, {', '.join(map(str, image_shape))}] images: "
                     f"{'; '.join(parts)} ({hint})")


@functools.cache
def _init_program():
    """The jitted `_init`. On CPU backends it is compiled with XLA's backend optimisation level 0:
    the program runs once, and its compile (one threefry hash per parameter) takes 4-6 s per
    model at the default level and 0.5-2 s at 0 (2026-11-27, every registry model; the
    variables are bit-identical, measured for every model at 32x32x3 and 28x28x1). Decided at the
    first call, after the backend is configured."""
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(_init, static_argnums=0, compiler_options=options)
