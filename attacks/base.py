"""The backdoor-attack interface: an attack config, per-attack parameters, and the `Attack` hooks.

An attack is one registered object (see `attacks.registry`) that says how to
  1. parse its own parameters (`Attack.params`: a frozen dataclass `params_type` whose defaults
     are BackdoorBench's, filled from `AttackConfig.params`) and check them against the data
     (`Attack.validate`);
  2. build its trigger (`Attack.build_trigger(config, params, train, key, clean_model)`): a
     `attacks.triggers.Trigger`, i.e. a pure function (images [N,H,W,C] in [0,1], key) -> images
     with its parameters in a pytree. Setups that need data or a clean model (TrojanNN, LC) do
     their optimisation here; `clean_model` is a `TrainedModel` or None;
  3. poison the training split, either statically (`Attack.poison`: default, dirty- or
     clean-label by `clean_label`, see `attacks.poison.poison_split`) or on the fly
     (`Attack.batch_transform` returns a jittable (key, images, labels) -> (images, labels)
     that `backdoor_core.fit.fit` applies to every augmented batch, e.g. WaNet);
  4. optionally replace the whole training loop (`custom_training = True` and
     `Attack.train_backdoored(job)`, e.g. IAD's joint generator/classifier training).
`attacks.backdoor.train_backdoor` drives these hooks in that order.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from backdoor_core.data import Split
from backdoor_core.errors import InputError, is_seed

MODES = ("all_to_one", "all_to_all")
RATIO_OF = ("dataset", "target_class")
# "default": the attack's own poisoning - for most attacks a fixed poisoned training set, triggered
# before augmentation, so crop and flip move the trigger with the image (BackdoorBench); WaNet
# poisons every batch, IAD trains its own way. "per_batch" (dirty-label attacks with a fixed
# trigger): the first round-half-up(poison_ratio * B) images of every augmented batch are
# triggered and relabelled in the training step, so the trigger sits exactly where the attack
# puts it (how the official PBE code trains its BadNets and Blend teachers: train_patch.py,
# train_blend.py).
POISONING = ("default", "per_batch")

BatchTransform = Callable[[Any, Any, Any], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """What every attack shares (defaults: BackdoorBench's).

    Attributes:
      name: registry key of the attack (see `attacks.registry.ATTACKS`).
      target: the target label (all-to-one); ignored by all-to-all, which maps y -> (y + 1) mod C.
      mode: "all_to_one" or "all_to_all".
      poison_ratio: fraction in (0, 1] of images poisoned; see `ratio_of`.
      ratio_of: "dataset" (the ratio is of the whole training split, BackdoorBench's convention,
        also for clean-label attacks) or "target_class" (of the target-class images; LC's usual
        convention). The count is round-half-up(poison_ratio * that number of images).
      seed: seeds the trigger (random patterns, warping fields) and which images are poisoned.
      params: attack-specific settings, overriding the defaults of the attack's `params_type`.
      poisoning: "default" (the attack's own: for most a fixed poisoned training set, triggered
        before augmentation) or "per_batch" (dirty-label attacks with a fixed trigger: a share of
        every augmented batch triggered in the training step, as the official PBE code trains its
        teachers); see POISONING.
    """

    name: str = "badnets"
    target: int = 0
    mode: str = "all_to_one"
    poison_ratio: float = 0.1
    ratio_of: str = "dataset"
    seed: int = 0
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    poisoning: str = "default"

    def validate(self, num_classes: int | None = None) -> "AttackConfig":
        """Returns self, or raises InputError naming the first bad setting."""
        if self.mode not in MODES:
            raise InputError(f"attack mode {self.mode!r}; expected one of {MODES}")
        if self.ratio_of not in RATIO_OF:
            raise InputError(f"attack ratio_of {self.ratio_of!r}; expected one of {RATIO_OF}")
        if self.poisoning not in POISONING:
            raise InputError(f"attack poisoning {self.poisoning!r}; expected one of {POISONING}")
        if not is_seed(self.seed):
            raise InputError(f"attack seed = {self.seed!r}; expected a non-negative integer")
        if self.poisoning == "per_batch" and self.ratio_of != "dataset":
            raise InputError(f"attack poisoning 'per_batch' triggers poison_ratio of every batch; "
                             f"ratio_of {self.ratio_of!r} has no meaning there: expected ratio_of 'dataset'")
        if not 0 < self.poison_ratio <= 1:
            raise InputError(f"poison_ratio = {self.poison_ratio}; expected a fraction in (0, 1]")
        if num_classes is not None and not 0 <= self.target < num_classes:
            raise InputError(f"attack target {self.target} is not a class of this dataset; "
                             f"expected a label in [0, {num_classes - 1}]")
        return self

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AttackConfig":
        """The config of a dict such as record.json['attack'], whose 'poisoning' says how the run
        poisoned ('static', 'on_the_fly', 'custom' or 'per_batch'; `attacks.backdoor.poisoning_kind`):
        every value but 'per_batch' was the attack's default."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if "poisoning" in values and values["poisoning"] not in POISONING:
            values["poisoning"] = "default"
        return cls(**values)


def poison_target(labels: np.ndarray, config: AttackConfig, num_classes: int) -> np.ndarray:
    """Target label of each image [N] (int32): config.target, or (y + 1) mod C for all-to-all."""
    labels = np.asarray(labels)
    if config.mode == "all_to_all":
        return ((labels + 1) % num_classes).astype(np.int32)
    return np.full(labels.shape, config.target, np.int32)


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Parameters of an attack that has none of its own."""


class TrainedModel(NamedTuple):
    """A trained classifier: spec (backdoor_core.models.ModelSpec), flax module, variables."""

    spec: Any
    module: Any
    variables: dict


@dataclasses.dataclass(frozen=True)
class BackdoorJob:
    """Everything `Attack.train_backdoored` needs to train a backdoored model (custom training).

    `record` holds the attack's record fields for `backdoor_core.fit.fit(record=...)` (with the
    attack config under record['config']['attack'], so a resume with other settings is refused).
    The hook returns (FitResult, Trigger); `attacks.backdoor` then saves the trigger and record.
    """

    config: AttackConfig
    params: Any
    spec: Any  # ModelSpec
    train: Split
    test: Split
    train_config: Any  # TrainConfig
    run_dir: Path
    mesh: Any
    key: Any
    record: dict
    clean_model: TrainedModel | None = None
    stop_after_steps: int | None = None
    progress: bool = True
    defaults: dict | None = None  # record-shaped defaults of record['config'] (`backdoor_core.fit.fit`)


class Attack:
    """One backdoor attack. Subclasses set the class attributes and implement `build_trigger`.

    Attributes:
      name: the registry key.
      params_type: frozen dataclass of the attack's own settings (defaults: BackdoorBench's).
      param_defaults: overrides of params_type's defaults for this registered variant
        (e.g. badnets_checker = BadNets with a checkerboard).
      clean_label: poison only target-class images and keep their labels (SIG, LC).
      needs_clean_model: build_trigger requires a clean trained model (TrojanNN, LC, LF).
      poison_needs_clean_model: `poison` requires it too, so rebuilding the poisoned set needs the
        clean model the attack was made with (LC hardens its images with PGD on it).
      on_the_fly: poisoning happens per batch through `batch_transform` (WaNet).
      custom_training: training is replaced by `train_backdoored` (IAD).
    """

    name: str = ""
    params_type: type = NoParams
    param_defaults: Mapping[str, Any] = {}
    clean_label: bool = False
    needs_clean_model: bool = False
    poison_needs_clean_model: bool = False
    on_the_fly: bool = False
    custom_training: bool = False

    def params(self, config: AttackConfig):
        """The attack's parameter dataclass: defaults, then config.params; unknown keys -> InputError."""
        known = {f.name: f for f in dataclasses.fields(self.params_type)}
        unknown = sorted(set(config.params) - set(known))
        if unknown:
            raise InputError(f"attack {self.name}: unknown parameter(s) {unknown}; expected some of {sorted(known)}")
        values = {**self.param_defaults, **config.params}
        hints = typing.get_type_hints(self.params_type)
        values = {k: tuple(v) if isinstance(v, list) and "tuple" in str(hints.get(k)) else v for k, v in values.items()}
        return self.params_type(**values)

    def validate(self, config: AttackConfig, params, image_shape: tuple[int, int, int], num_classes: int) -> None:
        """Raises InputError if config/params do not fit images of `image_shape` and `num_classes`.

        The base checks the shared settings; attacks extend it (e.g. a trigger bigger than the image).
        """
        config.validate(num_classes)
        if self.clean_label and config.mode != "all_to_one":
            raise InputError(f"attack {self.name} is clean-label: it supports only mode 'all_to_one'")
        refusal = self.per_batch_refusal() if config.poisoning == "per_batch" else None
        if refusal:
            raise InputError(refusal)

    def per_batch_refusal(self) -> str | None:
        """Why this attack cannot poison per batch (`AttackConfig.poisoning`), or None if it can."""
        if not (self.clean_label or self.on_the_fly or self.custom_training):
            return None
        kind = ("clean-label (it poisons target-class images only)" if self.clean_label
                else "trained its own way" if self.custom_training else "already poisoned per batch")
        return (f"attack {self.name} is {kind}; poisoning 'per_batch' is for dirty-label attacks "
                "with a fixed trigger: expected poisoning 'default'")

    def trigger_drawn_from_key(self, params) -> bool:
        """Whether build_trigger draws the trigger from its key (WaNet's grid, Blended's noise), so
        that the attack's settings alone do not give back the trigger of a model trained elsewhere."""
        return False

    def build_trigger(self, config: AttackConfig, params, train: Split, key, clean_model: TrainedModel | None = None):
        """The attack's `Trigger` for images like train's (see the module docstring, step 2)."""
        raise NotImplementedError(f"attack {self.name} does not build a trigger")

    def poison(self, train: Split, config: AttackConfig, trigger, *, params=None,
               clean_model: TrainedModel | None = None, mesh=None) -> tuple[Split, np.ndarray]:
        """Static poisoning: (poisoned split, sorted int64 indices of the poisoned images).

        `params`, `clean_model` and `mesh` are there for attacks whose poisoning needs them
        (LC perturbs its images with PGD on the clean model); the default ignores them.
        """
        from attacks.poison import poison_split

        return poison_split(train, config, trigger, clean_label=self.clean_label)

    def batch_transform(self, config: AttackConfig, params, trigger, num_classes: int) -> BatchTransform:
        """On-the-fly poisoning (only for `on_the_fly` attacks): a jittable batch transform."""
        raise NotImplementedError(f"attack {self.name} poisons statically; it has no batch transform")

    def train_backdoored(self, job: BackdoorJob):
        """Custom training (only for `custom_training` attacks): returns (FitResult, Trigger)."""
        raise NotImplementedError(f"attack {self.name} trains with the standard loop")
