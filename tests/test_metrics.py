import math

import numpy as np
import pytest

from peft_sentiment import metrics
from peft_sentiment.metrics import accuracy_interval, classification_metrics, compute_metrics, softmax


def test_metrics_match_hand_computed_values():
    # labels 0 0 1 1 1, predictions (p > 0.5) 0 1 1 1 0: TP=2, FP=1, FN=1, TN=1.
    m = classification_metrics([0, 0, 1, 1, 1], [0.2, 0.7, 0.9, 0.6, 0.4])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # ROC-AUC: of the 6 (positive, negative) pairs the positive scores higher in 4 (0.6 and 0.4 lose to 0.7).
    assert m["roc_auc"] == pytest.approx(4 / 6)
    assert m["f1_macro"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # class 0: P = R = 1/2; class 1: 2/3
    # the same predictions as rows of class probabilities give the same metrics
    assert classification_metrics([0, 0, 1, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.4, 0.6], [0.6, 0.4]]) == m


def test_three_classes_get_accuracy_and_macro_f1_but_no_binary_scores():
    labels = [0, 0, 1, 1, 2, 2]
    probs = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]]
    # predicted 0 1 1 1 2 0: class 0 P 1/2 R 1/2, class 1 P 2/3 R 1, class 2 P 1 R 1/2
    m = classification_metrics(labels, probs)
    assert set(m) == {"accuracy", "f1_macro"}  # no ROC-AUC, precision, recall or F1 of "the" positive class
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1_macro"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    logits = np.log(np.asarray(probs))
    assert compute_metrics((logits, np.array(labels))) == pytest.approx(m)


def test_class_probabilities_and_predicted_labels_take_either_shape():
    binary = metrics.class_probabilities([0.9, 0.2, 0.5])
    np.testing.assert_allclose(binary, [[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    assert metrics.predicted_labels([0.9, 0.2, 0.5]).tolist() == [1, 0, 0]  # a tie goes to class 0
    rows = [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]
    assert metrics.class_probabilities(rows).tolist() == rows
    assert metrics.predicted_labels(rows).tolist() == [1, 0, 2]
    # a record keeps P(class 1) for two classes, every class's probability for more, rounded to 6 decimals
    assert metrics.recorded_predictions(np.array([[0.25, 0.75], [0.6, 0.4]])) == [0.75, 0.4]
    assert metrics.recorded_predictions(np.array([[1 / 3, 1 / 3, 1 / 3]])) == [[0.333333, 0.333333, 0.333333]]


def test_single_class_gives_nan_auc_not_a_crash():
    m = classification_metrics([1, 1], [0.9, 0.2])
    assert m["accuracy"] == 0.5 and math.isnan(m["roc_auc"])


def test_trainer_hook_uses_softmax_of_logits():
    logits = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    probs = softmax(logits)
    assert probs[:, 1] == pytest.approx([1 / (1 + math.e**2), 1 / (1 + math.e**-3), 0.5])
    assert probs.sum(axis=1) == pytest.approx([1, 1, 1])
    np.testing.assert_allclose(softmax([[1000.0, 0.0, 1000.0]]), [[0.5, 0.0, 0.5]])  # stable for large logits
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
    assert rel["count"].sum() == 10 and rel["count"][3] == 10  # bins of confidence over [0.5, 1]: 0.8 in [0.8, 0.9)


def test_calibration_of_three_classes_bins_the_predicted_class_confidence():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(200, 3)) * 3)
    labels = rng.integers(0, 3, size=200)
    ece = metrics.expected_calibration_error(labels, probs)
    assert 0 <= ece <= 1
    rel = metrics.reliability(labels, probs, bins=4)
    assert rel["edges"][0] == pytest.approx(1 / 3) and rel["count"].sum() == 200  # an argmax is at least 1/3 sure
    # confident and always right: perfectly calibrated; confident and always wrong: ECE near 1
    sure = np.eye(3)[[0, 1, 2, 0]] * 0.98 + 0.02 / 3
    assert metrics.expected_calibration_error([0, 1, 2, 0], sure) == pytest.approx(0.02 - 0.02 / 3)
    assert metrics.expected_calibration_error([1, 2, 0, 1], sure) == pytest.approx(0.98 + 0.02 / 3)
    # paired differences read rows too
    d = metrics.paired_difference([0, 1, 2, 0], sure, np.eye(3)[[0, 1, 1, 1]])
    assert (d["only_a"], d["only_b"]) == (2, 0)
