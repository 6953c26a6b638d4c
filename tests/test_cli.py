"""The command line: train, evaluate, predict, merge, report, exit codes, and resuming a killed run exactly."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from peft_sentiment.cli import main
from peft_sentiment.config import parse_overrides


def toy_overrides(toy_imdb_dir, out):
    return [
        f"data_dir='{toy_imdb_dir}'", "train_size=96", "val_size=32", "test_size=64", "max_length=32",
        f"adapter_dir_f32='{out}/f32'", f"adapter_dir_nf4='{out}/nf4'", f"records_dir='{out}/records'", f"work_dir='{out}/work'",
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
    assert records == ["head_only.json", "lora.json", "nf4_lora.json"]
    assert json.loads((tmp_path / "records" / "lora.json").read_text())["command"].startswith("python -m peft_sentiment train")
    capsys.readouterr()

    assert main(["predict", str(tmp_path / "f32"), "a good and lovely film", "awful"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("neg", "pos") for line in lines)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("superb\n\nboring\n"))
    assert main(["predict", str(tmp_path / "nf4")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2

    assert main(["report", str(tmp_path / "records"), "--plots"]) == 0
    out = capsys.readouterr().out
    assert "| NF4 LoRA |" in out and "ECE" in out
    assert (tmp_path / "records" / "analysis.png").is_file() and (tmp_path / "records" / "accuracy_vs_cost.png").is_file()

    # evaluate: the saved adapter on the same test subset gives the recorded accuracy
    data_sets = sets([f"data_dir='{toy_imdb_dir}'", "train_size=96", "val_size=32", "test_size=64"])
    assert main(["evaluate", str(tmp_path / "f32"), *data_sets, "--out", str(tmp_path / "eval.json")]) == 0
    assert capsys.readouterr().out.startswith("accuracy ")
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    recorded = json.loads((tmp_path / "records" / "lora.json").read_text())
    assert evaluated["metrics"]["accuracy"] == recorded["metrics"]["accuracy"]
    assert evaluated["predictions"] == pytest.approx(recorded["predictions"], abs=1e-4)

    assert main(["merge", str(tmp_path / "f32"), str(tmp_path / "merged")]) == 0
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


def test_a_damaged_adapter_exits_2_with_a_message(capsys, tmp_path, toy_imdb_dir):
    assert main(["train", "--profile", "smoke", "--variants", "lora", *sets(toy_overrides(toy_imdb_dir, tmp_path))]) == 0
    weights = tmp_path / "f32" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "f32"), "a fine film"]) == 2
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
    assert done.stdout.count("lora: accuracy") == 1, "only the main process reports"

    record = json.loads((tmp_path / "records" / "lora.json").read_text())
    assert record["processes"] == 2
    assert record["metrics"]["test_reviews"] == 64 and 0 <= record["metrics"]["accuracy"] <= 1
    assert len(record["predictions"]) == 64  # every test review once, gathered from both processes
    assert math.isfinite(record["train_loss"]) and record["train_loss"] > 0
    # one DDP job, not two copies: 96 reviews at 16 per process and step make 3 steps, not 6
    assert max(e["step"] for e in record["log_history"]) == 96 // (16 * 2)
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert "f32" in saved and not [name for name in saved if name.startswith(".")], "saved once, no leftovers"


def test_the_full_profile_runs_on_the_tiny_model(toy_imdb_dir, tmp_path):
    """The GPU user's configuration, with only the model and sizes swapped (and bf16, which `auto` picks on a GPU).

    bf16 mixed precision, NF4 computing in bf16, LoRA dropout, four validation passes per run and
    checkpoints, then each saved adapter reloaded and predicting what its record says.
    """
    from peft_sentiment import data, inference
    from peft_sentiment.config import config_to_dict, make_config
    from peft_sentiment.pipeline import run_training

    swapped = dict(model_name="tiny-gpt2", data_dir=str(toy_imdb_dir), train_size=128, val_size=32, test_size=32, max_length=32)
    outputs = dict(adapter_dir_f32=str(tmp_path / "f32"), adapter_dir_nf4=str(tmp_path / "nf4"),
                   records_dir=str(tmp_path / "records"), work_dir=str(tmp_path / "work"))  # fmt: skip
    cfg = make_config("full", **swapped, **outputs, precision="bf16")
    full = config_to_dict(make_config("full"))
    assert {k for k, v in config_to_dict(cfg).items() if v != full[k]} == {*swapped, *outputs, "precision"}

    records = {r["variant"]: r for r in run_training(cfg)}
    test = data.prepare_splits(cfg, data.load_imdb(cfg.data_dir))["test"]
    for variant in ("lora", "nf4_lora"):
        record = records[variant]
        assert record["precision"] == "bf16" and record["config"]["lora_dropout"] == 0.1
        assert sum("eval_accuracy" in e for e in record["log_history"]) == 4
        assert list((tmp_path / "work" / variant).glob("checkpoint-*/adapter_model.safetensors"))
        model, tokenizer = inference.load_adapter(cfg.adapter_dir(variant))
        meta = inference.check_adapter_dir(cfg.adapter_dir(variant))
        assert meta["precision"] == "bf16"
        out = inference.predict_reviews(model, tokenizer, test["text"], **inference.encoding(meta))
        # evaluated under bf16 autocast, and predicted here under it too (the adapter records its precision)
        assert inference.pos_probabilities(out) == pytest.approx(record["predictions"], abs=1e-4)
    assert records["nf4_lora"]["nf4_kernel"] == "dequantize to the compute dtype, then matmul"
    nf4_meta = inference.check_adapter_dir(cfg.adapter_dir_nf4)
    assert nf4_meta["quantization"]["bnb_4bit_compute_dtype"] == "bfloat16"
