"""Validation runs, shared by the studies (truncation.py, nf4.py, curve.py, precision.py): a variant trained on the
profile's training subset under named settings and scored on validation reviews carved from the training reviews
the profile does not use (never the test set); resuming a record; pairing records on the same reviews."""

from __future__ import annotations

import copy
import dataclasses
import shlex
import time
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict
from harness import what_else_ran

from peft_sentiment import data, features, hardware, metrics, models, recording, train
from peft_sentiment.config import config_to_dict, make_config, parse_overrides
from peft_sentiment.experiment import prepare_data
from peft_sentiment.variants import get_variant

# name -> what the setting changes in the profile ("head" is the reference of the comparison)
SETTINGS = {
    "head": {"truncation": "head"},
    "tail": {"truncation": "tail"},
    "head+tail": {"truncation": "head+tail"},
    "head, no prompt suffix": {"truncation": "head", "prompt_suffix": ""},
}


def carve_validation(cfg, n: int) -> DatasetDict:
    """The profile's training subset, and `n` validation reviews from the training reviews it leaves unused."""
    raw = data.load_splits(cfg)
    splits = data.prepare_splits(cfg, raw)
    used = set(splits["train"]["text"]) | set(splits["validation"]["text"])
    rest = raw["train"].filter(lambda batch: [t not in used for t in batch["text"]], batched=True)
    validation = data.take_stratified_subset(rest, n, cfg.seed + 1)
    return DatasetDict(train=splits["train"], validation=validation, test=validation.select(range(0)))


def frozen_features(model, tokenizer, tokenized: dict, batch_size: int) -> dict:
    """Per setting and split, the frozen model's features: each distinct token sequence passed through once."""
    splits = ("train", "validation")
    unique = list(dict.fromkeys(tuple(ids) for t in tokenized.values() for s in splits for ids in t[s]["input_ids"]))
    table = Dataset.from_dict(
        {
            "input_ids": [list(u) for u in unique],
            "attention_mask": [[1] * len(u) for u in unique],
            "length": list(map(len, unique)),
        }
    )
    computed, _ = features.extract_features(model, table, tokenizer, batch_size)
    row = {u: i for i, u in enumerate(unique)}
    return {
        name: {split: computed[[row[tuple(ids)] for ids in t[split]["input_ids"]]] for split in splits}
        for name, t in tokenized.items()
    }


def head_probabilities(cfg, variant, model, features_by_setting: dict, labels: dict) -> dict:
    """Per setting: a fresh head trained on its features (the profile's recipe), class probabilities on validation."""
    initial = copy.deepcopy(model.score.state_dict())
    probabilities = {}
    for name, feats in features_by_setting.items():
        model.score.load_state_dict(initial)
        trainer, _ = train.fit_head(cfg, variant, model, feats, labels)
        prediction = trainer.predict(features.feature_dataset(feats["validation"], labels["validation"]))
        probabilities[name] = metrics.softmax(prediction.predictions)
    return probabilities


def trainer_probabilities(cfg, variant, tokenized: dict, work_dirs: dict, prepared, resume: bool = False):
    """Per setting, in turn: (name, class probabilities on validation) of the variant trained as the profile trains it."""
    for name, t in tokenized.items():
        setting_cfg = dataclasses.replace(cfg, work_dir=str(work_dirs[name]), evals_per_run=1)
        model = models.build_model(setting_cfg, variant, prepared.model_path, prepared.tokenizer, prepared.labels)
        # No validation pass during training: the one after it gives the figures (a pass of 1,000 reviews is ~10 min here).
        args = train.make_training_args(setting_cfg, variant, eval_strategy="no")
        trainer = train.make_trainer(model, prepared.tokenizer, args, t["train"], t["validation"])
        train.fit(trainer, setting_cfg, resume)
        _, probabilities = train.predict_in_order(trainer, t["validation"])
        yield name, probabilities


def scores(labels, probabilities, cut) -> dict:
    """Accuracy with its Wilson 95% interval: overall, on the cut reviews, on the whole ones."""
    correct = metrics.predicted_labels(probabilities) == np.asarray(labels)
    out = {}
    for part, mask in (("all", np.ones_like(cut)), ("truncated", cut), ("whole", ~cut)):
        accuracy = float(correct[mask].mean())
        out[part] = {
            "accuracy": accuracy,
            "ci95": list(metrics.accuracy_interval(accuracy, int(mask.sum()))),
            "n": int(mask.sum()),
        }
    return out


def resumable(path: Path, record: dict) -> dict | None:
    """The record at `path` if it was made with `record`'s variant, config, precision and validation reviews, else None."""
    if not path.is_file():
        return None
    previous = recording.read_json(path)
    # "precision" too: `auto` resolves to another precision on another machine
    if any(previous.get(key) != record[key] for key in ("variant", "config", "precision", "validation", "validation_labels")):
        print(f"{path} was made with another config, precision or validation set: every setting runs again")
        return None
    return previous


def run(args, argv, path: Path, script: str) -> dict:
    """Score each setting on the carved validation set; the record at `path` is rewritten as each one finishes."""
    started = time.perf_counter()
    cfg = make_config(args.profile, **parse_overrides(args.set))
    splits = carve_validation(cfg, args.val_size)
    labels = {split: splits[split]["label"] for split in ("train", "validation")}
    # the truncated group: reviews longer than the max length, which every setting cuts (the same reviews for all)
    reference = prepare_data(cfg, splits)
    cut = np.asarray(reference.tokenized["validation"]["n_tokens"]) > cfg.max_length
    record = {
        "variant": args.variant,
        "profile": cfg.profile,
        "command": "python " + shlex.join([script, *argv]),
        "evaluated_on": "validation",
        "config": config_to_dict(cfg),
        "precision": hardware.describe_precision(cfg.precision),
        "validation": {
            "reviews": len(splits["validation"]),
            "source": "training reviews the profile does not use",
            "seed": cfg.seed + 1,
        },
        "validation_labels": list(map(int, labels["validation"])),
        "validation_truncated": list(map(bool, cut)),
        "settings": {},
        "predictions": {},
        **recording.provenance(),
        "what_else_ran": [],  # sampled after each setting: whether the run had the cores to itself
    }
    previous = resumable(path, record) if args.resume else None
    kept = [name for name in args.settings if previous and name in previous["settings"]]
    for name in kept:
        record["settings"][name], record["predictions"][name] = previous["settings"][name], previous["predictions"][name]
    record["what_else_ran"] = previous.get("what_else_ran", []) if previous else []
    seconds_before = previous["total_seconds"] if previous else 0.0
    todo = [name for name in args.settings if name not in kept]
    print(f"settings to run: {todo}; kept from {path}: {kept}")
    if not todo:
        return previous
    # Checkpoints are resumed only with the record they belong to (train.fit checks their settings too).
    work_dirs = {name: Path(cfg.work_dir) / "truncation" / name for name in todo}

    def save() -> None:
        record["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record["total_seconds"] = seconds_before + time.perf_counter() - started
        recording.write_json_atomic(record, path)

    save()  # at once, so that a run stopped during its first setting can resume from that setting's checkpoint
    tokenized = {}
    for name in todo:
        setting_cfg = dataclasses.replace(cfg, **SETTINGS[name])
        tokenized[name] = (reference if setting_cfg == cfg else prepare_data(setting_cfg, splits)).tokenized
    variant = get_variant(args.variant)
    if variant.trains == "head":  # the head alone: each distinct review's frozen features computed once for all settings
        model = models.build_model(cfg, variant, reference.model_path, reference.tokenizer, reference.labels)
        features_by_setting = frozen_features(model, reference.tokenizer, tokenized, cfg.eval_batch_size)
        results = head_probabilities(cfg, variant, model, features_by_setting, labels).items()
    else:
        results = trainer_probabilities(cfg, variant, tokenized, work_dirs, reference, resume=previous is not None)
    for name, probabilities in results:
        record["settings"][name] = {"changes": SETTINGS[name], **scores(labels["validation"], probabilities, cut)}
        record["predictions"][name] = metrics.recorded_predictions(probabilities)
        record["what_else_ran"].append({"after_setting": name, **what_else_ran()})
        save()
    return record


def machine(record: dict) -> str:
    """The record's machine and precision (records from before the precision field name the CPU's bf16 features instead)."""
    device, precision = record["device"], record.get("precision", "precision " + record["config"]["precision"])
    if device["type"] != "cpu":
        return f"{device['name']} x{device['count']}, {precision}"
    bf16 = [flag for flag, present in device["features"].items() if present and "bf16" in flag]
    flags = f"with {', '.join(bf16)}" if bf16 else "without native bf16"
    return f"{device['name']}, {device['cores']} cores {flags}, {precision}"


# what decides which training reviews are carved out for validation and which of them are cut
SAME_REVIEWS = ("model_name", "data_dir", "train_size", "val_size", "seed", "max_length", "prompt_suffix")


def same_reviews(a: dict, b: dict) -> bool:
    """True when two records scored the very same validation reviews, cut the same way (carve, labels, tokenizer, length)."""
    same_carve = a["validation"] == b["validation"] and a["validation_labels"] == b["validation_labels"]
    return same_carve and all(a["config"][k] == b["config"][k] for k in SAME_REVIEWS)
