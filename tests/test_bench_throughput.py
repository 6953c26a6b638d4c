"""bench/throughput.py runs end to end on a tiny model and writes a record whose figures add up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peft_sentiment import report

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMDB = ROOT.parent / "shared" / "data" / "imdb"


@pytest.mark.slow
def test_throughput_bench_on_a_tiny_model(tmp_path, model_cache):
    data_dir = os.environ.get("IMDB_DATA_DIR") or (str(SHARED_IMDB) if SHARED_IMDB.is_dir() else None)
    if data_dir is None:
        pytest.skip("needs IMDB parquet files: set IMDB_DATA_DIR")
    out = tmp_path / "cpu.json"
    cmd = [sys.executable, "bench/throughput.py", "--model", "tiny-gpt2", "--data-dir", data_dir, "--max-length", "128"]
    cmd += ["--steps", "1", "--eval-batches", "1", "--train-pool", "200", "--eval-pool", "100", "--skip-tokenization"]
    cmd += ["--variants", "head_only", "lora", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=600, env={**os.environ, "PEFT_SENTIMENT_CACHE": str(model_cache)})

    record = json.loads(out.read_text())
    assert out.with_suffix(".png").is_file()
    assert [(r["variant"], r["pipeline"]) for r in record["runs"]] == [
        ("head_only", "baseline"),
        ("head_only", "project"),
        ("lora", "baseline"),
        ("lora", "project"),
    ]
    for run in record["runs"]:
        for phase in ("train", "eval"):
            m = run[phase]
            assert 0 < m["real_tokens"] <= m["padded_tokens"] and m["seconds"] > 0
            assert m["real_tokens_per_s"] == pytest.approx(m["real_tokens"] / m["seconds"])
            assert 0 < m["model_flops_per_s"] <= m["hardware_flops_per_s"]
        if run["pipeline"] == "baseline":  # every row padded to max_length
            assert run["eval"]["padded_tokens"] == 128 * 32
    lora = record["summary"]["lora"]
    assert lora["train_ratio"] == pytest.approx(
        lora["project"]["train_real_tokens_per_s"] / lora["baseline"]["train_real_tokens_per_s"]
    )
    assert 0 < lora["project"]["train_mfu"] < 1
    project_lora = next(r for r in record["runs"] if r["pipeline"] == "project" and r["variant"] == "lora")
    assert project_lora["train_profile"]
    # tiny-gpt2 has GPT-2's dropouts: the same steps are timed without them
    assert project_lora["train_no_backbone_dropout"]["real_tokens"] == project_lora["train"]["real_tokens"]
    assert lora["backbone_dropout_off_speedup"] > 0

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- throughput:start -->\nold\n<!-- throughput:end -->\nrest\n")
    report.replace_block(readme, "throughput", report.throughput_section(record))
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro") and text.endswith("rest\n")
    assert f"**x{lora['train_ratio']:.2f}**" in text and record["command"] in text
    assert f"x{lora['backbone_dropout_off_speedup']:.2f}" in text
