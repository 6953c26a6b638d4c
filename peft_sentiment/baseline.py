"""The baseline every variant is compared with: TF-IDF features and logistic regression, on the same reviews."""

from __future__ import annotations

from peft_sentiment.data import strip_markup
from peft_sentiment.metrics import accuracy_interval, classification_metrics
from peft_sentiment.recording import PeakMemory, provenance


def train_tfidf_baseline(splits, seed: int, cs=(0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)) -> dict:
    """TF-IDF (word 1-2 grams) + logistic regression on the same subsets; C chosen on validation, never test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    with PeakMemory() as training:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        train_x = vectorizer.fit_transform(strip_markup(splits["train"]["text"]))
        val_x = vectorizer.transform(strip_markup(splits["validation"]["text"]))
        scores = {}
        for c in cs:
            clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(train_x, splits["train"]["label"])
            scores[c] = clf.score(val_x, splits["validation"]["label"])
        best_c = max(scores, key=scores.get)  # the first (most regularised) of equal scores
        clf = LogisticRegression(C=best_c, max_iter=2000, random_state=seed).fit(train_x, splits["train"]["label"])
    with PeakMemory() as evaluation:
        probs = clf.predict_proba(vectorizer.transform(strip_markup(splits["test"]["text"])))  # one column per class
    metrics = classification_metrics(splits["test"]["label"], probs)
    n_test = len(splits["test"])
    return {
        "variant": "tfidf_logreg",
        "metrics": {**metrics, "accuracy_ci95": list(accuracy_interval(metrics["accuracy"], n_test)), "test_reviews": n_test},
        "validation_accuracy_by_C": {str(c): s for c, s in scores.items()},
        "C": best_c,
        "features": len(vectorizer.vocabulary_),
        "train_seconds": training.seconds,
        "eval_seconds": evaluation.seconds,
        "peak_memory_bytes": {"train": training.peak_bytes, "eval": evaluation.peak_bytes},
        "train_memory_rise_bytes": training.rise_bytes,  # its features and models: the process's memory is not its own
        "memory_measure": training.describe(),
        **provenance(),
    }
