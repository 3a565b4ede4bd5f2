"""ASR of a SIG-backdoored model when the test-time sinusoid is stronger than the training one.

  PYTHONPATH=. python experiments/scripts/sig_amplitude_probe.py RUN_DIR [--deltas 20 30 40 60] [--source S]

SIG poisons with amplitude delta (20/255 by default) and our metrics test with the same delta.
Some SIG evaluations add a stronger signal at test time than at training time (the papers' text
is not available here to say which the two defenses' papers used); this probe measures what a
test-time amplitude does to the ASR of a finished SIG run, without retraining: for each delta (in 1/255 units) it adds delta sin(2 pi j f / W) to the test
images that are not of the target class (clipped to [0, 1], rounded to uint8 as stored datasets
are) and prints ASR (share predicted as the target), ASR* (the same among images the model
classifies correctly when clean) and RA (share still given their true label). The first line is
the clean C-Acc.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax

from attacks.sig import sig_trigger
from attacks.triggers import apply_to_uint8
from backdoor_core.data import load_split
from backdoor_core.metrics import (attack_success_rate, clean_accuracy, robust_accuracy,
                                   strict_attack_success_rate)
from backdoor_core.rundir import load_model
from backdoor_core.train import predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--deltas", type=float, nargs="+", default=[20, 30, 40, 60])
    parser.add_argument("--source", default=None)
    args = parser.parse_args()
    record = json.loads((args.run_dir / "record.json").read_text())
    attack = record.get("attack") or {}
    if attack.get("name") != "sig":
        raise SystemExit(f"{args.run_dir} is not a SIG attack run (attack {attack.get('name')!r}); expected one")
    target, frequency, trained_delta = int(attack["target"]), float(attack["params"]["frequency"]), attack["params"]["delta"]
    test = load_split(args.source or record["dataset_source"], "test")
    _, model, variables = load_model(args.run_dir)
    clean = predict(model, variables, test.images)
    print(f"{args.run_dir}: target {target}, frequency {frequency:g}, trained with delta {255 * trained_delta:g}/255, C-Acc {100 * clean_accuracy(clean, test.labels):.1f}")
    print("| test delta (/255) | ASR | ASR* | RA |\n|---|---|---|---|")
    for delta in args.deltas:
        trigger = sig_trigger(delta / 255, frequency, test.images.shape[1:])
        triggered = apply_to_uint8(trigger, test.images, jax.random.PRNGKey(0))
        preds = predict(model, variables, triggered)
        print(f"| {delta:g} | {100 * attack_success_rate(preds, test.labels, target):.1f} "
              f"| {100 * strict_attack_success_rate(preds, clean, test.labels, target):.1f} "
              f"| {100 * robust_accuracy(preds, test.labels, target):.1f} |")


if __name__ == "__main__":
    main()
