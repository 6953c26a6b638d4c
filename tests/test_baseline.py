"""The TF-IDF baseline: C chosen on validation, test reported."""

from peft_sentiment.baseline import train_tfidf_baseline


def test_tfidf_baseline_tunes_on_validation_and_reports_test(toy_splits):
    result = train_tfidf_baseline(toy_splits, seed=0, cs=(0.1, 10.0))
    assert set(result["validation_accuracy_by_C"]) == {"0.1", "10.0"}
    assert result["C"] == max((0.1, 10.0), key=lambda c: result["validation_accuracy_by_C"][str(c)])
    assert result["metrics"]["test_reviews"] == len(toy_splits["test"])
    assert result["metrics"]["accuracy"] > 0.9  # the toy labels are given by words: TF-IDF finds them
