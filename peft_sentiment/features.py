"""Head-only's frozen forward pass, paid once per review: the hidden state the head reads, cached on disk.

The head of a frozen model sees the same features in every epoch, so they are computed once (in
length order: little padding) and saved; `train.train_head_on_features` trains the head on them.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from tqdm import tqdm  # text bars: they read the same in Jupyter, nbconvert and on GitHub (no widgets)
from transformers import DataCollatorWithPadding
from transformers.modeling_outputs import SequenceClassifierOutput

from peft_sentiment.config import Config
from peft_sentiment.hardware import autocast, resolve_precision
from peft_sentiment.recording import atomic_path


def length_order(lengths, longest_first: bool = False) -> np.ndarray:
    """Indices that sort reviews by length (ties in index order; longest-first is that order reversed).

    Batches cut from this order pad each review to a near-equal length: the package's evaluation
    runs longest-first (the largest batch first: an out-of-memory error comes at once), its frozen
    pass shortest-first.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    return order[::-1] if longest_first else order


class FeatureHead(nn.Module):
    """The classifier's own `score` layer, applied to cached features: what it sees inside the model."""

    main_input_name = "features"  # what the Trainer looks for in a batch

    def __init__(self, score: nn.Linear):
        super().__init__()
        self.score = score

    def forward(self, features, labels=None):
        logits = self.score(features)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


@torch.inference_mode()
def extract_features(model, dataset, tokenizer, batch_size: int, precision: str = "fp32") -> tuple[torch.Tensor, dict]:
    """The hidden state the head reads (last real token), one frozen forward pass per review, in dataset order.

    Reviews go through in length order, so each batch pads to a near-equal length. `precision` (resolved:
    "bf16", "fp16" or "fp32") runs the pass under the autocast the Trainer uses for the other variants.
    """
    collator = DataCollatorWithPadding(tokenizer)
    backbone = model.base_model  # GPT2Model / LlamaModel: everything below the head
    device = next(model.parameters()).device
    order = length_order(dataset["length"]).tolist()
    columns = dataset.select_columns(["input_ids", "attention_mask"])
    features = torch.empty(len(dataset), model.score.in_features)
    tokens = {"real": 0, "padded": 0}
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc="Frozen forward pass", unit="batch"):
        rows = order[start : start + batch_size]
        batch = collator([columns[i] for i in rows]).to(device)
        with autocast(precision, device.type):
            hidden = backbone(**batch).last_hidden_state
        mask = batch["attention_mask"]
        last = (mask * torch.arange(mask.shape[1], device=device)).argmax(-1)  # last real token, either padding side
        features[rows] = hidden[torch.arange(len(rows), device=device), last].float().cpu()
        tokens["real"] += int(mask.sum())
        tokens["padded"] += int(mask.numel())
    return features, tokens


def cached_features(
    model, dataset, tokenizer, batch_size: int, path: Path, reuse: bool, precision: str = "fp32"
) -> tuple[torch.Tensor, dict]:
    """`extract_features`, saved to `path`; with `reuse`, loaded from it instead when it holds this very input.

    The key is the tokenized dataset's fingerprint (data, subset, tokenizer, max length, suffix) and
    the model's path, so features of other reviews or another model are never reused.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    key = {"dataset": dataset._fingerprint, "model": str(model.config.name_or_path), "precision": precision}
    if reuse and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as stored:
                meta = stored.metadata()
                if {k: meta.get(k) for k in key} == key:
                    return stored.get_tensor("features"), json.loads(meta["tokens"])
        except Exception as err:  # a damaged file (safetensors' own error type): computed again below
            warnings.warn(f"Cached features {path} are unreadable ({err}); computing them again.", stacklevel=2)
    features, tokens = extract_features(model, dataset, tokenizer, batch_size, precision)
    with atomic_path(path) as tmp:  # a crash mid-write leaves no half file to reuse
        save_file({"features": features.contiguous()}, str(tmp), metadata=key | {"tokens": json.dumps(tokens)})
    return features, tokens


def feature_dataset(features: torch.Tensor, labels) -> Dataset:
    """Cached features with their labels, as the Trainer expects."""
    return Dataset.from_dict({"features": features.numpy(), "labels": list(labels)}).with_format("torch")


def split_features(cfg: Config, model, tokenizer, splits, names, resume: bool, folder: Path) -> tuple[dict, dict, dict]:
    """The frozen model's features of each split in `names` (cached in `folder`), their tokens and seconds."""
    features, tokens, seconds = {}, {}, {}
    precision = resolve_precision(cfg.precision)
    for name in names:
        start = time.perf_counter()
        path = folder / f"features-{name}.safetensors"
        features[name], tokens[name] = cached_features(
            model, splits[name], tokenizer, cfg.eval_batch_size, path, resume, precision
        )
        seconds[name] = time.perf_counter() - start
    return features, tokens, seconds
