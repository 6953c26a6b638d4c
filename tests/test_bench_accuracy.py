"""bench/accuracy.py: the variants and the TF-IDF baseline on the same subsets, and the whole run's wall time."""

import json

from conftest import load_bench

from peft_sentiment import recording, report
from peft_sentiment.variants import VARIANTS, get_variant


def test_accuracy_bench_records_each_method_and_its_own_wall_time(toy_imdb_dir, model_cache, tmp_path, monkeypatch):
    bench = load_bench("accuracy")
    assert bench.parse_args([]).variants is None  # by default the profile's (config `variants`: every declared one on smoke)
    monkeypatch.chdir(tmp_path)  # the smoke profile's relative folders (work, adapters) land here
    overrides = ["--set", f"data_dir='{toy_imdb_dir}'", "train_size=96", "val_size=32", "test_size=64", "max_length=32"]
    overrides += ["records_dir='records'"]
    assert bench.main(["--profile", "smoke", "--variants", "head_only", "lora", *overrides]) == 0

    records = recording.read_records("records", VARIANTS)  # the run file sits apart: every *.json here is a record
    assert [r["variant"] for r in records] == ["head_only", "lora"]
    baseline = json.loads((tmp_path / "records" / "baselines" / "tfidf_logreg.json").read_text())
    assert baseline["metrics"]["test_reviews"] == records[0]["metrics"]["test_reviews"] == 64  # the same test reviews
    run = json.loads((tmp_path / "records" / recording.ACCURACY_RUN_FILE).read_text())
    assert run["variants"] == ["head_only", "lora"] and not run["resumed"]
    assert run["total_seconds"] > sum(r["train_seconds"] for r in records)  # the whole run: training, evaluation, loading
    assert {r["command"] for r in records} == {run["command"]} and run["command"].startswith("python bench/accuracy.py")
    assert (tmp_path / "runs" / "smoke" / get_variant("lora").save_dir).is_dir()  # under the smoke profile's save_dir
    assert records[0]["labels"] == ["neg", "pos"]  # the class names, from the data

    section = report.results_section("records")
    assert f"took {run['total_seconds'] / 60:.1f} min" in section
    # records written later by something else (the notebook, say): the run's time no longer describes them
    lora = tmp_path / "records" / "lora.json"
    lora.write_text(json.dumps(json.loads(lora.read_text()) | {"command": "jupyter nbconvert ..."}))
    assert "took" not in report.results_section("records")
