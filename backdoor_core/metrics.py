"""Backdoor metrics, as DESIGN.md defines them. All values are fractions in [0, 1].

Inputs are integer class predictions and labels, arrays [N]. `target` is the attack's target
label: an int (all-to-one) or an int array [N] (all-to-all: each image's own target).
An image "counts" for ASR/RA when its true class differs from its target.

- C-Acc: accuracy on the clean test split.
- ASR: among counted images with the trigger, the share classified as the target
  (BackdoorBench's convention).
- ASR* (DHBE's stricter convention): ASR over counted images also classified correctly clean.
- RA: among counted images with the trigger, the share classified as their true class.
- DER = (max(0, dASR) - max(0, dAcc) + 1) / 2.
"""

from __future__ import annotations

import numpy as np


def _rate(hits: np.ndarray, mask: np.ndarray) -> float:
    """Mean of boolean `hits` over boolean `mask`; NaN when the mask is empty."""
    count = int(mask.sum())
    return float(np.sum(hits & mask) / count) if count else float("nan")


def clean_accuracy(preds, labels) -> float:
    """C-Acc: share of `preds` equal to `labels`."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    return _rate(preds == labels, np.ones_like(labels, bool))


def attack_success_rate(triggered_preds, labels, target) -> float:
    """ASR: share of triggered images with label != target that are predicted as the target."""
    preds, labels = np.asarray(triggered_preds), np.asarray(labels)
    target = np.broadcast_to(np.asarray(target), labels.shape)
    return _rate(preds == target, labels != target)


def strict_attack_success_rate(triggered_preds, clean_preds, labels, target) -> float:
    """ASR*: ASR restricted to images that the model also classifies correctly without trigger."""
    preds, clean, labels = np.asarray(triggered_preds), np.asarray(clean_preds), np.asarray(labels)
    target = np.broadcast_to(np.asarray(target), labels.shape)
    return _rate(preds == target, (labels != target) & (clean == labels))


def robust_accuracy(triggered_preds, labels, target) -> float:
    """RA: share of triggered images with label != target still predicted as their true label."""
    preds, labels = np.asarray(triggered_preds), np.asarray(labels)
    target = np.broadcast_to(np.asarray(target), labels.shape)
    return _rate(preds == labels, labels != target)


def defense_effectiveness_rating(asr_before: float, asr_after: float, acc_before: float, acc_after: float) -> float:
    """DER = (max(0, ASR_before - ASR_after) - max(0, Acc_before - Acc_after) + 1) / 2, in [0, 1]."""
    return (max(0.0, asr_before - asr_after) - max(0.0, acc_before - acc_after) + 1.0) / 2.0
