import math

import numpy as np
import pytest

from peft_sentiment import metrics
from peft_sentiment.metrics import accuracy_interval, classification_metrics, compute_metrics, positive_probabilities


def test_metrics_match_hand_computed_values():
    # labels 0 0 1 1 1, predictions (p > 0.5) 0 1 1 1 0: TP=2, FP=1, FN=1, TN=1.
    m = classification_metrics([0, 0, 1, 1, 1], [0.2, 0.7, 0.9, 0.6, 0.4])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # ROC-AUC: of the 6 (positive, negative) pairs the positive scores higher in 4 (0.6 and 0.4 lose to 0.7).
    assert m["roc_auc"] == pytest.approx(4 / 6)


def test_single_class_gives_nan_auc_not_a_crash():
    m = classification_metrics([1, 1], [0.9, 0.2])
    assert m["accuracy"] == 0.5 and math.isnan(m["roc_auc"])


def test_trainer_hook_uses_softmax_of_logits():
    logits = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    probs = positive_probabilities(logits)
    assert probs == pytest.approx([1 / (1 + math.e**2), 1 / (1 + math.e**-3), 0.5])
    assert compute_metrics((logits, np.array([0, 1, 1])))["accuracy"] == pytest.approx(2 / 3)  # a tie counts as 0


def test_wilson_interval():
    low, high = accuracy_interval(0.9, 100)
    assert (round(low, 4), round(high, 4)) == (0.8256, 0.9448)  # Wilson, z = 1.96
    assert accuracy_interval(1.0, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        accuracy_interval(0.5, 0)


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    # 10 reviews at P(pos)=0.8, 8 of them positive: confidence 0.8, accuracy 0.8
    labels, probs = [1] * 8 + [0] * 2, [0.8] * 10
    assert metrics.expected_calibration_error(labels, probs) == pytest.approx(0.0)
    # certain and half wrong: gap 0.5
    assert metrics.expected_calibration_error([1, 0, 1, 0], [0.99, 0.99, 0.01, 0.01]) == pytest.approx(0.49)
    rel = metrics.reliability(labels, probs, bins=5)
    assert rel["count"].sum() == 10 and rel["count"][3] == 10  # 0.8 falls in [0.8, 0.9)
