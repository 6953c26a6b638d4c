"""bench/precision.py on the toy data: each variant in fp32 and bf16 on the same carved validation reviews."""

import json

from conftest import load_bench

from peft_sentiment.variants import VARIANTS


def test_each_variant_runs_in_both_precisions_on_the_same_reviews(toy_imdb_dir, tmp_path):
    bench = load_bench("precision")
    sets = [f"data_dir='{toy_imdb_dir}'", "train_size=64", "val_size=16", "test_size=16", "max_length=12", "head_epochs=2",
            f"records_dir='{tmp_path}/records'", f"work_dir='{tmp_path}/work'", f"save_dir='{tmp_path}'"]  # fmt: skip
    out = tmp_path / "precision.json"
    argv = ["--profile", "smoke", "--train-size", "32", "--val-size", "24", "--out", str(out), "--set", *sets]
    assert bench.main(argv) == 0
    record = json.loads(out.read_text())
    assert list(record["variants"]) == list(VARIANTS) and record["train_reviews"] == 32
    assert len(record["validation_labels"]) == 24 and record["validation"]["source"].startswith("training reviews")
    for runs in record["variants"].values():
        assert (runs["fp32"]["precision"], runs["bf16"]["precision"]) == ("fp32", "bf16")
        for run in (runs["fp32"], runs["bf16"]):
            assert run["train_tokens_per_s"] > 0 and run["eval_tokens_per_s"] > 0 and 0 <= run["val_accuracy"] <= 1
            assert len(run["predictions"]) == 24
        c = runs["comparison"]
        assert c["train_speedup"] == runs["bf16"]["train_tokens_per_s"] / runs["fp32"]["train_tokens_per_s"]
        assert 0 <= c["mcnemar_p"] <= 1 and c["only_fp32_right"] + c["only_bf16_right"] <= 24
    assert {"at_start", "after lora bf16"} <= set(record["what_else_ran"])
    assert "load_average_1_5_15" in record["what_else_ran"]["at_start"]
    # the report is drawn from the record alone, and a resumed run keeps what is recorded
    section = bench.precision_section(record)
    assert section.count("\n| ") == 1 + len(VARIANTS) and "| full fine-tuning |" in section
    before = out.read_text()
    assert bench.main([*argv, "--resume"]) == 0
    assert json.loads(out.read_text())["variants"] == json.loads(before)["variants"]
