"""Shared fixtures: a learnable toy IMDB on disk, a tiny GPT-2 trained on it, and no network."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pandas as pd
import pytest

# Offline for the whole suite: libraries must not even try the Hub.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_real_connect = socket.socket.connect
_real_create_connection = socket.create_connection


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX paths
        return True
    host = str(address[0])
    return host in ("localhost", "::1") or host.startswith("127.")


def _guarded_connect(self, address):
    if not _is_local(address):
        raise RuntimeError(f"Test tried to open a network connection to {address}: the suite must run offline.")
    return _real_connect(self, address)


def _guarded_create_connection(address, *args, **kwargs):
    if not _is_local(address):
        raise RuntimeError(f"Test tried to open a network connection to {address}: the suite must run offline.")
    return _real_create_connection(address, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.create_connection = _guarded_create_connection

POSITIVE = ["good", "great", "superb", "wonderful", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "dreadful"]
NEUTRAL = ["the", "movie", "film", "plot", "actor", "was", "and", "a", "scene", "story"]


def toy_reviews(n: int, seed: int) -> pd.DataFrame:
    """Reviews whose label is given by their sentiment words (the last word is always one): learnable fast."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = POSITIVE if label else NEGATIVE
        body = [rng.choice(NEUTRAL + words) for _ in range(rng.randint(4, 30))]
        rows.append({"text": " ".join([*body, rng.choice(words)]), "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Tiny models are built into a per-session cache, never the user's."""
    folder = tmp_path_factory.mktemp("model_cache")
    os.environ["PEFT_SENTIMENT_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def toy_imdb_dir(tmp_path_factory):
    """A folder with train.parquet (200 reviews) and test.parquet (80) in IMDB's schema."""
    folder = tmp_path_factory.mktemp("toy_imdb")
    write_imdb_parquet(toy_reviews(200, seed=0), folder / "train.parquet")
    write_imdb_parquet(toy_reviews(80, seed=1), folder / "test.parquet")
    return folder


def write_imdb_parquet(frame: pd.DataFrame, path) -> None:
    """`frame` as IMDB's parquet files hold it: `label` a ClassLabel named neg/pos."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    Dataset.from_pandas(frame, features=features, preserve_index=False).to_parquet(str(path))


THREE_CLASSES = {"negative": NEGATIVE, "neutral": ["fine", "okay", "average", "passable", "so-so", "middling"],
                 "positive": POSITIVE}  # fmt: skip


def three_class_reviews(n: int, seed: int, classes: dict = THREE_CLASSES) -> pd.DataFrame:
    """Reviews in three classes (or `classes`) with string labels, named as a user's CSV might (`review`, `sentiment`)."""
    rng = random.Random(seed)
    names = list(classes)
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        words = classes[name]
        body = [rng.choice(NEUTRAL + words) for _ in range(rng.randint(4, 20))]
        rows.append({"review": " ".join([*body, rng.choice(words)]), "sentiment": name})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def three_class_dir(tmp_path_factory):
    """A user's own dataset: train.csv (90 reviews) and test.csv (45), three string classes, custom column names."""
    folder = tmp_path_factory.mktemp("three_class")
    three_class_reviews(90, seed=0).to_csv(folder / "train.csv", index=False)
    three_class_reviews(45, seed=1).to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def toy_cfg(toy_imdb_dir, tmp_path_factory):
    """The smoke profile on the toy data, writing under a temporary folder."""
    from peft_sentiment.config import make_config

    out = tmp_path_factory.mktemp("out")
    return make_config(
        "smoke", data_dir=str(toy_imdb_dir), train_size=96, val_size=32, test_size=64, max_length=32,
        save_dir=str(out / "saved"), records_dir=str(out / "records"), work_dir=str(out / "work"),
    )  # fmt: skip


@pytest.fixture(scope="session")
def toy_splits(toy_cfg):
    from peft_sentiment import data

    return data.prepare_splits(toy_cfg, data.load_splits(toy_cfg))


@pytest.fixture(scope="session")
def tiny_model_path(toy_splits):
    from peft_sentiment.catalog import resolve_model

    return resolve_model("tiny-gpt2", texts=toy_splits["train"]["text"])


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    from peft_sentiment.catalog import load_tokenizer

    return load_tokenizer(tiny_model_path)


@pytest.fixture(scope="session")
def toy_tokenized(toy_splits, tokenizer, toy_cfg):
    from peft_sentiment.data import tokenize_reviews

    return tokenize_reviews(toy_splits, tokenizer, toy_cfg.max_length)


@pytest.fixture(scope="session")
def lora_config(toy_cfg, tiny_model_path):
    from peft_sentiment.models import make_lora_config

    return make_lora_config(toy_cfg, "gpt2")


@pytest.fixture(scope="session")
def bnb_config(toy_cfg):
    from peft_sentiment.models import make_nf4_config

    return make_nf4_config(toy_cfg)


@pytest.fixture
def force_bf16_cpu_kernels(monkeypatch):
    """A function that makes bitsandbytes behave as on a CPU with AVX512-BF16, whatever this CPU has.

    Its 4-bit layers read has_avx512bf16() when built; True, they pack their weights for the CPU
    inference kernel on the first eval-mode forward without gradients (the packing itself is plain
    torch, so it runs on every CPU; the packed matmul then runs bitsandbytes' fallback here).
    """
    import bitsandbytes.functional
    import bitsandbytes.nn.modules

    from peft_sentiment import models

    def force():
        monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
        monkeypatch.setattr(bitsandbytes.functional, "has_avx512bf16", lambda: True)
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)  # also under $ONEDNN_MAX_CPU_ISA=AVX2

    return force


def fake_record(variant, accuracy, seconds, model_bytes):
    """A complete record with made-up figures, for tests of what reads records."""
    from peft_sentiment import hardware, recording

    return {
        "variant": variant, "profile": "smoke", "config": {"seed": 0, "train_batch_size": 8}, "model": "m", "dataset": "stanfordnlp/imdb",
        "labels": ["neg", "pos"], "versions": recording.library_versions(), "device": hardware.device_info(),
        "params": {"trainable": 10, "total": 100}, "model_bytes": model_bytes,
        "metrics": {"accuracy": accuracy, "f1_macro": accuracy, "precision": 0.5, "recall": 0.5, "f1": 0.5, "roc_auc": 0.5,
                    "accuracy_ci95": [accuracy - 0.05, accuracy + 0.05], "test_reviews": 100},
        "train_seconds": seconds, "eval_seconds": 1.0, "train_tokens": {"real": 10}, "eval_tokens": {"real": 5},
        "train_tokens_per_s": 10.0, "eval_tokens_per_s": 5.0, "peak_memory_bytes": {"train": 2e9, "eval": 1e9},
        "train_memory_rise_bytes": 3 * model_bytes,
        "log_history": [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6, "eval_accuracy": 0.6}], "created": "now",
        "predictions": [0.9, 0.1], "test_labels": [1, 0], "test_n_tokens": [10, 20],
    }  # fmt: skip


@pytest.fixture
def records():
    return [
        fake_record("nf4_lora", 0.86, 30.0, 100),
        fake_record("head_only", 0.80, 10.0, 400),
        fake_record("lora", 0.88, 20.0, 400),
    ]


BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_sets(data_dir, out, **settings) -> list[str]:
    """`--set` values that point a bench script at the toy data, at 12 tokens and 16 validation and test reviews unless
    `settings` say otherwise, and write its records and checkpoints under `out` only."""
    settings = {"val_size": 16, "test_size": 16, "max_length": 12} | settings
    return [f"data_dir='{data_dir}'", *(f"{name}={value}" for name, value in settings.items()),
            f"records_dir='{out}/records'", f"work_dir='{out}/work'"]  # fmt: skip


def load_bench(name: str):
    """A bench/ script imported as a module (bench/ is not a package), to test its functions."""
    import importlib.util
    import sys

    if str(BENCH) not in sys.path:  # as when the script runs: its folder first, for `import harness`
        sys.path.insert(0, str(BENCH))
    path = BENCH / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
