"""One experiment, end to end: data, models, each variant trained, evaluated, recorded and saved.

The notebook narrates these steps; the CLI, bench/accuracy.py and bench/gpu_check.py call them here,
so a change to the experiment is made once.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from datasets import DatasetDict

from peft_sentiment import catalog, data, hardware, inference, metrics, models, recording, train
from peft_sentiment.config import Config, make_config
from peft_sentiment.variants import get_variant, variants_to_run


class Prepared(NamedTuple):
    """A config's data and model, ready to build variants on."""

    splits: DatasetDict  # raw texts: train, validation, test
    model_path: str  # what from_pretrained loads (a short name resolved, built on first use)
    tokenizer: object
    tokenized: DatasetDict  # the splits as token ids, with their lengths before and after truncation
    labels: list[str]  # the class names, in index order


def prepare_data(cfg: Config, splits: DatasetDict | None = None) -> Prepared:
    """The subsets `cfg` asks for (or `splits`), checked; its model resolved, its tokenizer, and the subsets tokenized."""
    if splits is None:
        splits = data.prepare_splits(cfg, data.load_splits(cfg))  # bad data stops here, before any model loads
    model_path = catalog.resolve_model(cfg.model_name, texts=splits["train"]["text"])
    catalog.check_max_length(model_path, cfg.max_length)
    tokenizer = catalog.load_tokenizer(model_path)
    tokenized = data.tokenize_reviews(
        splits, tokenizer, cfg.max_length, cfg.prompt_suffix, cfg.truncation, cfg.truncation_head_share
    )
    return Prepared(splits, model_path, tokenizer, tokenized, data.class_names(splits))


def save_dir(cfg: Config, variant) -> Path | None:
    """Where `variant`'s trained adapter or model goes (None: it saves none)."""
    return None if variant.save_dir is None else Path(cfg.save_dir) / variant.save_dir


def save_variant(cfg: Config, variant, model, prepared: Prepared, record: dict | None = None) -> Path | None:
    """Save a trained `model` where `variant` saves (adapter or whole model), with what reloading it needs."""
    folder = save_dir(cfg, variant)
    if folder is None:
        return None
    bnb_config = variant.quantization(cfg) if variant.quantization else None
    meta = inference.trained_meta(cfg, variant, prepared.model_path, prepared.labels, bnb_config)
    return inference.save_trained(model, prepared.tokenizer, folder, meta, record)


def run_training(cfg: Config, variants=None, *, resume: bool = False, command: str | None = None, splits=None) -> list[dict]:
    """The notebook's experiment without the narration: data, model, each variant trained, recorded, saved.

    `variants` names the variants to run; None = the config's (`cfg.variants`: all of them unless the profile says).

    Runs as one process, or as several under `torchrun` / `accelerate launch` (DDP through the
    Trainer): every process trains on its share of each batch, only the first writes records and models.
    """
    from accelerate import PartialState

    # unknown names fail before any work; an empty list runs none (bench/accuracy.py --resume with all of them recorded)
    chosen = list(variants_to_run(cfg).values()) if variants is None else [get_variant(name) for name in variants]
    # joins the process group when launched by torchrun/accelerate (gloo on CPUs); trivial otherwise
    state = PartialState(cpu=not hardware.on_gpu())
    recording.check_writable(cfg.records_dir, cfg.save_dir, cfg.work_dir)
    if state.is_main_process:
        print(f"profile {cfg.profile}: {hardware.describe_precision(cfg.precision)}")
    with state.main_process_first():  # one process builds models and tokenization caches, the others reuse them
        prepared = prepare_data(cfg, splits)
    records = []
    for variant in chosen:
        if state.is_main_process and not train.on_cached_features(cfg, variant):
            print(f"{variant.label}: trains {train.describe_budget(cfg, len(prepared.splits['train']))}")
        model = models.build_model(cfg, variant, prepared.model_path, prepared.tokenizer, prepared.labels)
        _, record = train.train_variant(cfg, variant, model, prepared.tokenizer, prepared.tokenized, resume=resume)
        record |= {"command": command, "processes": state.num_processes}  # with several, tokens and times are rank 0's
        if state.is_main_process:
            recording.write_record(record, cfg.records_dir)
            save_variant(cfg, variant, model, prepared, record)
            m = record["metrics"]
            low, high = m["accuracy_ci95"]
            print(f"{variant.label}: accuracy {m['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f})")
        records.append(record)
    state.wait_for_everyone()
    return records


def evaluate_adapter(adapter: str, overrides: dict, precision: str = "auto") -> dict:
    """Accuracy (with its 95% interval) and the other metrics of a saved adapter or model on its profile's test subset,
    computed in `precision` (inference.encoding: "auto", the machine's native one, or "recorded")."""
    meta = inference.check_adapter_dir(adapter)
    cfg = make_config(meta["profile"], **overrides)
    test = data.prepare_splits(cfg, data.load_splits(cfg))["test"]
    if data.class_names(test) != meta["labels"]:
        raise ValueError(f"{adapter} classifies {meta['labels']}, but this test split has {data.class_names(test)}.")
    model, tokenizer = inference.load_adapter(adapter)  # the packed NF4 kernel off: the record's matmuls
    out = inference.predict_reviews(
        model, tokenizer, test["text"], batch_size=cfg.eval_batch_size, progress=True, **inference.encoding(meta, precision)
    )
    probabilities = np.array([o["probabilities"] for o in out])
    m = metrics.classification_metrics(test["label"], probabilities)
    return {
        "adapter": str(adapter),
        "profile": cfg.profile,
        "metrics": m | {"accuracy_ci95": list(metrics.accuracy_interval(m["accuracy"], len(out))), "test_reviews": len(out)},
        "nf4_kernel": models.nf4_kernel(model),
        "precision": inference.describe_prediction_precision(meta, precision),
        "device": hardware.device_info(),
        "predictions": metrics.recorded_predictions(probabilities),
    }
