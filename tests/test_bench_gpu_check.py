"""bench/gpu_check.py: its dry run goes through the pipeline and writes a record whose figures add up; no GPU, no run."""

import json

import pytest
import torch
from conftest import load_bench

from peft_sentiment.variants import VARIANTS, label_of


@pytest.fixture(scope="module")
def gpu_check():
    return load_bench("gpu_check")


def test_refuses_without_cuda_unless_dry_run(gpu_check, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "cuda.json"
    assert gpu_check.main(["--data-dir", str(tmp_path), "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "CUDA GPU" in message and "--dry-run" in message
    assert not out.exists()


def test_dry_run_records_every_variant(gpu_check, toy_imdb_dir, tmp_path, capsys):
    out = tmp_path / "cpu-dry-run.json"
    argv = ["--dry-run", "--data-dir", str(toy_imdb_dir), "--out", str(out), "--work-dir", str(tmp_path / "runs")]
    assert gpu_check.main(argv) == 0
    record = json.loads(out.read_text())
    rows = record["variants"]
    assert list(rows) == list(VARIANTS)  # every declared variant
    for name, row in rows.items():
        assert row["train_tokens_per_s"] > 0 and row["eval_tokens_per_s"] > 0
        assert 0 < row["train_mfu"] <= 1 and 0 < row["eval_mfu"] <= 1
        assert row["peak_memory_bytes"]["train"] > 0 and row["peak_memory_bytes"]["eval"] > 0
        assert row["passes"]["train"] == pytest.approx(1.0)  # FLOPs counted on the very reviews the pipeline trained on
        assert row["passes"]["validation"] >= 1
        assert row["attn_implementation"] == "sdpa"  # transformers' default for GPT-2
        # MFU is model FLOPs / seconds / the matmul peak measured in the same run
        assert row["train_mfu"] == pytest.approx(row["train_model_flops"] / row["train_seconds"] / record["matmul_peak"]["flops"])
        # gradient checkpointing (NF4 LoRA) recomputes the forward pass, which MFU (model FLOPs) leaves out
        if VARIANTS[name].gradient_checkpointing:
            assert row["train_utilisation_with_recompute"] > row["train_mfu"], name
        else:
            assert row["train_utilisation_with_recompute"] == row["train_mfu"], name
    assert VARIANTS["nf4_lora"].gradient_checkpointing and not VARIANTS["lora"].gradient_checkpointing
    # on the same reviews, LoRA's training (forward and backward) costs more than head-only's one forward pass
    assert rows["lora"]["train_model_flops"] > rows["head_only"]["train_model_flops"]
    assert rows["lora"]["eval_model_flops"] > rows["head_only"]["eval_model_flops"]  # LoRA's adapters add matmuls
    # full fine-tuning also computes every weight's gradient: more training FLOPs than LoRA's on the same reviews
    assert rows["full_finetune"]["train_model_flops"] > rows["lora"]["train_model_flops"]
    assert rows["full_finetune"]["matmul_params"]["frozen"] == 0
    assert record["attn_implementation"] == "sdpa" and record["attention_note"] is None
    assert record["matmul_peak"]["flops"] > 0 and record["matmul_peak"]["dtype"] in ("bfloat16", "float32")
    assert record["config"]["profile"] == "full" and record["config"]["model_name"] == "tiny-gpt2"
    assert record["config"]["train_batch_size"] == 16 and record["dry_run"] is True
    assert (
        record["device"]["type"] == ("cuda" if torch.cuda.is_available() else "cpu")
        and "torch" in record["versions"]
        and record["wall_seconds"] > 0
    )
    assert record["command"].startswith("python bench/gpu_check.py --dry-run")
    # the pipeline's own records beside it, the adapters and models under --work-dir, never in the committed folders
    assert sorted(p.name for p in (tmp_path / "cpu-dry-run-records").glob("*.json")) == sorted(f"{v}.json" for v in VARIANTS)
    saved = [v.save_dir for v in VARIANTS.values() if v.save_dir]
    assert saved and all((tmp_path / "runs" / "dry-run" / folder).is_dir() for folder in saved)
    assert record["config"]["save_dir"] == str(tmp_path / "runs" / "dry-run")
    table = capsys.readouterr().out
    assert "train MFU" in table and all(label_of(v) in table for v in VARIANTS)
