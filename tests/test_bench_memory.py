"""bench/memory.py: the will-it-fit estimate against the measured peak, per model and variant."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peft_sentiment.variants import get_variant, label_of

ROOT = Path(__file__).resolve().parents[1]


def test_memory_bench_compares_estimate_and_measurement(tiny_model_path, model_cache, tmp_path):
    out = tmp_path / "memory.json"
    readme = tmp_path / "README.md"
    readme.write_text("<!-- memory:start -->\nold\n<!-- memory:end -->\n")
    cmd = [sys.executable, "bench/memory.py", "--models", tiny_model_path, "--variants", "head_only", "nf4_lora", "full_finetune"]
    cmd += ["--batch", "2", "--seq-len", "32", "--out", str(out), "--readme", str(readme)]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=300, env={**os.environ, "PEFT_SENTIMENT_CACHE": str(model_cache)})

    record = json.loads(out.read_text())
    assert [r["variant"] for r in record["runs"]] == ["head_only", "nf4_lora", "full_finetune"]
    for run in record["runs"]:
        assert run["peak_bytes"] >= run["memory_before_bytes"] > 0 and run["step_seconds"] > 0
        assert run["estimated_added_bytes"] == pytest.approx(run["estimate"]["total"] - run["estimate"]["weights"])
    head, nf4, full = record["runs"]
    hidden = 2 * 32 * 64 * 4  # batch x seq x width, fp32: the head's input, all autograd keeps for head-only
    assert hidden <= head["saved_activation_bytes"] < 1.1 * hidden
    assert nf4["saved_activation_bytes"] > 0
    assert nf4["nf4_compute_dtype"] == "float32"  # on a CPU: the estimate's fp32 activations, and no slow bf16
    # malloc's live bytes: what the step's tensors held, under what RSS kept. Head-only on this 2-layer
    # model adds a few kB at most and may free as much first (its peak is then its start: 0 added);
    # NF4 LoRA's step dequantizes weights and keeps activations and optimizer state: always more.
    assert head["measured_added_heap_bytes"] >= 0 and nf4["measured_added_heap_bytes"] > 0
    assert "live heap" in readme.read_text()
    assert nf4["estimate"]["weights"] == pytest.approx(nf4["model_bytes"], rel=0.1)  # as tests/test_bench_cost.py checks
    # full fine-tuning: every weight trains, so its gradients and AdamW state add three times the fp32 weights
    assert full["estimate"]["trainable_params"] == full["params"] and full["estimate"]["weights"] == 4 * full["params"]
    assert full["estimated_added_bytes"] > 3 * full["estimate"]["weights"]
    assert full["saved_activation_bytes"] > head["saved_activation_bytes"] and full["measured_added_bytes"] > 0
    text = readme.read_text()
    assert "old" not in text and record["command"] in text and "| NF4 LoRA |" in text
    assert all(f"| {label_of(v)} |" in text for v in ("head_only", "nf4_lora", "full_finetune"))


def test_what_the_estimate_says_will_not_fit_is_skipped_not_run(tiny_model_path, model_cache, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from conftest import load_bench

    bench = load_bench("memory")
    monkeypatch.setattr(bench.psutil, "virtual_memory", lambda: SimpleNamespace(available=1_000))  # 1 kB free
    monkeypatch.setattr(bench, "run_in_worker", lambda *a, **k: pytest.fail("a run that cannot fit was started"))
    out, readme = tmp_path / "memory.json", tmp_path / "README.md"
    readme.write_text("<!-- memory:start -->\nold\n<!-- memory:end -->\n")
    argv = ["--models", tiny_model_path, "--variants", "lora", "--batch", "2", "--seq-len", "32"]
    assert bench.main([*argv, "--out", str(out), "--readme", str(readme)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    need = bench.predicted_rss_bytes(tiny_model_path, get_variant("lora"), bench.parse_args(argv))
    assert run["variant"] == "lora" and f"needs ~{need / 1e9:.1f} GB" in run["skipped"] and "0.0 GB available" in run["skipped"]
    assert "| LoRA | skipped: needs" in readme.read_text()


def test_the_committed_block_is_the_one_the_committed_record_gives(monkeypatch):
    """Records written before the variants were declarations (no full fine-tuning) still give the committed table."""
    from conftest import load_bench

    from peft_sentiment import report

    bench = load_bench("memory")
    monkeypatch.chdir(ROOT)
    record = json.loads((ROOT / "results" / "memory" / "cpu.json").read_text())
    docs = ROOT / "docs" / "benchmarks.md"
    block = docs.read_text().split("<!-- memory:start -->\n")[1].split("\n<!-- memory:end -->")[0]
    assert block == report.relink(bench.memory_section(record), docs.parent), (
        f"{docs}: its memory block is not what the committed record gives"
    )
