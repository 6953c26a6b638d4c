"""The command line: train, evaluate, predict, merge, report, exit codes, and resuming a killed run exactly."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import THREE_CLASSES, three_class_reviews

from peft_sentiment import cli, config
from peft_sentiment.cli import main
from peft_sentiment.config import parse_overrides


def toy_overrides(toy_imdb_dir, out):
    return [
        f"data_dir='{toy_imdb_dir}'", "train_size=96", "val_size=32", "test_size=64", "max_length=32",
        f"save_dir='{out}'", f"records_dir='{out}/records'", f"work_dir='{out}/work'",
    ]  # fmt: skip


def sets(pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


def test_parse_overrides_reads_literals_and_rejects_junk():
    assert parse_overrides(["lora_r=8", "lr_lora=3e-4", "data_dir=None", "model_name=gpt2"]) == {
        "lora_r": 8, "lr_lora": 3e-4, "data_dir": None, "model_name": "gpt2"
    }  # fmt: skip
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_overrides(["lora_r"])


def test_train_predict_report(toy_imdb_dir, tmp_path, capsys, monkeypatch):
    assert main(["train", "--profile", "smoke", *sets(toy_overrides(toy_imdb_dir, tmp_path))]) == 0
    records = sorted(p.name for p in (tmp_path / "records").glob("*.json"))
    assert records == ["full_finetune.json", "head_only.json", "lora.json", "nf4_lora.json"]  # every declared variant
    assert json.loads((tmp_path / "records" / "lora.json").read_text())["command"].startswith("python -m peft_sentiment train")
    capsys.readouterr()

    assert main(["predict", str(tmp_path / "saved_f32_lora"), "a good and lovely film", "awful"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("neg", "pos") for line in lines)
    # which precision it computed in, and how that relates to the record (trained here: the same)
    assert "predicting in " in printed.err and "trained and recorded in" in printed.err
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("superb\n\nboring\n"))
    assert main(["predict", str(tmp_path / "saved_nf4_lora")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["predict", str(tmp_path / "saved_full_finetune"), "a good film"]) == 0  # a whole model predicts alike
    assert capsys.readouterr().out.split("\t")[0] in ("neg", "pos")

    assert main(["report", str(tmp_path / "records"), "--plots"]) == 0
    out = capsys.readouterr().out
    assert "| NF4 LoRA |" in out and "| full fine-tuning |" in out and "ECE" in out
    assert (tmp_path / "records" / "analysis.png").is_file() and (tmp_path / "records" / "accuracy_vs_cost.png").is_file()

    # evaluate: the saved adapter on the same test subset gives the recorded accuracy
    data_sets = sets([f"data_dir='{toy_imdb_dir}'", "train_size=96", "val_size=32", "test_size=64"])
    argv = ["evaluate", str(tmp_path / "saved_f32_lora"), *data_sets, "--out", str(tmp_path / "eval.json")]
    assert main([*argv, "--precision", "recorded"]) == 0
    assert capsys.readouterr().out.startswith("accuracy ")
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    recorded = json.loads((tmp_path / "records" / "lora.json").read_text())
    assert evaluated["metrics"]["accuracy"] == recorded["metrics"]["accuracy"]
    assert evaluated["predictions"] == pytest.approx(recorded["predictions"], abs=1e-4)

    assert main(["merge", str(tmp_path / "saved_f32_lora"), str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_bad_input_exits_2_with_a_message(capsys, tmp_path):
    assert main(["train", "--profile", "smoke", "--set", "lora_rank=8"]) == 2
    assert "Valid parameters" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nowhere"), "text"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--profile", "smoke", "--variants", "prefix"])
    assert exit_info.value.code == 2
    assert main(["train", "--profile", "smoke", "--set", "lora_r=abc"]) == 2
    assert "lora_r='abc': must be an integer" in capsys.readouterr().err


def test_train_runs_the_profiles_variants_unless_named(toy_imdb_dir, tmp_path, monkeypatch):
    # the config's `variants` (a profile's, or --set) is the default; --variants wins over it
    assert main(["train", "--profile", "smoke", *sets([*toy_overrides(toy_imdb_dir, tmp_path), "variants=head_only"])]) == 0
    assert sorted(p.name for p in (tmp_path / "records").glob("*.json")) == ["head_only.json"]
    called = {}
    monkeypatch.setattr(cli, "run_training", lambda cfg, variants, **kwargs: called.update(cfg=cfg, variants=variants))
    assert main(["train", "--profile", "quick", "--variants", "lora"]) == 0
    assert called["variants"] == ["lora"] and called["cfg"].variants == ("head_only", "lora")


def test_profile_prints_the_default_and_says_why_and_what_it_costs(monkeypatch, capsys):
    monkeypatch.delenv("PEFT_PROFILE", raising=False)
    monkeypatch.setattr(config, "default_profile", lambda: ("quick", "no CUDA GPU found"))
    assert main(["profile"]) == 0
    out, err = capsys.readouterr()
    assert out == "quick\n"  # stdout is the name alone: ./run.sh reads it
    assert "Profile 'quick': no CUDA GPU found" in err and config.PROFILE_COSTS["quick"] in err and "precision" in err
    monkeypatch.setenv("PEFT_PROFILE", "smoke")
    assert main(["profile"]) == 0
    out, err = capsys.readouterr()
    assert out == "smoke\n" and "$PEFT_PROFILE chose it" in err and "tiny random model" in err
    monkeypatch.setenv("PEFT_PROFILE", "fast")
    assert main(["profile"]) == 2
    assert "Valid profiles: full, cpu, quick, smoke" in capsys.readouterr().err


def test_a_damaged_adapter_exits_2_with_a_message(capsys, tmp_path, toy_imdb_dir):
    assert main(["train", "--profile", "smoke", "--variants", "lora", *sets(toy_overrides(toy_imdb_dir, tmp_path))]) == 0
    weights = tmp_path / "saved_f32_lora" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "saved_f32_lora"), "a fine film"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def run_cli(args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "peft_sentiment", *args], env=env, **kwargs)


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_metrics(toy_imdb_dir, tmp_path):
    # 96 reviews, batch 16, 12 epochs: 72 steps, a checkpoint every 6.
    common = ["train", "--profile", "smoke", "--variants", "lora", *sets(["epochs=12", "checkpoint_every=6", "evals_per_run=2"])]
    straight = run_cli([*common, *sets(toy_overrides(toy_imdb_dir, tmp_path / "straight"))])
    assert straight.wait(timeout=1800) == 0

    crashed = tmp_path / "crashed"
    args = [*common, *sets(toy_overrides(toy_imdb_dir, crashed))]
    proc = run_cli(args)
    deadline = time.time() + 1800
    while not list((crashed / "work" / "lora").glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "the run ended before it wrote a checkpoint"
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (crashed / "records" / "lora.json").exists(), "killed before it finished"
    assert run_cli([*args, "--resume"]).wait(timeout=1800) == 0

    done = json.loads((crashed / "records" / "lora.json").read_text())
    reference = json.loads((tmp_path / "straight" / "records" / "lora.json").read_text())
    assert done["resumed_from"] and "checkpoint-" in done["resumed_from"]
    assert done["metrics"] == reference["metrics"]
    assert done["predictions"] == reference["predictions"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_process_ddp_training_records_and_saves_once(launcher, toy_imdb_dir, tmp_path):
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        # accelerate's torchrun-based launcher; `--cpu` would start one process (its multi-CPU mode needs MPI)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "peft_sentiment", "train", "--profile", "smoke", "--variants", "lora"]
    cmd += sets(toy_overrides(toy_imdb_dir, tmp_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("LoRA: accuracy") == 1, "only the main process reports"

    record = json.loads((tmp_path / "records" / "lora.json").read_text())
    assert record["processes"] == 2
    assert record["metrics"]["test_reviews"] == 64 and 0 <= record["metrics"]["accuracy"] <= 1
    assert len(record["predictions"]) == 64  # every test review once, gathered from both processes
    assert math.isfinite(record["train_loss"]) and record["train_loss"] > 0
    # one DDP job, not two copies: 96 reviews at 16 per process and step make 3 steps, not 6
    assert max(e["step"] for e in record["log_history"]) == 96 // (16 * 2)
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert "saved_f32_lora" in saved and not [name for name in saved if name.startswith(".")], "saved once, no leftovers"


def test_the_full_profile_runs_on_the_tiny_model(toy_imdb_dir, tmp_path):
    """The GPU user's configuration, with only the model and sizes swapped (and bf16, which `auto` picks on a GPU).

    bf16 mixed precision, NF4 computing in bf16, LoRA dropout, four validation passes per run and
    checkpoints, then each saved adapter reloaded and predicting what its record says.
    """
    from peft_sentiment import data, inference
    from peft_sentiment.config import config_to_dict, make_config
    from peft_sentiment.experiment import run_training, save_dir
    from peft_sentiment.variants import VARIANTS

    swapped = dict(model_name="tiny-gpt2", data_dir=str(toy_imdb_dir), train_size=128, val_size=32, test_size=32, max_length=32)
    outputs = dict(save_dir=str(tmp_path), records_dir=str(tmp_path / "records"), work_dir=str(tmp_path / "work"))
    cfg = make_config("full", **swapped, **outputs, precision="bf16")
    full = config_to_dict(make_config("full"))
    assert {k for k, v in config_to_dict(cfg).items() if v != full[k]} == {*swapped, *outputs, "precision"}

    records = {r["variant"]: r for r in run_training(cfg)}
    assert list(records) == list(VARIANTS)
    test = data.prepare_splits(cfg, data.load_splits(cfg))["test"]
    for variant, weights in (("lora", "adapter_model"), ("nf4_lora", "adapter_model"), ("full_finetune", "model")):
        record = records[variant]
        assert record["precision"] == "bf16" and record["config"]["lora_dropout"] == 0.1
        assert sum("eval_accuracy" in e for e in record["log_history"]) == 4
        assert list((tmp_path / "work" / variant).glob(f"checkpoint-*/{weights}.safetensors"))
        folder = save_dir(cfg, VARIANTS[variant])
        model, tokenizer = inference.load_adapter(folder)
        meta = inference.check_adapter_dir(folder)
        assert meta["precision"] == "bf16"
        out = inference.predict_reviews(model, tokenizer, test["text"], **inference.encoding(meta, "recorded"))
        # evaluated under bf16 autocast, and predicted here under it too (the adapter records its precision)
        assert [o["probabilities"][1] for o in out] == pytest.approx(record["predictions"], abs=1e-4)
    assert records["nf4_lora"]["nf4_kernel"] == "dequantize to the compute dtype, then matmul"
    nf4_meta = inference.check_adapter_dir(save_dir(cfg, VARIANTS["nf4_lora"]))
    assert nf4_meta["quantization"]["bnb_4bit_compute_dtype"] == "bfloat16"


def test_own_three_class_csv_trains_every_variant(three_class_dir, tmp_path, monkeypatch, capsys):
    """The issue's "done when": a user's CSV folder (string labels, own column names) through every declared variant."""
    from peft_sentiment import recording, report
    from peft_sentiment.variants import VARIANTS

    monkeypatch.chdir(tmp_path)  # outputs not named go under runs/<profile>/<dataset>: here, not in the checkout
    out = tmp_path / "OUT"
    # the command as the issue gives it: smoke's sizes (320 + 64 / 128) ask for more than the folder has, so all of it is used
    settings = [f"dataset='{three_class_dir}'", "text_column='review'", "label_column='sentiment'", f"records_dir='{out}'"]
    assert main(["train", "--profile", "smoke", *sets(settings)]) == 0
    assert "taking all of them" in capsys.readouterr().out
    names = ["negative", "neutral", "positive"]
    records = recording.read_records(out, order=VARIANTS)
    assert [r["variant"] for r in records] == list(VARIANTS)
    for r in records:
        assert r["labels"] == names and r["dataset"] == os.path.relpath(three_class_dir)
        assert r["config"]["prompt_suffix"] == ""  # IMDB's suffix is not another dataset's
        assert len(r["predictions"]) == len(r["test_labels"]) == 45 and set(r["test_labels"]) == {0, 1, 2}
        assert all(len(row) == 3 and sum(row) == pytest.approx(1, abs=1e-5) for row in r["predictions"])
        assert {"accuracy", "f1_macro"} <= set(r["metrics"]) and "roc_auc" not in r["metrics"]
        assert 0 <= r["metrics"]["f1_macro"] <= 1
    section = report.results_section(out)
    assert "| full fine-tuning |" in section and "ROC-AUC" not in section and three_class_dir.name in section
    # saved where the dataset's own folder is, under the working folder's runs/
    own = tmp_path / "runs" / "smoke" / three_class_dir.name
    assert sorted(p.name for p in own.iterdir()) == ["saved_f32_lora", "saved_full_finetune", "saved_nf4_lora", "work"]
    capsys.readouterr()
    assert main(["predict", str(own / "saved_f32_lora"), "fine okay average film"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in names
    assert main(["report", str(out), "--plots"]) == 0  # confusion matrices of three classes, no ROC
    assert (out / "analysis.png").is_file() and "accuracy on neutral" in capsys.readouterr().out


FOUR_CLASSES = THREE_CLASSES | {"mixed": ["uneven", "patchy", "bittersweet", "flawed", "partly", "inconsistent"]}


def test_own_four_class_csv_trains_on_the_default_profile(tmp_path, monkeypatch, capsys):
    """The offline default profile (quick) with only the three data settings: IMDB's retired test reviews, prompt suffix
    and one-epoch budget stay IMDB's; the trained variant runs until validation stops improving, within a stated cap."""
    from peft_sentiment import recording
    from peft_sentiment.config import PROFILES

    folder = tmp_path / "four_class"
    folder.mkdir()
    three_class_reviews(1200, seed=0, classes=FOUR_CLASSES).to_csv(folder / "train.csv", index=False)
    three_class_reviews(400, seed=1, classes=FOUR_CLASSES).to_csv(folder / "test.csv", index=False)
    monkeypatch.chdir(tmp_path)
    data_settings = [f"dataset='{folder}'", "text_column='review'", "label_column='sentiment'"]
    # quick's own settings, on a tiny model: a test cannot afford the real backbone
    assert main(["train", "--profile", "quick", *sets([*data_settings, "model_name='tiny-gpt2'"])]) == 0
    out = capsys.readouterr().out
    assert "LoRA: trains until validation loss stops improving" in out and "at most 10 epochs = 630 steps" in out
    records = {r["variant"]: r for r in recording.read_records(tmp_path / "runs" / "quick" / "four_class" / "records")}
    assert list(records) == list(PROFILES["quick"].variants) == ["head_only", "lora"]
    for r in records.values():
        assert r["config"]["retired_test_subset"] is None and r["config"]["prompt_suffix"] == ""
        assert r["metrics"]["test_reviews"] == 400 and len(r["labels"]) == 4  # every test row: none retired
    lora = records["lora"]
    evals = [e for e in lora["log_history"] if "eval_loss" in e]
    # it trained past IMDB's one epoch, and kept its best validation pass
    assert max(e["epoch"] for e in evals) > 1 and len(evals) >= 3
    assert lora["metrics"]["accuracy"] > 0.5  # four classes: chance is 0.25


def write_folder(folder, train, test=None, suffix=".csv"):
    import pandas as pd

    folder.mkdir()
    for split, rows in (("train", train), ("test", train if test is None else test)):
        frame = pd.DataFrame(rows)
        if suffix == ".csv":
            frame.to_csv(folder / f"{split}{suffix}", index=False)
        else:
            frame.to_json(folder / f"{split}{suffix}", orient="records", lines=True)
    return folder


GOOD = {"review": ["a good film", "a dull film", "fine enough", "lovely"], "sentiment": ["pos", "neg", "mid", "pos"]}


def garbage(folder, suffix):
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}{suffix}").write_bytes(b"PAR1" + bytes(range(256)) * 8)
    return folder


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: write_folder(d, {"text": GOOD["review"], "sentiment": GOOD["sentiment"]}),
         "no column 'review'; its columns are ['text', 'sentiment']"),
        (lambda d: write_folder(d, {"review": GOOD["review"], "sentiment": ["pos"] * 4}), "one class only"),
        (lambda d: write_folder(d, {"review": ["good", "", "fine", "dull"], "sentiment": GOOD["sentiment"]}),
         "empty or non-text entries in 'review'"),
        (lambda d: write_folder(d, {"review": ["good", 7, "fine", "dull"], "sentiment": GOOD["sentiment"]}, suffix=".jsonl"),
         "(first at row 1: 7)"),
        (lambda d: write_folder(d, GOOD, {"review": ["good"], "sentiment": ["great"]}), "labels never seen in train: ['great']"),
        (lambda d: garbage(d, ".parquet"), "Could not read the data files"),
        (lambda d: garbage(d, ".csv"), "Could not read the data files"),
        (lambda d: (d.mkdir(), (d / "reviews.txt").write_text("x"), d)[-1], "must hold a train and a test file"),
        (lambda d: write_folder(d, GOOD), "val_size=64 leaves none of the 4 training examples"),  # smoke's sizes, four rows
    ],
)  # fmt: skip
def test_bad_data_exits_2_with_one_line_before_any_model_loads(make, message, tmp_path, monkeypatch, capsys, model_cache):
    from peft_sentiment import catalog

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(catalog, "resolve_model", no_model)
    folder = make(tmp_path / "data")
    settings = [f"dataset='{folder}'", "text_column='review'", "label_column='sentiment'", f"records_dir='{tmp_path / 'out'}'",
                f"save_dir='{tmp_path / 'out'}'", f"work_dir='{tmp_path / 'out'}'"]  # fmt: skip
    if "val_size=64" not in message:
        settings += ["train_size=None", "val_size=1", "test_size=None"]
    cached_before = sorted(p.name for p in model_cache.iterdir())
    assert main(["train", "--profile", "smoke", *sets(settings)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], errors
    assert sorted(p.name for p in model_cache.iterdir()) == cached_before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("retired_test_subset=(1000, 42)", "retired_test_subset=(1000, 42) retires 1,000 test examples, and the test split holds 4"),
        ("text_column='sentiment'", "text_column and label_column are both 'sentiment'"),
    ],
)  # fmt: skip
def test_settings_that_leave_no_data_exit_2_with_one_line(setting, message, tmp_path, capsys):
    """A setting of IMDB's set on another dataset, or one column as both text and label: one line, exit 2."""
    folder = write_folder(tmp_path / "data", GOOD)
    settings = [f"dataset='{folder}'", "text_column='review'", "label_column='sentiment'", "train_size=None", "val_size=1",
                "test_size=None", f"records_dir='{tmp_path / 'out'}'", f"work_dir='{tmp_path / 'out'}'", setting]  # fmt: skip
    assert main(["train", "--profile", "quick", *sets(settings)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], errors
