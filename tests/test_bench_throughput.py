"""bench/throughput.py runs end to end on a tiny model and writes a record whose figures add up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMDB = ROOT.parent / "shared" / "data" / "imdb"


@pytest.fixture(scope="module")
def bench():
    return load_bench("throughput")


def test_epoch_batches_are_the_pipelines_batches(bench):
    lengths = [int(x) for x in np.random.default_rng(0).lognormal(5.3, 0.7, size=403).clip(10, 512)]
    grouped = bench.epoch_batches(lengths, 8, "grouped", seed=0)
    assert len(grouped) == 50 and len({i for b in grouped for i in b}) == 400  # full batches, no review twice
    assert max(lengths[i] for i in grouped[0]) == max(lengths)  # the Trainer's sampler runs the longest batch first
    padded = sum(max(lengths[i] for i in b) * 8 for b in grouped)
    assert sum(lengths[i] for b in grouped for i in b) / padded > 0.8  # grouped by length: little padding
    longest = bench.epoch_batches(lengths, 32, "longest_first", seed=0)
    assert [lengths[i] for b in longest for i in b] == sorted(lengths, reverse=True)[: 12 * 32]


def test_stratified_batches_stand_for_the_whole_epoch(bench):
    rng = np.random.default_rng(1)
    lengths = [int(x) for x in rng.lognormal(5.3, 0.7, size=2000).clip(10, 512)]
    batches = bench.epoch_batches(lengths, 8, "grouped", seed=1)
    padded = np.array([max(lengths[i] for i in b) for b in batches])
    for k in (2, 3, 4):
        picked = bench.stratified_batches(batches, lengths, k)
        sizes = sorted(max(lengths[i] for i in b) for b in picked)
        assert len(picked) == k and len(set(sizes)) == k  # one per stratum: short to long
        assert np.mean(sizes) == pytest.approx(padded.mean(), rel=0.03)  # the epoch's mean padded length
    # k random batches miss it by far more (that is what stratifying buys)
    errors = [abs(padded[rng.choice(len(batches), 2, replace=False)].mean() / padded.mean() - 1) for _ in range(200)]
    assert np.median(errors) > 0.1


def test_activation_swaps_both_ways_and_computes_the_same(bench, tiny_model_path, tokenizer):
    import torch
    from transformers.activations import ACT2FN

    from peft_sentiment.models import load_classifier

    model = load_classifier(tiny_model_path, tokenizer.pad_token_id, ["neg", "pos"]).eval()
    fused, stock = type(ACT2FN["gelu_pytorch_tanh"]), type(ACT2FN["gelu_new"])
    layers = model.config.n_layer
    x = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        before = model(input_ids=x).logits
        assert bench.swap_activation(model, stock=True) == layers  # the baseline's activation, in every block
        assert not any(isinstance(m, fused) for m in model.modules()) and any(isinstance(m, stock) for m in model.modules())
        torch.testing.assert_close(model(input_ids=x).logits, before, rtol=1e-4, atol=1e-5)  # the same function
        assert bench.swap_activation(model, stock=True) == 0  # nothing left to swap
        assert bench.swap_activation(model, stock=False) == layers  # and back (between paired evaluation batches)
        assert not any(isinstance(m, stock) for m in model.modules())
        torch.testing.assert_close(model(input_ids=x).logits, before)


def test_token_counter_counts_real_and_padded_tokens_per_phase(bench, tiny_model_path, tokenizer):
    import torch

    from peft_sentiment.models import load_classifier

    model = load_classifier(tiny_model_path, tokenizer.pad_token_id, ["neg", "pos"])
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    counter = bench.TokenCounter(model, keep_shapes=True)
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()  # a training step
    with torch.no_grad():
        model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4])  # an evaluation batch
        model(input_ids=ids)  # no mask: nothing to count
    assert counter.tokens == {"train": {"real": 9, "padded": 12}, "eval": {"real": 4, "padded": 4}}
    assert counter.calls == [{"lengths": [6, 3], "padded": 6}, {"lengths": [4], "padded": 4}]
    counter.remove()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert counter.tokens["eval"]["real"] == 4  # removed: no longer counting


def test_the_committed_block_is_the_one_the_committed_records_give(bench, monkeypatch):
    """The records written before the variants were declarations (three variants, no full fine-tuning) still give it."""
    from peft_sentiment import report

    monkeypatch.chdir(ROOT)
    section = bench.throughput_section(json.loads((ROOT / "results" / "throughput" / "cpu.json").read_text()))
    docs = ROOT / "docs" / "benchmarks.md"
    block = docs.read_text().split("<!-- throughput:start -->\n")[1].split("\n<!-- throughput:end -->")[0]
    assert block == report.relink(section, docs.parent), f"{docs}: its throughput block is not what the committed records give"
    # the summary is drawn again from the runs as recorded: the same figures as the committed one
    record = json.loads((ROOT / "results" / "throughput" / "cpu.json").read_text())
    assert bench.summarize(record) == record["summary"]
    assert "nf4_bytes_vs_fp32" in record["summary"]  # NF4 LoRA against the variant its declaration compares it with


@pytest.mark.slow
def test_throughput_bench_on_a_tiny_model(tmp_path, model_cache):
    data_dir = os.environ.get("IMDB_DATA_DIR") or (str(SHARED_IMDB) if SHARED_IMDB.is_dir() else None)
    if data_dir is None:
        pytest.skip("needs IMDB parquet files: set IMDB_DATA_DIR")
    out = tmp_path / "cpu.json"
    cmd = [sys.executable, "bench/throughput.py", "--model", "tiny-gpt2", "--data-dir", data_dir, "--max-length", "128"]
    cmd += ["--steps", "1", "--eval-batches", "1", "--train-pool", "200", "--eval-pool", "100"]
    env = {**os.environ, "PEFT_SENTIMENT_CACHE": str(model_cache)}
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- throughput:start -->\nold\n<!-- throughput:end -->\nrest\n")
    # two variants, the cheapest and the one that trains every weight: the script treats every variant alike
    run = [*cmd, "--skip-tokenization", "--variants", "head_only", "full_finetune", "--out", str(out)]
    subprocess.run([*run, "--readme", str(readme)], cwd=ROOT, check=True, timeout=600, env=env)

    record = json.loads(out.read_text())
    assert out.with_suffix(".png").is_file()
    assert [(r["variant"], r["pipeline"]) for r in record["runs"]] == [
        ("head_only", "baseline"),
        ("head_only", "project"),
        ("full_finetune", "baseline"),
        ("full_finetune", "project"),
    ]
    for run in record["runs"]:
        for phase in ("train", "eval"):
            m = run[phase]
            assert 0 < m["real_tokens"] <= m["padded_tokens"] and m["seconds"] > 0
            assert m["real_tokens_per_s"] == pytest.approx(m["real_tokens"] / m["seconds"])
            assert 0 < m["model_flops_per_s"] <= m["hardware_flops_per_s"]
        if run["pipeline"] == "baseline":  # every row padded to max_length
            assert run["eval"]["padded_tokens"] == 128 * 32
    for variant in ("head_only", "full_finetune"):  # evaluation timed alternately in one process: the same reviews both ways
        base, proj = (
            next(r for r in record["runs"] if r["variant"] == variant and r["pipeline"] == p) for p in ("baseline", "project")
        )
        assert base["eval"]["paired"] and proj["eval"]["paired"] and "eval_baseline" not in proj
        assert base["eval"]["real_tokens"] == proj["eval"]["real_tokens"] and proj["eval"]["padded_tokens"] <= 128 * 32
    summary = record["summary"]["full_finetune"]
    assert summary["train_ratio"] == pytest.approx(
        summary["project"]["train_real_tokens_per_s"] / summary["baseline"]["train_real_tokens_per_s"]
    )
    assert 0 < summary["project"]["train_mfu"] < 1
    # every weight trains: the memory check's estimate counts them all, and nothing of the model is frozen
    full = next(r for r in record["runs"] if r["pipeline"] == "project" and r["variant"] == "full_finetune")
    estimate = full["memory_check"]["estimate"]
    assert full["matmul_params"]["frozen"] == 0 and estimate["trainable_params"] == estimate["params"]
    assert "train_ratio_over_10_epochs" in record["summary"]["head_only"] and "nf4_bytes_vs_fp32" not in record["summary"]
    text = readme.read_text()  # the block is drawn from the record
    assert "old" not in text and text.startswith("intro") and text.endswith("rest\n")
    assert f"**x{summary['train_ratio']:.2f}**" in text and record["command"] in text
    assert "alternating batch by batch" in text  # the evaluation ratios are paired, and the block says so
