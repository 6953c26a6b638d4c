"""An `evaluate` metric module for text classification, loaded from this folder (no Hub download).

`evaluate.load("accuracy")` fetches its script from the Hub and fails offline; loading this folder's
path works offline and online alike, and scikit-learn does the arithmetic.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

_DESCRIPTION = (
    "Accuracy and macro F1 of a classifier; for two classes also precision, recall, F1 of the second class and ROC-AUC."
)
_INPUTS = """
    predictions: the probability of each class per example (a list of floats that sums to 1).
    references: true class index per example.
Returns: accuracy, f1_macro; with two classes also precision, recall, f1 (of class 1) and roc_auc
(NaN when only one class is present). ROC-AUC and the class-1 scores have no single multi-class meaning.
"""


class SentimentMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        probabilities = np.asarray(predictions, dtype=np.float64)
        labels = probabilities.argmax(axis=1)  # ties go to the lower class, as argmax over logits does
        classes = list(range(probabilities.shape[1]))
        scores = {
            "accuracy": float(accuracy_score(references, labels)),
            "f1_macro": float(f1_score(references, labels, labels=classes, average="macro", zero_division=0)),
        }
        if len(classes) == 2:
            precision, recall, f1, _ = precision_recall_fscore_support(references, labels, average="binary", zero_division=0)
            both = len(set(references)) == 2
            auc = float(roc_auc_score(references, probabilities[:, 1])) if both else float("nan")
            scores |= {"precision": float(precision), "recall": float(recall), "f1": float(f1), "roc_auc": auc}
        return scores
