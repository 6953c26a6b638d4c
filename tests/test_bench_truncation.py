"""bench/truncation.py on the toy data: every setting scored on the same carved validation reviews, never the test set."""

import json
from pathlib import Path

import pytest
from conftest import bench_sets, load_bench

from peft_sentiment import data, train
from peft_sentiment.config import make_config, parse_overrides


def test_settings_are_scored_on_the_same_unused_training_reviews(toy_imdb_dir, tmp_path):
    bench = load_bench("truncation")
    sets = bench_sets(toy_imdb_dir, tmp_path, train_size=64, head_epochs=2)
    assert bench.main(["--profile", "smoke", "--val-size", "32", "--set", *sets]) == 0
    record = json.loads((tmp_path / "records" / "truncation" / "head_only.json").read_text())
    assert list(record["settings"]) == ["head", "tail", "head+tail", "head, no prompt suffix"]
    for setting in record["settings"].values():
        assert setting["all"]["n"] == 32 == setting["truncated"]["n"] + setting["whole"]["n"]
        assert setting["truncated"]["n"] > 0 and 0 <= setting["all"]["accuracy"] <= 1
        low, high = setting["all"]["ci95"]
        assert low <= setting["all"]["accuracy"] <= high
    # the validation reviews are training reviews outside the profile's own train and validation subsets
    cfg = make_config("smoke", **parse_overrides(sets))
    carved = load_bench("validation").carve_validation(cfg, 32)
    profile = data.prepare_splits(cfg, data.load_splits(cfg))
    assert not set(carved["validation"]["text"]) & (set(profile["train"]["text"]) | set(profile["validation"]["text"]))
    assert carved["train"]["text"] == profile["train"]["text"] and len(carved["test"]) == 0
    assert record["validation_labels"] == list(carved["validation"]["label"])
    assert sum(record["validation_labels"]) == 16  # stratified: half of each class, as the toy data is balanced
    # P(pos) per review, as before the package handled more classes (the committed records' format)
    assert all(isinstance(p, float) and 0 <= p <= 1 for p in record["predictions"]["head"])
    # head and tail keep different tokens of the cut reviews, so the frozen model saw different inputs
    assert record["predictions"]["head"] != record["predictions"]["tail"]


def test_lora_trains_once_per_setting_and_scores_after_training(toy_imdb_dir, tmp_path):
    bench = load_bench("truncation")
    sets = bench_sets(toy_imdb_dir, tmp_path, train_size=32)
    argv = ["--profile", "smoke", "--variant", "lora", "--settings", "head", "head+tail", "--val-size", "24", "--set", *sets]
    assert bench.main(argv) == 0
    record = json.loads((tmp_path / "records" / "truncation" / "lora.json").read_text())
    assert list(record["settings"]) == ["head", "head+tail"]
    assert all(s["all"]["n"] == 24 for s in record["settings"].values())
    assert record["predictions"]["head"] != record["predictions"]["head+tail"]
    # one adapter trained per setting, each in its own folder, with no validation pass inside training
    for name in ("head", "head+tail"):
        states = list((tmp_path / "work" / "truncation" / name / "lora").glob("checkpoint-*/trainer_state.json"))
        assert states, name
        history = json.loads(states[0].read_text())["log_history"]
        assert not [h for h in history if "eval_loss" in h]


def test_every_declared_variant_can_be_scored(toy_imdb_dir, tmp_path):
    """Full fine-tuning, declared after the benchmark was written, trains through the same path as LoRA."""
    bench = load_bench("truncation")
    assert bench.parse_args(["--variant", "full_finetune"]).variant == "full_finetune"
    sets = bench_sets(toy_imdb_dir, tmp_path, train_size=32)
    argv = ["--profile", "smoke", "--variant", "full_finetune", "--settings", "head", "--val-size", "24", "--set", *sets]
    assert bench.main(argv) == 0
    record = json.loads((tmp_path / "records" / "truncation" / "full_finetune.json").read_text())
    assert record["settings"]["head"]["all"]["n"] == 24 and len(record["predictions"]["head"]) == 24
    assert list((tmp_path / "work" / "truncation" / "head" / "full_finetune").glob("checkpoint-*"))
    assert "| full fine-tuning | head | " in bench.truncation_section([record])


def test_lora_records_each_setting_as_it_finishes_and_resumes_after_a_crash(toy_imdb_dir, tmp_path, monkeypatch):
    bench = load_bench("truncation")
    sets = bench_sets(toy_imdb_dir, tmp_path, train_size=32)
    argv = ["--profile", "smoke", "--variant", "lora", "--settings", "head", "head+tail", "--val-size", "24", "--set", *sets]
    real_fit, trained = train.fit, []

    def fit_then_crash_on_the_second(trainer, cfg, resume=False):
        trained.append(trainer.args.output_dir)
        if len(trained) == 2:
            raise KeyboardInterrupt  # the run is stopped while training the second setting
        return real_fit(trainer, cfg, resume)

    monkeypatch.setattr(train, "fit", fit_then_crash_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv)
    path = tmp_path / "records" / "truncation" / "lora.json"
    partial = json.loads(path.read_text())
    assert list(partial["settings"]) == ["head"]  # the finished setting is on disk

    trained.clear()
    monkeypatch.setattr(train, "fit", lambda trainer, cfg, resume=False: trained.append(resume) or real_fit(trainer, cfg, resume))
    assert bench.main([*argv, "--resume"]) == 0
    record = json.loads(path.read_text())
    assert list(record["settings"]) == ["head", "head+tail"]
    assert trained == [True]  # only head+tail was trained, from its checkpoint if it had one
    assert record["predictions"]["head"] == partial["predictions"]["head"]
    assert record["total_seconds"] > partial["total_seconds"]

    # another config is not resumed from, nor are its checkpoints: both settings train again, from scratch
    trained.clear()
    assert bench.main([*argv, "lora_r=2", "--resume"]) == 0
    assert trained == [False, False] and json.loads(path.read_text())["config"]["lora_r"] == 2

    # the paired table: on all reviews, and on the truncated ones where the record names them
    section = bench.truncation_section([record])
    row = next(line for line in section.splitlines() if line.startswith("| LoRA | head+tail | ") and "(p = " in line)
    assert row.count("(p = ") == 2 and sum(record["validation_truncated"]) == record["settings"]["head"]["truncated"]["n"]
    # a record from before it named its truncated reviews borrows them from one on the very same reviews, else shows none
    legacy = {k: v for k, v in record.items() if k != "validation_truncated"}
    assert bench.truncated_reviews(legacy, [record]) == record["validation_truncated"]
    other = legacy | {"config": legacy["config"] | {"max_length": 16}}
    assert bench.truncated_reviews(other, [record]) is None
    assert "| - |" in bench.truncation_section([other])
    # variants at the same setting on the same reviews are paired with each other
    nf4 = record | {"variant": "nf4_lora", "predictions": {k: [1 - p for p in v] for k, v in record["predictions"].items()}}
    lines = bench.variants_paired([record, nf4])
    assert len(lines) == 2 and lines[0].startswith("- `head`: NF4 LoRA ") and "only LoRA (exact McNemar p = " in lines[0]
    assert not bench.variants_paired([record, nf4 | {"config": nf4["config"] | {"max_length": 16}}])  # other reviews
    # the README's short table: the profile's setting against head, with the paired test on the cut reviews
    summary = bench.truncation_summary([record], "head+tail")
    assert summary.count("| LoRA | ") == 1 and "(p = " in summary and "the test set is not read" in summary
    d = bench.paired_with_head(record, "head+tail", record["validation_truncated"])
    verdict = "for: LoRA;" if d["only_a"] > d["only_b"] else "for: none;"
    assert verdict in summary and f"{d['only_a']} / {d['only_b']} (p = " in summary
    assert bench.truncation_summary([record], "tail").startswith("No record has both `head` and `tail`")


def test_the_committed_tables_are_the_ones_the_committed_records_give(monkeypatch):
    from peft_sentiment import report

    bench = load_bench("truncation")
    root = Path(bench.__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # links in the blocks are resolved from the repository's root, as the report writes them
    records = bench.read_records(root / "results" / "cpu" / "truncation")
    expected = {
        root / "docs" / "benchmarks.md": ("truncation", bench.truncation_section(records)),
        root / "README.md": ("truncation-summary", bench.truncation_summary(records, make_config("cpu").truncation)),
    }
    for path, (name, body) in expected.items():
        block = path.read_text().split(f"<!-- {name}:start -->\n")[1].split(f"\n<!-- {name}:end -->")[0]
        assert block == report.relink(body, path.parent), f"{path}: regenerate with bench/truncation.py --report"
