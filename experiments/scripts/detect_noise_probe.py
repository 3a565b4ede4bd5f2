"""Can `pbe_jax.detect` run data-free, on noise images instead of test images?

  PYTHONPATH=. python experiments/scripts/detect_noise_probe.py RUN_DIR [EPS ...]

For the model of RUN_DIR (any finished run), runs the detector (untargeted PGD-7, step eps/5)
at each EPS (in 1/255 units; default 6 and 32) on 500 images of three sources: the dataset's
test images, uniform noise (every pixel uniform in 0..255) and Gaussian noise (mean 127, std 40,
clipped), all seeded, and prints the suspected class, the concentration, the flip rate and the
class counts of the flipped predictions, one line per (eps, source).
"""

import sys

import numpy as np

from attacks.pgd import PGDConfig
from backdoor_core import rundir
from backdoor_core.data import load_dataset
from pbe_jax import DetectConfig, detect


def noise_images(shape: tuple[int, ...], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """{'uniform', 'gauss'}: uint8 [n, *shape] noise images, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    return {"uniform": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            "gauss": np.clip(rng.normal(127, 40, (n, *shape)), 0, 255).astype(np.uint8)}


def main(run: str, eps_list: list[float], n: int = 500) -> None:
    _, module, variables = rundir.load_model(run)
    record = rundir.read_record(run)
    _, test = load_dataset(record.get("dataset_source") or record["dataset"])
    sources = {"test": test.images, **noise_images(test.images.shape[1:], n)}
    for eps in eps_list:
        config = DetectConfig(pgd=PGDConfig(eps=eps / 255, alpha=eps / 5 / 255, steps=7), num_images=n)
        for name, images in sources.items():
            d = detect(module, variables, images, config)
            print(f"eps {eps:5.1f} {name:8s} suspected {d.suspected_target} concentration {d.concentration:.3f} "
                  f"flip {d.flip_rate:.3f} counts {d.counts.tolist()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [float(e) for e in sys.argv[2:]] or [6.0, 32.0])
