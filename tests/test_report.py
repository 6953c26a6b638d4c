import dataclasses
import json

import numpy as np
import pytest
from conftest import fake_record

from peft_sentiment import plots, recording, report


def test_table_and_summary_come_from_the_records(records):
    table = report.compare_variants(records)
    assert table.loc["LoRA", "accuracy %"] == pytest.approx(88.0) and table.loc["NF4 LoRA", "train s"] == 30.0
    md = report.markdown_table(records)
    assert md.count("\n") == 4 and "| LoRA | 88.0 | 83.0-93.0 |" in md  # in percent
    assert list(table.columns[:4]) == ["accuracy %", "95% CI", "macro F1 %", "ROC-AUC"]
    readable = report.readable_table(records)  # the notebook's view: a column per variant, numbers as people read them
    assert list(readable.columns) == list(table.index) and list(readable.index) == list(table.columns)
    assert readable.loc["trainable params", "LoRA"] == f"{table.loc['LoRA', 'trainable params']:,}"
    assert readable.loc["accuracy %", "LoRA"] == "88.0"
    summary = report.summarize_results(records)
    assert "Best test accuracy: LoRA at 88.0%" in summary
    assert "- NF4 LoRA vs LoRA: -2.0 points;" in summary  # the pairs the declarations name (compared_with)
    assert "- LoRA vs head-only: +8.0 points;" in summary
    assert "LoRA: 88.0% (95% CI 83.0%-93.0%)" in summary and "level with (inside the interval) the reference's 90%" in summary
    assert "head-only: 80.0% (95% CI 75.0%-85.0%)" in summary and "the reference's 83%" in summary
    assert "not a like-for-like comparison" in summary  # a smoke record is not GPT-2 on full IMDB
    # the reference figures are IMDB's: a record of another dataset is not held against them
    other = report.summarize_results([r | {"dataset": "my_reviews"} for r in records])
    assert "reference" not in other and "- NF4 LoRA vs LoRA: -2.0 points;" in other


def test_summary_judges_differences_on_the_same_reviews():
    labels = [1] * 40 + [0] * 40
    truth = [0.9 if y else 0.1 for y in labels]
    head = [0.1 if i < 20 else p for i, p in enumerate(truth)]  # wrong on 20 reviews LoRA gets right
    nf4 = [0.1 if i in (30, 31) else p for i, p in enumerate(truth)]  # wrong on 2
    records = [
        fake_record(v, acc, 10.0, 100) | {"predictions": preds, "test_labels": labels}
        for v, acc, preds in (("head_only", 0.75, head), ("lora", 1.0, truth), ("nf4_lora", 0.975, nf4))
    ]
    baseline = {**fake_record("lora", 0.85, 3.0, 0), "variant": "tfidf_logreg"}
    summary = report.summarize_results(records, [baseline])
    assert "LoRA vs head-only: +25.0 points; 20 texts only LoRA gets right, 0 only head-only" in summary
    assert "(exact McNemar p = 1.9e-06): a real difference" in summary
    assert "NF4 LoRA vs LoRA: -2.5 points; 0 texts only NF4 LoRA gets right, 2 only LoRA" in summary
    assert "(exact McNemar p = 0.5): not distinguishable on this test set" in summary
    assert "TF-IDF + logistic regression on the same texts: 85.0% in 3 s; clearly above it" in summary
    assert summary.endswith("LoRA, NF4 LoRA.")  # head-only's interval (70-80%) is not above 85%


def test_learning_curves_run_over_training_reviews_seen_with_every_validation_point(records):
    curves = plots.plot_learning_curves(records)
    loss, accuracy = curves.axes
    assert len(loss.lines) == len(accuracy.lines) == 3
    assert list(loss.lines[0].get_xdata()) == [8, 16]  # steps times the batch of 8
    assert list(accuracy.lines[0].get_ydata()) == [0.6] and accuracy.get_legend() is not None
    np.testing.assert_allclose(plots.smooth([1.0, 2.0, 3.0, 10.0]), [1.5, 2.0, 5.0, 6.5])  # the ends average what they have


def test_accuracy_vs_cost_plots_each_variants_memory_alone_and_the_baselines_point(records):
    baseline = {**fake_record("lora", 0.85, 1.0, 0), "variant": "tfidf_logreg", "train_memory_rise_bytes": 5e7}
    fig = plots.plot_accuracy_vs_cost(records, [baseline])
    assert [len(ax.texts) for ax in fig.axes] == [4, 4]  # three variants and the baseline, annotated on both axes
    memory = fig.axes[1]
    # weights plus what training added: nf4_lora 100 + 300 bytes; the baseline its rise alone
    assert {t.get_text(): t.xy[0] for t in memory.texts} == pytest.approx(
        {"NF4 LoRA": 400e-6, "head-only": 1600e-6, "LoRA": 1600e-6, "TF-IDF + LR": 50.0}
    )
    old = {k: v for k, v in records[0].items() if k != "train_memory_rise_bytes"}  # a record from before the rise
    assert len(plots.plot_accuracy_vs_cost([old]).axes[1].texts) == 0


def test_memory_split_and_disagreement_figures(records):
    rows = [{"variant": v, "checkpointing": c, "weights_bytes": w, "saved_bytes": a, "step_seconds": t}
            for v, c, w, a, t in (("LoRA", False, 5e8, 2e9, 1.0), ("LoRA", True, 5e8, 1e8, 1.3),
                                  ("NF4 LoRA", False, 1e8, 2e9, 1.5), ("NF4 LoRA", True, 1e8, 1e8, 1.9))]  # fmt: skip
    memory, steps = plots.plot_memory_split(rows).axes
    heights = [p.get_height() for p in memory.patches]
    assert heights == pytest.approx([500, 500, 100, 100, 2000, 100, 2000, 100])  # weights, then activations on top
    assert [p.get_height() for p in steps.patches] == [1.0, 1.3, 1.5, 1.9]
    for r in records:
        r.update(predictions=[0.9, 0.1, 0.2], test_labels=[1, 0, 0])
    records[0]["predictions"] = [0.1, 0.1, 0.9]  # NF4 LoRA gets only the second right; LoRA all three
    fig = plots.plot_disagreements(records)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["NF4 LoRA\nvs LoRA", "LoRA\nvs head-only"]
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == [0, -2, 0, 0]  # only LoRA right on two reviews; LoRA and head-only agree


def test_nf4_levels_figure_reads_the_rounding_error_off_the_weights():
    import torch

    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    fig = plots.plot_nf4_levels(weight)
    ax = fig.axes[0]
    assert len([line for line in ax.lines]) == 16  # the levels
    error = float(ax.get_title().rsplit(" ", 1)[-1].rstrip("%")) / 100
    assert 0.05 < error < 0.15  # NF4 on Gaussian weights: about 10% (results/nf4/rounding.json: 0.092)


def test_readme_results_block_is_generated_from_records(records, tmp_path):
    for r in records:
        recording.write_record(
            {**r, "config": {"seed": 0, "model_name": "m", "train_size": 1000, "val_size": 200, "max_length": 256}},
            tmp_path / "rec",
        )
    baseline = {**fake_record("lora", 0.85, 3.0, 0), "variant": "tfidf_logreg"}
    recording.write_json_atomic(baseline, tmp_path / "rec" / "baselines" / "tfidf_logreg.json")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\noutro\n")
    text = report.update_readme(readme, [tmp_path / "rec"])
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| LoRA | 88.0 |" in text and "| TF-IDF + LR (baseline) | 85.0 |" in text
    assert "`stanfordnlp/imdb` train 1000 / validation 200 / test 100" in text
    assert "What they say (generated from the records):\n\n- Best test accuracy: LoRA at 88.0%" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="results:start"):
        report.update_readme(readme, [tmp_path / "rec"])


def test_analysis_reads_the_records_test_labels_and_draws_every_variant(records):
    rich = []
    for r in records:
        r = r | {"predictions": [0.9, 0.2, 0.7, 0.4], "test_labels": [1, 0, 0, 0], "test_n_tokens": [50, 150, 80, 300],
                 "config": {"seed": 0, "max_length": 100}}  # fmt: skip
        r["metrics"] = r["metrics"] | {"accuracy": 0.75}
        rich.append(r)
    table = report.analysis_table(rich)  # predicted 1 0 1 0: right, right, wrong, right
    assert list(table.columns) == [
        "accuracy on neg %", "accuracy on pos %", "accuracy whole texts %", "accuracy truncated %", "truncated texts", "ECE"
    ]  # fmt: skip
    assert table.loc["LoRA", "accuracy on neg %"] == pytest.approx(200 / 3) and table.loc["LoRA", "accuracy on pos %"] == 100
    assert table.loc["LoRA", "truncated texts"] == 2 and table.loc["LoRA", "accuracy truncated %"] == 100
    assert table.loc["LoRA", "accuracy whole texts %"] == 50
    fig = plots.plot_analysis(rich)
    assert len(fig.axes) == 6
    assert len(fig.axes[3].get_lines()) == 3 + 1  # a ROC curve per variant, and chance


def three_class_record(variant, accuracy):
    """A record of a three-class dataset: per-class probability rows, no ROC-AUC."""
    record = fake_record(variant, accuracy, 10.0, 100) | {
        "dataset": "my_reviews", "labels": ["negative", "neutral", "positive"], "config": {"seed": 0, "max_length": 100},
        "test_labels": [0, 1, 2, 2], "test_n_tokens": [50, 150, 80, 300],
        "predictions": [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]],
    }  # fmt: skip
    record["metrics"] = {k: v for k, v in record["metrics"].items() if k not in ("precision", "recall", "f1", "roc_auc")}
    return record


def test_three_class_records_get_tables_summary_and_plots_without_roc():
    records = [three_class_record("head_only", 0.5), three_class_record("lora", 0.75)]
    table = report.compare_variants(records)
    assert "ROC-AUC" not in table.columns and "macro F1 %" in table.columns
    assert "ROC-AUC" not in report.markdown_table(records)
    summary = report.summarize_results(records)
    assert "LoRA vs head-only: +25.0 points; 0 texts only LoRA gets right, 0 only head-only" in summary
    analysis = report.analysis_table(records)
    assert [c for c in analysis.columns if c.startswith("accuracy on")] == [
        "accuracy on negative %", "accuracy on neutral %", "accuracy on positive %"
    ]  # fmt: skip
    assert analysis.loc["LoRA", "accuracy on positive %"] == 50 and 0 <= analysis.loc["LoRA", "ECE"] <= 1
    fig = plots.plot_analysis(records)
    roc = fig.axes[len(records)]  # after one confusion matrix per variant
    assert [t.get_text() for t in roc.get_legend().get_texts()] == ["more than two classes: no ROC"]
    assert fig.axes[0].get_xticklabels()[2].get_text() == "positive"  # the confusion matrices name the classes


def test_a_block_in_another_folder_links_files_relative_to_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "plot.png").write_bytes(b"png")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text("<!-- x:start -->\n<!-- x:end -->\n")
    body = "![a plot](results/plot.png) and [a site](https://example.org) and [gone](results/none.png)"
    report.replace_block(page, "x", body)
    assert "![a plot](../results/plot.png) and [a site](https://example.org) and [gone](results/none.png)" in page.read_text()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- x:start -->\n<!-- x:end -->\n")
    report.replace_block(readme, "x", body)
    assert "![a plot](results/plot.png)" in readme.read_text()


def test_numbers_read_as_people_read_them():
    assert [report.format_cell(v) for v in (1000.0, 576, 88.94, 0.0312, 1234.56, 5e-4, 2e-5, 0.0, "a-b")] == [
        "1,000", "576", "88.9", "0.031", "1,234.6", "0.0005", "2e-05", "0", "a-b"
    ]  # fmt: skip


def test_misclassified_shows_the_most_confident_errors_first(records):
    record = records[0] | {"test_labels": [0, 1, 1, 0], "predictions": [0.9, 0.2, 0.7, 0.6], "test_n_tokens": [10, 300, 5, 7]}
    record["config"] = record["config"] | {"max_length": 256}
    texts = ["a" * 1000, "short", "right", "also wrong"]
    table = report.misclassified(record, texts, k=5, chars=40)
    assert list(table["true"]) == ["neg", "pos", "neg"] and list(table["predicted"]) == ["pos", "neg", "pos"]
    assert list(table["probability"]) == pytest.approx([0.9, 0.8, 0.6])  # the probability of the wrong answer
    assert table["text"][0] == "a" * 20 + " [...] " + "a" * 20 and table["tokens"][1] == "300 (cut to 256)"


def test_memory_split_is_described_from_its_rows():
    rows = [
        {"variant": v, "checkpointing": on, "weights_bytes": w, "saved_bytes": 100e6 if not on else 10e6, "step_seconds": s}
        for v, w, base in (("LoRA", 500e6, 1.0), ("NF4 LoRA", 200e6, 1.5))
        for on, s in ((False, base), (True, base * 1.3))
    ]
    text = report.describe_memory_split(rows)
    assert "from 500 MB (LoRA) to 200 MB (NF4 LoRA), 60% less, and makes a step x1.50 as long" in text
    assert "keeps 10.0 MB of activations for the backward pass instead of 100 MB" in text
    assert "x1.30 as long for LoRA and x1.30 for NF4 LoRA" in text and "takes x1.95 the time of LoRA" in text


def test_expected_minutes_come_from_token_counts_and_measured_rates(tmp_path, records, monkeypatch):
    from datasets import Dataset

    from peft_sentiment import hardware
    from peft_sentiment.config import make_config
    from peft_sentiment.variants import VARIANTS

    rates = {"variants": {name: {"fp32": {"train_tokens_per_s": 100.0, "eval_tokens_per_s": 200.0}} for name in VARIANTS},
             "device": {"name": "Test CPU", "cores": 2}, "created": "2026-12-03T00:00", "config": {"model_name": "tiny-gpt2"}}  # fmt: skip
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(rates))
    tokenized = {s: Dataset.from_dict({"length": [n] * 10}) for s, n in (("train", 600), ("validation", 120), ("test", 1200))}
    cfg = make_config("smoke", precision="fp32", epochs=1, evals_per_run=1)
    chosen = {name: VARIANTS[name] for name in ("head_only", "lora")}
    estimate = report.estimate_seconds(cfg, tokenized, chosen, rates=path)
    text = report.expected_minutes(estimate, chosen)
    # head-only: one frozen pass over 19,200 tokens at 200/s = 1.6 min; LoRA: 6,000 / 100 = 1 min + 13,200 / 200 = 1.1 min
    assert "| head-only | 0 min | 2 min | 2 min |" in text and "| LoRA | 1 min | 1 min | 2 min |" in text
    assert "about 4 min on a CPU like the one the rates were measured on (Test CPU, 2 cores, 2026-12-03)" in text
    unmeasured = {k: v for k, v in estimate.items() if k != "head_only"}  # rates measured for LoRA alone
    assert "| head-only | not measured | | |" in report.expected_minutes(unmeasured, chosen)
    took = [{"variant": "head_only", "train_seconds": 90.0, "eval_seconds": 6.0},
            {"variant": "lora", "train_seconds": 60.0, "eval_seconds": 66.0}]  # fmt: skip
    assert report.compare_with_estimate(estimate, took).startswith(
        "Training and evaluation took 4 min against the 4 min estimated (+0%"
    )
    other_model = dataclasses.replace(cfg, model_name="gpt2-random")
    assert "No measured rates for `gpt2-random`" in report.estimate_seconds(other_model, tokenized, chosen, rates=path)
    monkeypatch.setattr(hardware, "on_gpu", lambda: True)
    assert "not yet measured" in report.expected_minutes(report.estimate_seconds(cfg, tokenized, chosen, rates=path), chosen)
