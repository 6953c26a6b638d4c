"""Evaluation metrics that work offline: accuracy, precision, recall, F1, ROC-AUC, with intervals."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import evaluate
import numpy as np

METRIC_DIR = Path(__file__).parent / "sentiment_metric"


@lru_cache(maxsize=1)
def load_sentiment_metric():
    """The project's `evaluate` metric module, loaded from its local folder."""
    return evaluate.load(str(METRIC_DIR))


def positive_probabilities(logits: np.ndarray) -> np.ndarray:
    """P(label 1) from two-class logits, by a numerically stable softmax."""
    logits = np.asarray(logits, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))


def classification_metrics(labels, probabilities) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and ROC-AUC for positive-class `probabilities`."""
    return load_sentiment_metric().compute(predictions=list(map(float, probabilities)), references=list(map(int, labels)))


def compute_metrics(eval_pred) -> dict[str, float]:
    """The Trainer's hook: metrics from (logits, labels)."""
    logits, labels = eval_pred
    return classification_metrics(labels, positive_probabilities(logits))


def accuracy_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of an accuracy measured on `n` reviews (sound near 0 and 1, unlike p +- 2se)."""
    if n <= 0:
        raise ValueError("n must be positive")
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def paired_difference(labels, probabilities_a, probabilities_b) -> dict:
    """Two classifiers on the same reviews: how many each alone gets right, and the exact McNemar p-value.

    Only the reviews where they disagree carry information about which is better; under "equally good"
    each such review is a fair coin, so p is a two-sided binomial test on those counts.
    """
    from scipy.stats import binomtest

    labels = np.asarray(labels)
    right_a = (np.asarray(probabilities_a) > 0.5) == labels
    right_b = (np.asarray(probabilities_b) > 0.5) == labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": float(p)}


def reliability(labels, probabilities, bins: int = 10) -> dict[str, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram's points).

    Confidence is the probability of the predicted label, so it lies in [0.5, 1] for two classes.
    """
    labels, p = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    predicted = (p > 0.5).astype(int)
    confidence = np.where(predicted == 1, p, 1 - p)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, confidence, minlength=bins) / count
        accuracy = np.bincount(which, (predicted == labels).astype(float), minlength=bins) / count
    return {"edges": edges, "confidence": mean_confidence, "accuracy": accuracy, "count": count}


def expected_calibration_error(labels, probabilities, bins: int = 10) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over confidence bins (0 = perfectly calibrated)."""
    r = reliability(labels, probabilities, bins)
    used = r["count"] > 0
    gaps = np.abs(r["accuracy"][used] - r["confidence"][used])
    return float((gaps * r["count"][used]).sum() / r["count"].sum())
