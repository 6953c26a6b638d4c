"""bench/precision.py on the toy data: two variants in fp32 and bf16 on the same carved validation reviews."""

import json

import pytest
from conftest import bench_sets, load_bench


def test_variants_run_in_both_precisions_on_the_same_reviews(toy_imdb_dir, tmp_path):
    bench = load_bench("precision")
    sets = [*bench_sets(toy_imdb_dir, tmp_path, train_size=64, head_epochs=2), f"save_dir='{tmp_path}'"]
    out = tmp_path / "precision.json"
    chosen = ["head_only", "nf4_lora"]  # its two ways to train: a head on frozen features, and the Trainer (4-bit here)
    argv = ["--profile", "smoke", "--train-size", "32", "--val-size", "24", "--out", str(out), "--variants", *chosen]
    argv += ["--set", *sets]
    assert bench.main(argv) == 0
    record = json.loads(out.read_text())
    assert list(record["variants"]) == chosen and record["train_reviews"] == 32
    assert len(record["validation_labels"]) == 24 and record["validation"]["source"].startswith("training reviews")
    for runs in record["variants"].values():
        assert (runs["fp32"]["precision"], runs["bf16"]["precision"]) == ("fp32", "bf16")
        for run in (runs["fp32"], runs["bf16"]):
            assert run["train_tokens_per_s"] > 0 and run["eval_tokens_per_s"] > 0 and 0 <= run["val_accuracy"] <= 1
            assert len(run["predictions"]) == 24
        c = runs["comparison"]
        assert c["train_speedup"] == runs["bf16"]["train_tokens_per_s"] / runs["fp32"]["train_tokens_per_s"]
        assert 0 <= c["mcnemar_p"] <= 1 and c["only_fp32_right"] + c["only_bf16_right"] <= 24
    assert {"at_start", "after nf4_lora bf16"} <= set(record["what_else_ran"])
    assert "load_average_1_5_15" in record["what_else_ran"]["at_start"]
    # the report is drawn from the record alone, and a resumed run keeps what is recorded
    section = bench.precision_section(record)
    assert section.count("\n| ") == 1 + len(chosen) and "| NF4 LoRA |" in section
    before = out.read_text()
    assert bench.main([*argv, "--resume"]) == 0
    assert json.loads(out.read_text())["variants"] == json.loads(before)["variants"]


def test_two_full_size_runs_are_paired_on_the_same_reviews(tmp_path):
    bench = load_bench("precision")
    base = {"variant": "lora", "config": {"train_size": 1000}, "validation_labels": [0, 1, 1, 0], "total_seconds": 120.0}
    fp32 = base | {"command": "fp32 run", "settings": {"head+tail": {"all": {"accuracy": 0.75}}},
                   "predictions": {"head+tail": [0.9, 0.9, 0.9, 0.1]}}  # fmt: skip
    bf16 = base | {"command": "bf16 run", "settings": {"head+tail": {"all": {"accuracy": 1.0}}, "head": {}},
                   "predictions": {"head+tail": [0.1, 0.9, 0.9, 0.1]}}  # fmt: skip
    for name, record in (("fp32", fp32), ("bf16", bf16)):
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    section = bench.paired_runs_section(tmp_path / "fp32.json", tmp_path / "bf16.json")
    assert "`head+tail`: fp32 75.0%, bf16 100.0%; 0 reviews only fp32 gets right, 1 only bf16 (exact McNemar p = 1)" in section
    assert "`head`" not in section and "`fp32 run` (2 min)" in section  # only the settings both ran
    (tmp_path / "other.json").write_text(json.dumps(bf16 | {"validation_labels": [1, 1, 1, 0]}))
    with pytest.raises(ValueError, match="not the same variant on the same validation reviews"):
        bench.paired_runs_section(tmp_path / "fp32.json", tmp_path / "other.json")
