"""bench/sweep.py: learning rates compared on validation, with every point stamped with its training cost."""

import json

import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def sweep():
    return load_bench("sweep")


def test_sweep_records_stamped_curves_and_reports_the_best_rate(sweep, toy_imdb_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the profile's relative work folders land here
    overrides = ["--set", f"data_dir='{toy_imdb_dir}'", "train_size=96", "val_size=32", "test_size=64", "max_length=32"]
    overrides += ["records_dir='records'", "train_batch_size=7"]
    changed = "-train_size96-val_size32-test_size64-max_length32-train_batch_size7"
    # 14 steps, 5 validation passes asked for: "every 1/5 of the run" is every 3 steps, and the last step (14) too
    assert sweep.main(["--profile", "smoke", "--variant", "lora", "--lr", "1e-4", "2e-2", "--evals", "5", *overrides]) == 0
    assert sweep.main(["--profile", "smoke", "--variant", "head_only", "--lr", "1e-3", "1e-1", "--evals", "2", *overrides]) == 0

    # each record is named by its variant, rate and what --set changed in how the variant trains (not where it writes)
    runs = {p.name.replace(changed, ""): json.loads(p.read_text()) for p in (tmp_path / "records" / "sweep").glob("*.json")}
    assert sorted(runs) == ["head_only-lr0.001.json", "head_only-lr0.1.json", "lora-lr0.0001.json", "lora-lr0.02.json"]
    lora = runs["lora-lr0.02.json"]
    evals = [e for e in lora["log_history"] if "eval_accuracy" in e]
    assert [e["step"] for e in evals] == [3, 6, 9, 12, 14]
    seconds = [e["train_seconds"] for e in evals]
    assert seconds == sorted(seconds) and 0 < seconds[-1] < lora["train_seconds"]  # validation passes excluded
    assert all(e["peak_memory_bytes"] > 0 for e in evals)
    assert "predictions" not in lora and "metrics" not in lora  # nothing was evaluated on test
    assert not (tmp_path / "runs" / "smoke" / "saved_f32_lora").exists()  # the profile's adapters are not touched

    head = runs["head_only-lr0.1.json"]
    head_evals = [e for e in head["log_history"] if "eval_accuracy" in e]
    frozen_pass = head_evals[0]["train_seconds"]
    assert frozen_pass > 0 and head["train_seconds"] >= head_evals[-1]["train_seconds"] >= frozen_pass

    readme = tmp_path / "README.md"
    readme.write_text("<!-- sweep:start -->\n<!-- sweep:end -->\n")
    assert sweep.main(["--profile", "smoke", "--report", "--readme", str(readme), *overrides]) == 0
    text = readme.read_text()
    assert (tmp_path / "records" / "sweep" / "curves.png").is_file()
    finals = {name: [e for e in r["log_history"] if "eval_accuracy" in e][-1]["eval_accuracy"] for name, r in runs.items()}
    best_lora = "0.02" if finals["lora-lr0.02.json"] > finals["lora-lr0.0001.json"] else "0.0001"
    assert f"LoRA: best final validation accuracy with lr {best_lora} " in text
    assert "| LoRA | " in text and "| head-only | " in text  # one row per variant: its best run within each budget
    assert "by run: lr 0.0001: " in text and "the profile uses lr 0.002." in text  # every run's final accuracy, the profile's
