"""ASR of a SIG-backdoored model when the test-time sinusoid is stronger than the training one.

  PYTHONPATH=. python experiments/scripts/sig_amplitude_probe.py RUN_DIR [--deltas 20 30 40 60]

SIG poisons with amplitude delta (20/255 by default) and our metrics test with the same delta.
Some SIG evaluations add a stronger signal at test time than at training time (the papers' text
is not available here to say which the two defenses' papers used); this probe measures what a
test-time amplitude does to the ASR of a finished SIG run, without retraining: for each delta (in 1/255 units) it adds delta sin(2 pi j f / W) to the test
images that are not of the target class (clipped to [0, 1], rounded to uint8 as stored datasets
are; `attacks.poison.triggered_test_set` and `attacks.backdoor.backdoor_metrics`, the runs' own
evaluation) and prints ASR (share predicted as the target), ASR* (the same among images the model
classifies correctly when clean) and RA (share still given their true label). The first line is
the clean C-Acc.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attacks.backdoor import backdoor_metrics
from attacks.poison import triggered_test_set
from attacks.sig import sig_trigger
from experiments.defenses.common import load_attack_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--deltas", type=float, nargs="+", default=[20, 30, 40, 60])
    args = parser.parse_args()
    run = load_attack_run(args.run_dir)
    if run.attack.name != "sig":
        raise SystemExit(f"{args.run_dir} is not a SIG attack run (attack {run.attack.name!r}); expected one")
    params, shape = run.record["attack"]["params"], run.test.images.shape[1:]
    print(f"{args.run_dir}: target {run.attack.target}, frequency {params['frequency']:g}, trained with delta "
          f"{255 * params['delta']:g}/255, C-Acc {100 * run.teacher_metrics['test_acc']:.1f}")
    print("| test delta (/255) | ASR | ASR* | RA |\n|---|---|---|---|")
    for delta in args.deltas:
        trigger = sig_trigger(delta / 255, params["frequency"], shape)
        m = backdoor_metrics(run.module, run.variables, run.test, triggered_test_set(run.test, run.attack, trigger))
        print(f"| {delta:g} | {100 * m['asr']:.1f} | {100 * m['asr_strict']:.1f} | {100 * m['ra']:.1f} |")


if __name__ == "__main__":
    main()
