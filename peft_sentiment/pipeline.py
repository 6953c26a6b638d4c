"""One experiment, end to end: data, models, each variant trained, evaluated, recorded and saved.

The notebook narrates these steps; the CLI, bench/accuracy.py and bench/gpu_check.py call them here,
so a change to the pipeline is made once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from datasets import DatasetDict

from peft_sentiment import VARIANTS, catalog, data, hardware, inference, metrics, models, recording, train
from peft_sentiment.config import Config, make_config


class Prepared(NamedTuple):
    """A config's data and model, ready to build variants on."""

    splits: DatasetDict  # raw reviews: train, validation (carved from train), test
    model_path: str  # what from_pretrained loads (a short name resolved, built on first use)
    tokenizer: object
    tokenized: DatasetDict  # the splits as token ids, with their lengths before and after truncation


def prepare_data(cfg: Config, splits: DatasetDict | None = None) -> Prepared:
    """The subsets `cfg` asks for (or `splits`), its model resolved, its tokenizer, and the subsets tokenized."""
    if splits is None:
        splits = data.prepare_splits(cfg, data.load_imdb(cfg.data_dir))
    model_path = catalog.resolve_model(cfg.model_name, texts=splits["train"]["text"])
    catalog.check_max_length(model_path, cfg.max_length)
    tokenizer = catalog.load_tokenizer(model_path)
    tokenized = data.tokenize_reviews(
        splits, tokenizer, cfg.max_length, cfg.prompt_suffix, cfg.truncation, cfg.truncation_head_share
    )
    return Prepared(splits, model_path, tokenizer, tokenized)


def run_training(cfg: Config, variants=VARIANTS, *, resume: bool = False, command: str | None = None, splits=None) -> list[dict]:
    """The notebook's pipeline without the narration: data, model, each variant trained, recorded, saved.

    Runs as one process, or as several under `torchrun` / `accelerate launch` (DDP through the
    Trainer): every process trains on its share of each batch, only the first writes records and adapters.
    """
    from accelerate import PartialState

    # joins the process group when launched by torchrun/accelerate (gloo on CPUs); trivial otherwise
    state = PartialState(cpu=not torch.cuda.is_available())
    recording.check_writable(cfg.records_dir, cfg.adapter_dir_f32, cfg.adapter_dir_nf4, cfg.work_dir)
    if state.is_main_process:
        print(f"profile {cfg.profile}: {hardware.describe_precision(cfg.precision)}")
    with state.main_process_first():  # one process builds models and tokenization caches, the others reuse them
        _, model_path, tokenizer, tokenized = prepare_data(cfg, splits)
    lora_config, bnb_config = models.make_lora_config(cfg, model_path), models.make_bnb_config(cfg)
    records = []
    for variant in variants:
        model = models.build_variant(
            variant, model_path, tokenizer, seed=cfg.seed, lora_config=lora_config, bnb_config=bnb_config
        )
        _, record = train.train_variant(cfg, variant, model, tokenizer, tokenized, resume=resume)
        record |= {"command": command, "processes": state.num_processes}  # with several, tokens and times are rank 0's
        if state.is_main_process:
            recording.write_record(record, cfg.records_dir)
            if variant != "head_only":
                meta = inference.adapter_meta(cfg, variant, model_path, bnb_config if variant == "nf4_lora" else None)
                inference.save_adapter(model, tokenizer, cfg.adapter_dir(variant), meta, record)
            m = record["metrics"]
            print(f"{variant}: accuracy {m['accuracy']:.4f} (95% CI {m['accuracy_ci95'][0]:.4f}-{m['accuracy_ci95'][1]:.4f})")
        records.append(record)
    state.wait_for_everyone()
    return records


def evaluate_adapter(adapter: str, overrides: dict) -> dict:
    """Accuracy (with its 95% interval) and the other metrics of a saved adapter on its profile's test subset."""
    meta = inference.check_adapter_dir(adapter)
    cfg = make_config(meta["profile"], **overrides)
    test = data.prepare_splits(cfg, data.load_imdb(cfg.data_dir))["test"]
    model, tokenizer = inference.load_adapter(adapter)  # as trained: reproduces the record on every CPU
    out = inference.predict_reviews(
        model, tokenizer, test["text"], batch_size=cfg.eval_batch_size, progress=True, **inference.encoding(meta)
    )
    probs = inference.pos_probabilities(out)
    m = metrics.classification_metrics(test["label"], probs)
    ci = metrics.accuracy_interval(m["accuracy"], len(probs))
    return {
        "adapter": str(adapter),
        "profile": cfg.profile,
        "metrics": m | {"accuracy_ci95": list(ci), "test_reviews": len(probs)},
        "nf4_kernel": models.nf4_kernel(model),
        "device": recording.device_info(),
        "predictions": [round(p, 6) for p in probs],
    }
