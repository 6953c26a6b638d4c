import copy
import json

import pytest

from peft_sentiment import report


def fake_record(variant, accuracy, seconds, model_bytes):
    return {
        "variant": variant, "profile": "smoke", "config": {"seed": 0}, "model_path": "m",
        "versions": report.library_versions(), "device": report.device_info(),
        "params": {"trainable": 10, "total": 100}, "model_bytes": model_bytes,
        "metrics": {"accuracy": accuracy, "precision": 0.5, "recall": 0.5, "f1": 0.5, "roc_auc": 0.5,
                    "accuracy_ci95": [accuracy - 0.05, accuracy + 0.05], "test_reviews": 100},
        "train_seconds": seconds, "eval_seconds": 1.0, "train_tokens": {"real": 10, "padded": 12},
        "eval_tokens": {"real": 5, "padded": 6}, "train_tokens_per_s": 10.0, "eval_tokens_per_s": 5.0,
        "peak_memory_bytes": {"train": 2e9, "eval": 1e9},
        "log_history": [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6, "eval_accuracy": 0.6}], "created": "now",
        "predictions": [0.9, 0.1],
    }  # fmt: skip


@pytest.fixture
def records():
    return [
        fake_record("nf4_lora", 0.86, 30.0, 100),
        fake_record("head_only", 0.80, 10.0, 400),
        fake_record("lora", 0.88, 20.0, 400),
    ]


def test_records_round_trip_in_variant_order(records, tmp_path):
    for r in records:
        report.write_record(r, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head_only.json", "lora.json", "nf4_lora.json"]
    back = report.read_records(tmp_path)
    assert [r["variant"] for r in back] == ["head_only", "lora", "nf4_lora"]
    assert back[1] == json.loads(json.dumps(records[2]))


def test_incomplete_records_are_refused(records, tmp_path):
    broken = copy.deepcopy(records[0])
    del broken["metrics"]["roc_auc"], broken["train_seconds"]
    with pytest.raises(ValueError, match=r"train_seconds.*metrics.roc_auc"):
        report.write_record(broken, tmp_path)


def test_table_and_summary_come_from_the_records(records):
    table = report.compare_variants(records)
    assert table.loc["LoRA", "accuracy"] == 0.88 and table.loc["NF4 LoRA", "train s"] == 30.0
    md = report.markdown_table(records)
    assert md.count("\n") == 4 and "| LoRA | 0.880 |" in md
    summary = report.summarize_results(records)
    assert "Best test accuracy: LoRA at 88.0%" in summary
    assert "NF4 LoRA vs LoRA: -2.0% accuracy, model weights 25%" in summary
    assert "intervals overlap" in summary


def test_plots_draw_one_bar_per_variant(records):
    fig = report.plot_comparison(records)
    assert [len(ax.patches) for ax in fig.axes] == [3, 3, 3]
    assert len(report.plot_learning_curves(records).axes[0].lines) == 3


def test_accuracy_vs_cost_plot_has_every_method(records):
    baseline = {**fake_record("lora", 0.85, 1.0, 0), "variant": "tfidf_logreg"}
    fig = report.plot_accuracy_vs_cost(records, [baseline])
    assert [len(ax.texts) for ax in fig.axes] == [4, 4]
    assert "TF-IDF + LR" in [t.get_text() for t in fig.axes[0].texts]
