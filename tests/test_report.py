import pytest
from conftest import fake_record

from peft_sentiment import plots, recording, report


def test_table_and_summary_come_from_the_records(records):
    table = report.compare_variants(records)
    assert table.loc["LoRA", "accuracy"] == 0.88 and table.loc["NF4 LoRA", "train s"] == 30.0
    md = report.markdown_table(records)
    assert md.count("\n") == 4 and "| LoRA | 0.880 |" in md
    summary = report.summarize_results(records)
    assert "Best test accuracy: LoRA at 88.0%" in summary
    assert "- NF4 LoRA vs LoRA: -2.0 points." in summary
    assert "What NF4 buys: model weights 25% of the fp32 model's bytes" in summary and "x1.50 the training time" in summary
    assert "LoRA: 88.0% (95% CI 83.0%-93.0%)" in summary and "level with the reference's 90% (inside the interval)" in summary
    assert "head-only: 80.0% (95% CI 75.0%-85.0%)" in summary and "level with the reference's 83%" in summary
    assert "not a like-for-like comparison" in summary  # a smoke record is not GPT-2 on full IMDB


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
    assert "LoRA vs head-only: +25.0 points; 20 reviews only LoRA gets right, 0 only head-only" in summary
    assert "(exact McNemar p = 1.9e-06): a real difference" in summary
    assert "NF4 LoRA vs LoRA: -2.5 points; 0 reviews only NF4 LoRA gets right, 2 only LoRA" in summary
    assert "(exact McNemar p = 0.5): not distinguishable on this test set" in summary
    assert "TF-IDF + logistic regression on the same reviews: 85.0% in 3 s; clearly above it" in summary
    assert summary.endswith("LoRA, NF4 LoRA.")  # head-only's interval (70-80%) is not above 85%


def test_plots_draw_one_bar_per_variant(records):
    fig = plots.plot_comparison(records)
    assert [len(ax.patches) for ax in fig.axes] == [3, 3, 3]
    curves = plots.plot_learning_curves(records)
    assert len(curves.axes[0].lines) == 3
    assert max(curves.axes[0].lines[0].get_xdata()) == 1.0  # fractions of each run, not steps


def test_accuracy_vs_cost_plot_has_every_method(records):
    baseline = {**fake_record("lora", 0.85, 1.0, 0), "variant": "tfidf_logreg"}
    fig = plots.plot_accuracy_vs_cost(records, [baseline])
    assert [len(ax.texts) for ax in fig.axes] == [3, 3]  # the variants, annotated
    time_labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "TF-IDF + LR (85.0%)" in time_labels
    # on the memory axis the baseline is a line at its accuracy, not a point at its process's memory
    assert [line.get_ydata()[0] for line in fig.axes[1].lines if line.get_linestyle() == ":"] == [0.85]


def test_readme_results_block_is_generated_from_records(records, tmp_path):
    for r in records:
        recording.write_record(
            {**r, "config": {"seed": 0, "model_name": "m", "train_size": 1000, "val_size": 200, "max_length": 256}},
            tmp_path / "rec",
        )
    baseline = {**fake_record("lora", 0.85, 3.0, 0), "variant": "tfidf_logreg"}
    recording.write_json_atomic(baseline, tmp_path / "rec" / "baselines" / "tfidf_logreg.json")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\noutro\n")
    text = report.update_readme(readme, [tmp_path / "rec"])
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| LoRA | 0.880 |" in text and "| TF-IDF + LR (baseline) | 0.850 |" in text
    assert "IMDB train 1000 / validation 200 / test 100 reviews" in text
    assert "What they say (generated from the records):\n\n- Best test accuracy: LoRA at 88.0%" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="results:start"):
        report.update_readme(readme, [tmp_path / "rec"])


def test_analysis_needs_labels_and_draws_every_variant(records):
    with pytest.raises(ValueError, match="attach_test_data"):
        report.analysis_table(records)
    rich = []
    for r in records:
        r = r | {"predictions": [0.9, 0.2, 0.7, 0.4], "config": {"seed": 0, "max_length": 100}}
        r["metrics"] = r["metrics"] | {"accuracy": 0.75}
        test = {"label": [1, 0, 0, 0], "n_tokens": [50, 150, 80, 300]}
        rich.append(report.attach_test_data(r, _Split(test)))
    table = report.analysis_table(rich)
    assert list(table["true pos"]) == [1, 1, 1] and list(table["false pos"]) == [1, 1, 1]
    assert table.loc["LoRA", "truncated reviews"] == 2 and table.loc["LoRA", "accuracy truncated"] == 1.0
    assert table.loc["LoRA", "accuracy whole reviews"] == 0.5
    fig = plots.plot_analysis(rich)
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="not the record's test reviews"):
        report.attach_test_data(rich[0], _Split({"label": [0, 1, 1, 1], "n_tokens": [1, 1, 1, 1]}))


class _Split(dict):
    """A dataset split's stand-in: columns by name, and its length."""

    def __len__(self):
        return len(self["label"])


def stamped_run(variant, lr, points):
    log = [{"step": 1, "loss": 0.7}]
    log += [{"step": 2 * i, "eval_accuracy": acc, "eval_runtime": 5.0, "train_seconds": t, "peak_memory_bytes": m}
            for i, (t, acc, m) in enumerate(points, 1)]  # fmt: skip
    return {"variant": variant, "learning_rate": lr, "log_history": log, "config": {}, "train_seconds": 99.0}


def test_validation_curves_use_the_stamps_else_the_run_end_without_validation_time():
    stamped = stamped_run("lora", 1e-3, [(10.0, 0.6, 2e9), (20.0, 0.8, 3e9)])
    older = {  # a record from before train.TrainClock: one point, the end, validation passes subtracted
        "variant": "nf4_lora", "config": {"lr_lora": 5e-4}, "train_seconds": 100.0, "peak_memory_bytes": {"train": 1e9},
        "log_history": [{"step": 5, "loss": 0.5}, {"step": 10, "eval_accuracy": 0.85, "eval_runtime": 30.0}],
    }  # fmt: skip
    unvalidated = {"variant": "lora", "config": {"lr_lora": 1.0}, "log_history": [{"step": 1, "loss": 0.7}]}
    curves = report.validation_curves([stamped, older, unvalidated])
    assert [c["label"] for c in curves] == ["LoRA, lr 0.001", "NF4 LoRA, lr 0.0005"]
    assert curves[0]["points"] == [(10.0, 0.6, 2e9), (20.0, 0.8, 3e9)]
    assert curves[1]["points"] == [(70.0, 0.85, 1e9)]


def test_curves_name_what_a_run_changed_from_the_profile():
    profile = {"lr_lora": 5e-4, "lora_dropout": 0.0, "head_epochs": 20, "work_dir": "runs/cpu", "evals_per_run": 1}
    lora = stamped_run("lora", 5e-4, [(10.0, 0.9, 1e9)]) | {"config": profile | {"lora_dropout": 0.05, "evals_per_run": 4}}
    head = stamped_run("head_only", 1e-3, [(5.0, 0.8, 1e9)]) | {"config": profile | {"lora_dropout": 0.05, "work_dir": "x"}}
    assert report.recipe_differences(lora["config"], profile, "lora") == {"lora_dropout": 0.05}
    assert report.recipe_differences(head["config"], profile, "head_only") == {}  # head-only has no LoRA dropout
    # a record from before truncation settings existed ran with head truncation, which must show against head+tail
    assert report.recipe_differences({"lr_lora": 5e-4}, {"truncation": "head+tail", "lr_lora": 5e-4}, "lora") == {
        "truncation": "head"
    }
    curves = report.validation_curves([lora, head], reference=profile)
    assert [c["setting"] for c in curves] == ["lr 0.0005, lora_dropout 0.05", "lr 0.001"]
    assert curves[0]["label"] == "LoRA, lr 0.0005, lora_dropout 0.05"


def test_compute_matched_table_gives_each_runs_best_accuracy_within_each_budget():
    fast = {"variant": "head_only", "label": "head", "learning_rate": 1e-3, "setting": "lr 0.001",
            "points": [(5.0, 0.7, 1e9), (6.0, 0.75, 1e9)]}  # fmt: skip
    slow = {"variant": "lora", "label": "lora", "learning_rate": 1e-4, "setting": "lr 0.0001",
            "points": [(10.0, 0.6, 3e9), (20.0, 0.9, 4e9)]}  # fmt: skip
    assert report.best_within(slow, seconds=6) is None
    assert report.best_within(slow, seconds=15) == 0.6
    assert report.best_within(slow, memory_bytes=3e9) == 0.6
    assert report.best_within(slow, seconds=20, memory_bytes=3e9) == 0.6
    slower = {"variant": "lora", "label": "lora", "learning_rate": 1e-3, "setting": "lr 0.001, lora_r 4",
              "points": [(8.0, 0.5, 2e9), (30.0, 0.8, 5e9)]}  # fmt: skip
    lines = report.compute_matched_table([fast, slow, slower]).splitlines()
    assert lines[0] == (
        "| variant | <= 6 s (head-only's shortest run) | <= 20 s (LoRA's shortest run) | <= 1.0 GB (head-only's smallest peak) | <= 4.0 GB (LoRA's smallest peak) |"
    )
    assert lines[2] == "| head-only | 75.0% (lr 0.001) | 75.0% (lr 0.001) | 75.0% (lr 0.001) | 75.0% (lr 0.001) |"
    assert lines[3] == "| LoRA | - | 90.0% (lr 0.0001) | - | 90.0% (lr 0.0001) |"  # its best run in each budget

    fig = plots.plot_validation_curves([fast, slow, slower], baseline_accuracy=0.8, hardware="test machine")
    head_ax, lora_ax = fig.axes  # one panel per variant
    assert [ax.get_title() for ax in fig.axes] == ["head-only", "LoRA"]
    assert len(lora_ax.lines) == 3 and list(lora_ax.lines[0].get_xdata()) == [10.0, 20.0]  # two runs, the baseline
    labels = [t.get_text() for t in lora_ax.get_legend().get_texts()]
    assert labels == ["lr 0.0001, peak 4.0 GB", "lr 0.001, lora_r 4, peak 5.0 GB", "TF-IDF + LR"]


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
