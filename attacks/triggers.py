"""Triggers: pure, jittable functions (images, key) -> images with their parameters in a pytree.

A `Trigger` holds
  kind    the name of its apply function (a key of `TRIGGER_KINDS`, or a "module:function"
          string), static;
  arrays  a dict pytree of arrays (patterns, masks, warping grids, generator weights);
  static  sorted (name, value) pairs of JSON-able settings passed to the apply function
          as keyword arguments (static under jit).
`trigger(images, key)` computes `apply(arrays, images, key, **static)`: images are float32
[N, H, W, C] in [0, 1] and the result is clipped to [0, 1]. The key is used by random triggers
only. `save_trigger` / `load_trigger` write and read it as trigger.npz + trigger.json.

The generic kinds here:
  masked_pattern  x' = (1 - mask) * x + mask * pattern   (BadNets, TrojanNN, LC's corners: a
                  0/1 mask; Blended: mask = alpha everywhere)
  additive        x' = clip(x + signal)                  (SIG, low-frequency)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from backdoor_core.errors import InputError

TRIGGER_KINDS: dict[str, str] = {
    "masked_pattern": "attacks.triggers:apply_masked_pattern",
    "additive": "attacks.triggers:apply_additive",
    "warp": "attacks.wanet:apply_warp",
    "iad": "attacks.iad:apply_trigger",
}
TRIGGER_NPZ = "trigger.npz"
TRIGGER_JSON = "trigger.json"
FORMAT = 1


def _hashable(value):
    """JSON-loaded value with lists turned into tuples (so it can be a static jit argument)."""
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


@flax.struct.dataclass
class Trigger:
    """A trigger: apply function `kind`, array parameters `arrays`, static settings `static`."""

    kind: str = flax.struct.field(pytree_node=False)
    arrays: dict[str, Any]
    static: tuple[tuple[str, Any], ...] = flax.struct.field(pytree_node=False, default=())

    @classmethod
    def make(cls, kind: str, arrays: dict, **static) -> "Trigger":
        """A trigger with `arrays` as float32 jax arrays (nested dicts allowed) and sorted statics."""
        arrays = jax.tree.map(jnp.asarray, arrays)
        return cls(kind, arrays, tuple(sorted((k, _hashable(v)) for k, v in static.items())))

    @property
    def settings(self) -> dict:
        return dict(self.static)

    def __call__(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Triggered images float32 [N, H, W, C] in [0, 1] from images [N, H, W, C] in [0, 1]."""
        from backdoor_core.plugins import resolve

        apply = resolve(TRIGGER_KINDS.get(self.kind, self.kind), f"trigger kind {self.kind!r}")
        key = jax.random.PRNGKey(0) if key is None else key
        return jnp.clip(apply(self.arrays, jnp.asarray(images, jnp.float32), key, **self.settings), 0.0, 1.0)


def apply_masked_pattern(arrays: dict, images: jax.Array, key: jax.Array) -> jax.Array:
    """(1 - mask) * images + mask * pattern; mask [H, W, 1|C] in [0, 1], pattern [H, W, C]."""
    del key
    mask, pattern = arrays["mask"], arrays["pattern"]
    return (1.0 - mask) * images + mask * pattern


def apply_additive(arrays: dict, images: jax.Array, key: jax.Array) -> jax.Array:
    """images + signal (clipped by the caller); signal [H, W, C]."""
    del key
    return images + arrays["signal"]


@jax.jit
def _apply_chunk(trigger: Trigger, images: jax.Array, key: jax.Array) -> jax.Array:
    x = trigger(images.astype(jnp.float32) / 255.0, key)
    return jnp.round(x * 255.0).astype(jnp.uint8)


def apply_to_uint8(trigger: Trigger, images: np.ndarray, key: jax.Array, chunk: int = 512) -> np.ndarray:
    """Triggered copies of uint8 images [N, H, W, C], rounded back to uint8 (as stored datasets are).

    Works in fixed-size chunks (the last one zero-padded, so it compiles once); chunk i uses the
    key fold_in(key, i).
    """
    images = np.asarray(images)
    out = np.empty_like(images)
    for i, start in enumerate(range(0, len(images), chunk)):
        part = images[start:start + chunk]
        n = len(part)
        if n < chunk:
            part = np.concatenate([part, np.zeros((chunk - n, *part.shape[1:]), part.dtype)])
        out[start:start + n] = np.asarray(_apply_chunk(trigger, part, jax.random.fold_in(key, i)))[:n]
    return out


def save_trigger(run_dir: Path, trigger: Trigger) -> None:
    """Writes trigger.npz (arrays, nested keys joined by '/') and trigger.json (kind, settings)."""
    run_dir = Path(run_dir)
    flat = traverse_util.flatten_dict(jax.device_get(trigger.arrays), sep="/")
    tmp = run_dir / (TRIGGER_NPZ + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in flat.items()})
    tmp.replace(run_dir / TRIGGER_NPZ)
    spec = {"format": FORMAT, "kind": trigger.kind, "static": trigger.settings,
            "arrays": {k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)} for k, v in flat.items()}}
    tmp_json = run_dir / (TRIGGER_JSON + ".tmp")
    tmp_json.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    tmp_json.replace(run_dir / TRIGGER_JSON)


def load_trigger(run_dir: Path) -> Trigger:
    """The trigger saved in `run_dir` by `save_trigger`; InputError if missing or inconsistent."""
    run_dir = Path(run_dir)
    npz, spec_path = run_dir / TRIGGER_NPZ, run_dir / TRIGGER_JSON
    if not npz.is_file() or not spec_path.is_file():
        raise InputError(f"{run_dir} holds no trigger ({TRIGGER_NPZ} and {TRIGGER_JSON}); "
                         "expected an attack run directory")
    try:
        spec = json.loads(spec_path.read_text())
        with np.load(npz, allow_pickle=False) as f:
            flat = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise InputError(f"trigger in {run_dir} could not be read ({e})") from None
    expected = {k: tuple(v["shape"]) for k, v in spec.get("arrays", {}).items()}
    found = {k: v.shape for k, v in flat.items()}
    if spec.get("format") != FORMAT or expected != found:
        raise InputError(f"trigger in {run_dir} is inconsistent: {TRIGGER_JSON} lists arrays {expected}, "
                         f"{TRIGGER_NPZ} holds {found} (format {spec.get('format')}, expected {FORMAT})")
    arrays = traverse_util.unflatten_dict(flat, sep="/")
    return Trigger.make(spec["kind"], arrays, **spec["static"])
