"""Evaluation metrics that work offline, for two classes or more: accuracy, macro F1 (and, for two, ROC-AUC), intervals.

Predictions travel in one of two shapes: for two classes, P(class 1) per example (what records keep);
for more, one probability per class. `class_probabilities` and `predicted_labels` accept either.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import evaluate
import numpy as np
from scipy.special import softmax as scipy_softmax
from scipy.stats import binomtest

METRIC_DIR = Path(__file__).parent / "sentiment_metric"  # evaluate.load("accuracy") needs the Hub; a local module not


def softmax(logits) -> np.ndarray:
    """Class probabilities from (n, classes) logits, in float64 (records keep 6 decimals)."""
    return scipy_softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def class_probabilities(predictions) -> np.ndarray:
    """(n, classes) probabilities from either shape: P(class 1) per example (two classes) or one row per example."""
    p = np.asarray(predictions, dtype=np.float64)
    return np.stack([1 - p, p], axis=1) if p.ndim == 1 else p


def recorded_predictions(probabilities: np.ndarray) -> list:
    """What a record keeps: P(class 1) for two classes, else every class's probability (6 decimals)."""
    probabilities = np.round(np.asarray(probabilities, dtype=np.float64), 6)
    return probabilities[:, 1].tolist() if probabilities.shape[1] == 2 else probabilities.tolist()


def predicted_labels(predictions) -> np.ndarray:
    """The most probable class of each example (for two classes: P(class 1) > 0.5; a tie goes to class 0)."""
    return class_probabilities(predictions).argmax(axis=1)


@lru_cache(maxsize=1)
def sentiment_metric():
    """The project's `evaluate` metric module (scikit-learn does the arithmetic), loaded once from its folder."""
    return evaluate.load(str(METRIC_DIR))


def classification_metrics(labels, predictions) -> dict[str, float]:
    """Accuracy and macro F1; with two classes also precision, recall, F1 of class 1 and ROC-AUC."""
    return sentiment_metric().compute(predictions=class_probabilities(predictions).tolist(), references=list(map(int, labels)))


def compute_metrics(eval_pred) -> dict[str, float]:
    """The Trainer's hook: metrics from (logits, labels)."""
    logits, labels = eval_pred
    return classification_metrics(labels, softmax(logits))


def accuracy_interval(accuracy: float, n: int) -> tuple[float, float]:
    """The Wilson 95% interval of an accuracy measured on `n` reviews (sound near 0 and 1, unlike p +- 2se)."""
    if n <= 0:
        raise ValueError("n must be positive")
    interval = binomtest(round(accuracy * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def paired_difference(labels, predictions_a, predictions_b) -> dict:
    """Two classifiers on the same reviews: how many each alone gets right, and the exact McNemar p-value.

    Only the reviews where they disagree carry information about which is better; under "equally good"
    each such review is a fair coin, so p is a two-sided binomial test on those counts.
    """
    labels = np.asarray(labels)
    right_a, right_b = predicted_labels(predictions_a) == labels, predicted_labels(predictions_b) == labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": float(p)}


def reliability(labels, predictions, bins: int = 10) -> dict[str, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram's points).

    Confidence is the probability of the predicted class (top-label calibration), so it lies in
    [1/classes, 1]: [0.5, 1] for two classes.
    """
    probabilities = class_probabilities(predictions)
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    edges = np.linspace(1 / probabilities.shape[1], 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, confidence, minlength=bins) / count
        accuracy = np.bincount(which, (predicted == np.asarray(labels)).astype(float), minlength=bins) / count
    return {"edges": edges, "confidence": mean_confidence, "accuracy": accuracy, "count": count}


def expected_calibration_error(labels, predictions, bins: int = 10) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over confidence bins (0 = perfectly calibrated)."""
    r = reliability(labels, predictions, bins)
    used = r["count"] > 0
    gaps = np.abs(r["accuracy"][used] - r["confidence"][used])
    return float((gaps * r["count"][used]).sum() / r["count"].sum())
