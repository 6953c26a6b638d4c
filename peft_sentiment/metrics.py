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
