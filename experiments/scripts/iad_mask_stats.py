"""How sparse and how image-specific an IAD run's trigger masks are, beside an untrained mask
generator of the same architecture: a check of a shortened mask pre-training.

  PYTHONPATH=. python experiments/scripts/iad_mask_stats.py RUN_DIR [--images 512] [--source S]

Reads the trained generators from RUN_DIR's trigger and the first `images` test images of the
run's dataset (`--source` overrides the record's `dataset_source`). Prints, for the trained and a
freshly initialised mask generator: the mean mask value (the pre-training pushes it under the
density 0.032 of the official code), the share of pixels with mask > 0.5, the smallest and
largest per-image mask share, and the diversity the pre-training rewards: the mean over pairs
of consecutive images of RMS(m(x_i) - m(x_j)) / RMS(x_i - x_j) (0: one mask for every image).
For the trained trigger also the RMS pixel change it makes and how many of the triggered
images' changed pixels lie inside the mask.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from attacks import iad
from attacks.triggers import load_trigger
from backdoor_core.augment import to_float
from backdoor_core.data import load_split


def mask_stats(masks: np.ndarray, images: np.ndarray) -> dict:
    """Summary of masks [N,H,W,1] in [0, 1] for images [N,H,W,C] in [0, 1]."""
    share = (masks > 0.5).mean(axis=(1, 2, 3))
    ratio = np.asarray(iad._rms_distance(masks[1:], masks[:-1]) / (iad._rms_distance(images[1:], images[:-1]) + 1e-7))
    return {"mean": float(masks.mean()), "share_over_0.5": float(share.mean()),
            "share_min": float(share.min()), "share_max": float(share.max()), "diversity": float(ratio.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--source", default=None)
    args = parser.parse_args()
    record = json.loads((args.run_dir / "record.json").read_text())
    source = args.source or record["dataset_source"]
    test = load_split(source, "test")
    x = np.asarray(to_float(jnp.asarray(test.images[: args.images])))
    trigger = load_trigger(args.run_dir)
    channels, depth = trigger.settings["base_channels"], trigger.settings["depth"]
    trained = np.asarray(iad.generate_mask(trigger.arrays["mask_generator"], x, channels, depth))
    _, fresh_params = iad.init_generators(jax.random.PRNGKey(0), x.shape[1:], channels, depth)
    fresh = np.asarray(iad.generate_mask(fresh_params, x, channels, depth))
    triggered = np.asarray(iad.apply_trigger(trigger.arrays, x, None, base_channels=channels, depth=depth))
    changed = np.abs(triggered - x).max(axis=-1, keepdims=True) > 1 / 255
    print(f"{args.run_dir} ({len(x)} test images of {source}; generators {channels} channels, depth {depth})")
    for name, masks in (("trained", trained), ("untrained", fresh)):
        print(f"{name:9s} " + "  ".join(f"{k} {v:.4f}" for k, v in mask_stats(masks, x).items()))
    print(f"trigger: RMS pixel change {float(np.sqrt(np.mean((triggered - x) ** 2))):.4f}, "
          f"changed pixels per image {float(changed.mean()):.4f}, of them inside the mask (> 0.5) "
          f"{float((changed & (trained > 0.5)).sum() / max(changed.sum(), 1)):.4f}")


if __name__ == "__main__":
    main()
