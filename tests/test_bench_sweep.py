"""bench/sweep.py: learning rates compared on validation, with every point stamped with its training cost."""

import json
from pathlib import Path

import pytest
from conftest import load_bench

from peft_sentiment import report
from peft_sentiment.config import config_to_dict, make_config
from peft_sentiment.variants import get_variant

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep():
    return load_bench("sweep")


def test_sweep_records_stamped_curves_and_reports_the_best_rate(sweep, toy_imdb_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the profile's relative work folders land here
    overrides = ["--set", f"data_dir='{toy_imdb_dir}'", "train_size=96", "val_size=32", "test_size=64", "max_length=32"]
    overrides += ["records_dir='records'", "train_batch_size=7"]
    changed = "-train_size96-val_size32-max_length32-train_batch_size7"  # the test subset is no recipe: not in the name
    # 14 steps, 5 validation passes asked for: "every 1/5 of the run" is every 3 steps, and the last step (14) too
    assert sweep.main(["--profile", "smoke", "--variant", "lora", "--lr", "1e-4", "2e-2", "--evals", "5", *overrides]) == 0
    assert sweep.main(["--profile", "smoke", "--variant", "head_only", "--lr", "1e-3", "1e-1", "--evals", "2", *overrides]) == 0
    assert sweep.main(["--profile", "smoke", "--variant", "full_finetune", "--lr", "1e-3", "--evals", "2", *overrides]) == 0

    # each record is named by its variant, rate and what --set changed in how the variant trains (not where it writes)
    runs = {p.name.replace(changed, ""): json.loads(p.read_text()) for p in (tmp_path / "records" / "sweep").glob("*.json")}
    assert sorted(runs) == [
        "full_finetune-lr0.001.json",
        "head_only-lr0.001.json",
        "head_only-lr0.1.json",
        "lora-lr0.0001.json",
        "lora-lr0.02.json",
    ]
    lora = runs["lora-lr0.02.json"]
    evals = [e for e in lora["log_history"] if "eval_accuracy" in e]
    assert [e["step"] for e in evals] == [3, 6, 9, 12, 14]
    seconds = [e["train_seconds"] for e in evals]
    assert seconds == sorted(seconds) and 0 < seconds[-1] < lora["train_seconds"]  # validation passes excluded
    assert all(e["peak_memory_bytes"] > 0 for e in evals)
    assert "predictions" not in lora and "metrics" not in lora  # nothing was evaluated on test
    # the rate goes to the field the variant's declaration names; the others stay the profile's
    smoke = make_config("smoke")
    assert lora["config"]["lr_lora"] == 0.02 and lora["config"]["lr_full"] == smoke.lr_full
    full = runs["full_finetune-lr0.001.json"]
    assert full["config"]["lr_full"] == 1e-3 and full["config"]["lr_lora"] == smoke.lr_lora
    assert all("train_seconds" in e for e in full["log_history"] if "eval_accuracy" in e)
    # a sweep saves nothing: not in the profile's folders, nor in its own
    assert not (tmp_path / "runs" / "smoke" / get_variant("lora").save_dir).exists()
    assert not list((tmp_path / "runs").rglob("saved_*"))

    head = runs["head_only-lr0.1.json"]
    head_evals = [e for e in head["log_history"] if "eval_accuracy" in e]
    frozen_pass = head_evals[0]["train_seconds"]
    assert frozen_pass > 0 and head["train_seconds"] >= head_evals[-1]["train_seconds"] >= frozen_pass
    assert head["config"]["lr_head"] == 0.1 and head["peak_memory_bytes"]["train"] > 0

    readme = tmp_path / "README.md"
    readme.write_text("<!-- sweep:start -->\n<!-- sweep:end -->\n")
    assert sweep.main(["--profile", "smoke", "--report", "--readme", str(readme), *overrides]) == 0
    text = readme.read_text()
    assert (tmp_path / "records" / "sweep" / "curves.png").is_file()
    finals = {name: [e for e in r["log_history"] if "eval_accuracy" in e][-1]["eval_accuracy"] for name, r in runs.items()}
    best_lora = "0.02" if finals["lora-lr0.02.json"] > finals["lora-lr0.0001.json"] else "0.0001"
    assert f"LoRA: best final validation accuracy with lr {best_lora} " in text
    # one row per variant: its best run within each budget
    assert "| LoRA | " in text and "| head-only | " in text and "| full fine-tuning | " in text
    assert "by run: lr 0.0001: " in text and "the profile uses lr 0.002." in text  # every run's final accuracy, the profile's
    assert f"full fine-tuning: best final validation accuracy with lr 0.001 ({finals['full_finetune-lr0.001.json']:.1%})" in text


def test_old_records_keep_their_learning_rate_and_settings(sweep):
    """Records from before the redesign name the head's rate `lr_head_only` and the adapters' folders."""
    cpu = config_to_dict(make_config("cpu"))
    old = {k: v for k, v in cpu.items() if k not in ("lr_head", "save_dir")}
    old |= {"lr_head_only": 3e-3, "adapter_dir_f32": "saved_f32_lora", "adapter_dir_nf4": "saved_nf4_lora"}
    assert sweep.learning_rate_of({"variant": "head_only", "config": old}) == 3e-3  # a profile run's: from its config
    assert sweep.learning_rate_of({"variant": "head_only", "config": cpu}) == cpu["lr_head"]
    assert sweep.learning_rate_of({"variant": "lora", "config": old, "learning_rate": 2e-4}) == 2e-4  # a sweep run's own
    # where a run writes and its learning rates are no recipe difference; a setting the variant never reads is none either
    assert sweep.recipe_differences(old, cpu, "head_only") == {}
    changed = cpu | {"lora_r": 16, "nf4_compute_dtype": "bfloat16", "head_epochs": 3, "save_dir": "elsewhere", "lr_full": 1.0}
    assert sweep.recipe_differences(changed, cpu, "lora") == {"lora_r": 16}
    assert sweep.recipe_differences(changed, cpu, "nf4_lora") == {"lora_r": 16, "nf4_compute_dtype": "bfloat16"}
    assert sweep.recipe_differences(changed, cpu, "head_only") == {"head_epochs": 3}
    assert sweep.recipe_differences(changed, cpu, "full_finetune") == {}
    # records from before truncation settings existed ran with head truncation
    assert sweep.recipe_differences({k: v for k, v in cpu.items() if not k.startswith("truncation")}, cpu, "lora") == {
        "truncation": "head"
    }


def test_the_committed_block_is_the_one_the_committed_records_give(sweep, monkeypatch):
    monkeypatch.chdir(ROOT)  # the profile's records_dir and the plot's link are relative to the repository's root
    cfg = make_config("cpu")
    runs = sweep.read_validation_runs(cfg.records_dir)
    # the sweep's records and the profile's, every variant of the last notebook run
    assert {r["variant"] for r in runs} == {"head_only", "lora", "nf4_lora", "full_finetune"}
    section = sweep.sweep_section(cfg, runs, sweep.sweep_dir(cfg) / "curves.png")
    docs = ROOT / "docs" / "benchmarks.md"
    block = docs.read_text().split("<!-- sweep:start -->\n")[1].split("\n<!-- sweep:end -->")[0]
    assert block == report.relink(section, docs.parent), f"{docs}: regenerate with bench/sweep.py --report --readme"


def stamped_run(variant, lr, points):
    log = [{"step": 1, "loss": 0.7}]
    log += [{"step": 2 * i, "eval_accuracy": acc, "eval_runtime": 5.0, "train_seconds": t, "peak_memory_bytes": m}
            for i, (t, acc, m) in enumerate(points, 1)]  # fmt: skip
    return {"variant": variant, "learning_rate": lr, "log_history": log, "config": {}, "train_seconds": 99.0}


def test_validation_curves_use_the_stamps_else_the_run_end_without_validation_time(sweep):
    stamped = stamped_run("lora", 1e-3, [(10.0, 0.6, 2e9), (20.0, 0.8, 3e9)])
    older = {  # a record from before TrainClock: one point, the end, validation passes subtracted
        "variant": "nf4_lora", "config": {"lr_lora": 5e-4}, "train_seconds": 100.0, "peak_memory_bytes": {"train": 1e9},
        "log_history": [{"step": 5, "loss": 0.5}, {"step": 10, "eval_accuracy": 0.85, "eval_runtime": 30.0}],
    }  # fmt: skip
    unvalidated = {"variant": "lora", "config": {"lr_lora": 1.0}, "log_history": [{"step": 1, "loss": 0.7}]}
    curves = sweep.validation_curves([stamped, older, unvalidated])
    assert [c["label"] for c in curves] == ["LoRA, lr 0.001", "NF4 LoRA, lr 0.0005"]
    assert curves[0]["points"] == [(10.0, 0.6, 2e9), (20.0, 0.8, 3e9)]
    assert curves[1]["points"] == [(70.0, 0.85, 1e9)]


def test_curves_name_what_a_run_changed_from_the_profile(sweep):
    profile = {"lr_lora": 5e-4, "lora_dropout": 0.0, "head_epochs": 20, "work_dir": "runs/cpu", "evals_per_run": 1}
    lora = stamped_run("lora", 5e-4, [(10.0, 0.9, 1e9)]) | {"config": profile | {"lora_dropout": 0.05, "evals_per_run": 4}}
    head = stamped_run("head_only", 1e-3, [(5.0, 0.8, 1e9)]) | {"config": profile | {"lora_dropout": 0.05, "work_dir": "x"}}
    curves = sweep.validation_curves([lora, head], reference=profile)
    assert [c["setting"] for c in curves] == ["lr 0.0005, lora_dropout 0.05", "lr 0.001"]  # head-only reads no LoRA dropout
    assert curves[0]["label"] == "LoRA, lr 0.0005, lora_dropout 0.05"


def test_compute_matched_table_gives_each_runs_best_accuracy_within_each_budget(sweep):
    fast = {"variant": "head_only", "label": "head", "learning_rate": 1e-3, "setting": "lr 0.001",
            "points": [(5.0, 0.7, 1e9), (6.0, 0.75, 1e9)]}  # fmt: skip
    slow = {"variant": "lora", "label": "lora", "learning_rate": 1e-4, "setting": "lr 0.0001",
            "points": [(10.0, 0.6, 3e9), (20.0, 0.9, 4e9)]}  # fmt: skip
    assert sweep.best_within(slow, seconds=6) is None
    assert sweep.best_within(slow, seconds=15) == 0.6
    assert sweep.best_within(slow, memory_bytes=3e9) == 0.6
    assert sweep.best_within(slow, seconds=20, memory_bytes=3e9) == 0.6
    slower = {"variant": "lora", "label": "lora", "learning_rate": 1e-3, "setting": "lr 0.001, lora_r 4",
              "points": [(8.0, 0.5, 2e9), (30.0, 0.8, 5e9)]}  # fmt: skip
    lines = sweep.compute_matched_table([fast, slow, slower]).splitlines()
    assert lines[0] == (
        "| variant | <= 6 s (head-only's shortest run) | <= 20 s (LoRA's shortest run) | <= 1.0 GB (head-only's smallest peak) | <= 4.0 GB (LoRA's smallest peak) |"
    )
    assert lines[2] == "| head-only | 75.0% (lr 0.001) | 75.0% (lr 0.001) | 75.0% (lr 0.001) | 75.0% (lr 0.001) |"
    assert lines[3] == "| LoRA | - | 90.0% (lr 0.0001) | - | 90.0% (lr 0.0001) |"  # its best run in each budget

    fig = sweep.plot_validation_curves([fast, slow, slower], baseline_accuracy=0.8, hardware="test machine")
    head_ax, lora_ax = fig.axes  # one panel per variant
    assert [ax.get_title() for ax in fig.axes] == ["head-only", "LoRA"]
    assert len(lora_ax.lines) == 3 and list(lora_ax.lines[0].get_xdata()) == [10.0, 20.0]  # two runs, the baseline
    labels = [t.get_text() for t in lora_ax.get_legend().get_texts()]
    assert labels == ["lr 0.0001, peak 4.0 GB", "lr 0.001, lora_r 4, peak 5.0 GB", "TF-IDF + LR"]
