"""Metrics on hand-made predictions, with the values worked out by hand."""

import math

import numpy as np
import pytest

from backdoor_core import metrics

LABELS = np.array([0, 1, 2, 3, 1, 2])
CLEAN = np.array([0, 1, 2, 0, 1, 1])  # images 3 and 5 misclassified when clean
TRIG = np.array([0, 0, 2, 0, 0, 2])  # triggered predictions; target 0


def test_clean_accuracy():
    assert metrics.clean_accuracy(CLEAN, LABELS) == pytest.approx(4 / 6)


def test_asr_excludes_target_class_images():
    # Non-target images: indices 1..5 (5 images); predicted 0 at 1, 3, 4.
    assert metrics.attack_success_rate(TRIG, LABELS, 0) == pytest.approx(3 / 5)


def test_strict_asr_only_counts_correct_clean_images():
    # Non-target and correct when clean: 1, 2, 4; predicted 0 with trigger: 1, 4.
    assert metrics.strict_attack_success_rate(TRIG, CLEAN, LABELS, 0) == pytest.approx(2 / 3)


def test_robust_accuracy():
    # Non-target: 1..5; triggered prediction equals the true label at 2 and 5.
    assert metrics.robust_accuracy(TRIG, LABELS, 0) == pytest.approx(2 / 5)


def test_all_to_all_targets_per_image():
    labels = np.array([0, 1, 2, 3])
    targets = (labels + 1) % 4
    preds = np.array([1, 2, 0, 3])
    assert metrics.attack_success_rate(preds, labels, targets) == pytest.approx(2 / 4)
    assert metrics.robust_accuracy(preds, labels, targets) == pytest.approx(1 / 4)


def test_asr_is_nan_without_countable_images():
    assert math.isnan(metrics.attack_success_rate(np.array([0, 0]), np.array([0, 0]), 0))


@pytest.mark.parametrize("before,after,expected", [
    ((1.0, 0.9), (0.0, 0.9), 1.0),  # ASR erased, no accuracy lost
    ((1.0, 0.9), (0.0, 0.7), 0.9),  # ASR erased, 20 points lost
    ((0.5, 0.9), (0.8, 0.95), 0.5),  # ASR rose, accuracy rose: both clipped at 0
    ((1.0, 0.9), (1.0, 0.5), 0.3),
])
def test_der(before, after, expected):
    (asr0, acc0), (asr1, acc1) = before, after
    assert metrics.defense_effectiveness_rating(asr0, asr1, acc0, acc1) == pytest.approx(expected)
