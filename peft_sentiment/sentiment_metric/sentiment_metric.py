"""An `evaluate` metric module for binary sentiment, loaded from this folder (no Hub download).

`evaluate.load("accuracy")` fetches its script from the Hub and fails offline; loading this folder's
path works offline and online alike, and scikit-learn does the arithmetic.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

_DESCRIPTION = "Accuracy, precision, recall, F1 (positive class) and ROC-AUC of a binary classifier."
_INPUTS = """
    predictions: probability of the positive class per example (float in [0, 1]).
    references: true label per example (0 or 1).
Returns: accuracy, precision, recall, f1, roc_auc (roc_auc is NaN when only one class is present).
"""


class SentimentMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        # p > 0.5 is exactly argmax over two softmax logits (ties go to label 0 in both).
        labels = [int(p > 0.5) for p in predictions]
        precision, recall, f1, _ = precision_recall_fscore_support(references, labels, average="binary", zero_division=0)
        both_classes = len(set(references)) == 2
        return {
            "accuracy": float(accuracy_score(references, labels)),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "roc_auc": float(roc_auc_score(references, predictions)) if both_classes else float("nan"),
        }
