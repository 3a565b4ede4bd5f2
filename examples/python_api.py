"""The library from Python: a finished attack run -> detection -> DHBE and PBE -> metrics.

  python examples/python_api.py RUN_DIR [--smoke]

RUN_DIR is an attack run directory (`python -m experiments.attack ...`, or a teacher of the
quickstart matrix: ~/runs/quickstart/teachers/mnist_subset-small_cnn-badnets-s0). The example uses
only what the command lines use, in the order they use it:

  1. `load_attack_run`: the backdoored model, its trigger and the clean and triggered test sets,
     all from the run directory (nothing re-specified by hand);
  2. `pbe_jax.detect`: untargeted PGD on unlabelled test images, the class they pile into;
  3. `dhbe_jax.erase`: DHBE, no data at all (`DHBEConfig()` is the paper's; smaller here);
  4. `pbe_jax.pbe`: PBE on the poisoned training set the attack trained on (rebuilt from the
     run: `poisoned_training_set`), no clean data;
  5. `AttackRun.evaluate`: C-Acc, ASR, ASR* and RA of each model on the run's test set.

`--smoke` shrinks every step (PGD 2 steps instead of 7, a 6-iteration DHBE, one PBE epoch per
round, round 0 included): it shows the calls, not an erasure. Without `--smoke` the settings are
those of the `cpu` config variants (not timed for this script). `run_example` takes the configs
and the device mesh as arguments: tests/test_examples.py runs it on a 3,000-digit BadNets run with
the tests' own tiny configs on one device, so that it reuses the programs the other tests compile.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax

from dhbe_jax import DHBEConfig, erase
from experiments.defenses.common import load_attack_run
from experiments.defenses.pbe import poisoned_training_set
from pbe_jax import DetectConfig, PBEConfig, detect, pbe

# The `cpu` variants' settings (experiments/configs/erase_dhbe.py, erase_pbe.py) and a smoke size.
DHBE_CPU = DHBEConfig(iterations=600, batch_size=64, ngf=32, student_lr=0.01, student_warmup=20,
                      student_bn_train=False, generator_warmup=200, balance_weight=1.0)
PBE_CPU = PBEConfig(epochs_per_round=4, first_round_epochs=10)
SHORT_PGD = dataclasses.replace(PBE_CPU.pgd, steps=2)  # PBE's eps and step, 2 steps instead of 7
SMOKE = {"dhbe": dataclasses.replace(DHBE_CPU, iterations=6, batch_size=8, student_steps=2, ngf=8, nz=16,
                                     nz_trigger=16, generator_warmup=0, student_warmup=0),
         "pbe": dataclasses.replace(PBE_CPU, initial_fraction=0.1, keep_fractions=(0.3,), epochs_per_round=1,
                                    first_round_epochs=1, later_adversarial_batches=1, batch_size=32, pgd=SHORT_PGD),
         "detect": DetectConfig(num_images=64, batch_size=32, pgd=SHORT_PGD)}
FULL = {"dhbe": DHBE_CPU, "pbe": PBE_CPU, "detect": DetectConfig()}


def run_example(run_dir: Path, configs: dict = FULL, mesh=None) -> dict:
    """Steps 1-5 on the attack run in `run_dir` with configs {'dhbe': DHBEConfig, 'pbe': PBEConfig,
    'detect': DetectConfig} (FULL or SMOKE) on `mesh` (None: all devices); returns {'teacher' |
    'dhbe' | 'pbe': metrics, 'detection': (suspected target, concentration)} and prints them."""
    run = load_attack_run(Path(run_dir))                                              # 1
    results = {"teacher": run.evaluate(run.variables, mesh)}
    report = detect(run.module, run.variables, run.test.images, configs["detect"], mesh=mesh)  # 2
    results["detection"] = (report.suspected_target, round(report.concentration, 3))
    dhbe = erase((run.spec, run.variables), configs["dhbe"], jax.random.PRNGKey(0), progress=False, mesh=mesh)  # 3
    results["dhbe"] = run.evaluate(dhbe.variables, mesh)                              # 5
    train, poisoned_indices, _ = poisoned_training_set(run)                           # 4
    purified, history = pbe(run.module, run.variables, train, configs["pbe"], ground_truth=poisoned_indices,
                            progress=False, mesh=mesh)
    results["pbe"] = run.evaluate(purified, mesh)                                     # 5
    for name, value in results.items():
        shown = value if name == "detection" else "  ".join(f"{k}={v:.3f}" for k, v in value.items())
        print(f"{name:9s} {shown}")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished attack run directory")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: seconds, not minutes")
    args = parser.parse_args(argv)
    from experiments.common import run_cli

    run_cli(lambda: run_example(Path(args.run_dir), SMOKE if args.smoke else FULL))


if __name__ == "__main__":
    main()
