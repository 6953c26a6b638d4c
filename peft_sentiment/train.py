"""Train and evaluate one variant with the Hugging Face Trainer, measuring time, tokens and memory."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)
from transformers.trainer_utils import get_last_checkpoint

from peft_sentiment.config import Config, config_to_dict
from peft_sentiment.data import class_names, describe_draw
from peft_sentiment.features import FeatureHead, feature_dataset, length_order, split_features
from peft_sentiment.hardware import autocast, describe_precision, on_gpu, resolve_precision
from peft_sentiment.metrics import accuracy_interval, compute_metrics, recorded_predictions, softmax
from peft_sentiment.models import check_trainable, count_parameters, layers_4bit, nf4_kernel
from peft_sentiment.recording import PeakMemory, provenance, read_json, return_freed_memory, write_json_atomic


class ReturnFreedMemory(TrainerCallback):
    """On a CPU, hand freed memory back to the OS after each step. Batches differ in length, so each step frees tensors
    of new sizes, which glibc's malloc keeps on its free lists rather than return: NF4 LoRA's RSS rose from 1.5 GB over
    8 steps to 4.6 GB over 156, on a step that needs the same each time. Trimmed, the RSS between steps stays at the
    model and data (925-970 MB over 5 NF4 steps, against 2.1-2.3 GB untrimmed), for about 3% of a step's time."""

    def on_step_end(self, args, state, control, **kwargs):
        return_freed_memory()


class EvaluateAtEnd(TrainerCallback):
    """A validation pass at the last step too: "every 1/n of the run" misses it when n does not divide the steps."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.eval_strategy == "steps" and state.global_step >= state.max_steps:
            control.should_evaluate = True


def make_training_args(cfg: Config, variant, **overrides) -> TrainingArguments:
    """The Trainer settings every variant shares, with `variant`'s learning rate, then `overrides`."""
    precision = resolve_precision(cfg.precision)
    settings = dict(
        output_dir=str(Path(cfg.work_dir) / variant.name),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.train_batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=getattr(cfg, variant.learning_rate),
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of the total steps
        lr_scheduler_type="linear",
        # Batches of similar length: dynamic padding then wastes little (IMDB lengths vary 10x).
        train_sampling_strategy="group_by_length",
        # A float below 1 is a fraction of the run's steps; 1.0 would mean "every step", so one pass is "epoch".
        eval_strategy="steps" if cfg.evals_per_run > 1 else "epoch",
        eval_steps=1 / cfg.evals_per_run if cfg.evals_per_run > 1 else None,
        logging_steps=0.05,
        # Checkpoints (weights, optimizer, scheduler, RNG and data-order state) so a crashed run resumes exactly.
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=1,
        # Mixed precision through the Trainer's autocast (on a CPU too); weights and optimizer state stay fp32.
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        include_num_input_tokens_seen="non_padding",  # the real tokens trained on, for tokens/s
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_pin_memory=on_gpu(),
        use_cpu=not on_gpu(),  # also what makes torchrun/accelerate on CPUs train as one DDP job (gloo)
    )
    if cfg.early_stopping_patience:  # `epochs` is a cap: keep the best validation pass's weights (make_trainer stops early)
        settings |= dict(save_steps=settings["eval_steps"] or cfg.checkpoint_every, load_best_model_at_end=True,
                         metric_for_best_model="loss", greater_is_better=False)  # fmt: skip
    return TrainingArguments(**settings | overrides)


def on_cached_features(cfg: Config, variant) -> bool:
    """True when the variant trains its head alone on features computed once (`train_head_on_features`)."""
    return variant.trains == "head" and cfg.head_on_cached_features


def head_training_args(cfg: Config, variant) -> TrainingArguments:
    """A head trained on cached features: its own epochs over one feature vector per review, shuffled, with nothing
    worth checkpointing."""
    return make_training_args(
        cfg, variant, num_train_epochs=cfg.head_epochs, train_sampling_strategy="random", save_strategy="no",
        include_num_input_tokens_seen="no",  # the frozen pass counted the tokens; the head sees one vector per review
        load_best_model_at_end=False,  # a convex fit that takes seconds: its epochs, not early stopping
    )  # fmt: skip


def predict_in_order(trainer: Trainer, ds) -> tuple:
    """`trainer.predict` on `ds`, run longest-first (least padding); returns it and the class probabilities in `ds` order."""
    order = length_order(ds["length"], longest_first=True)
    # Length-grouped evaluation would shuffle batches; after training, order is ours to choose.
    trainer.args.train_sampling_strategy = "sequential"
    prediction = trainer.predict(ds.select(order), metric_key_prefix="test")
    probabilities = softmax(prediction.predictions)
    probabilities[order] = probabilities.copy()
    return prediction, probabilities


def make_collator(tokenizer) -> DataCollatorWithPadding:
    """Dynamic padding: each batch to its own longest review (to a multiple of 8 on GPUs, for tensor cores)."""
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if on_gpu() else None)


def make_trainer(model, tokenizer, args: TrainingArguments, train_ds, eval_ds, patience: int | None = None) -> Trainer:
    """The Trainer of every variant that trains through the model (head-only on cached features has its own); with
    `patience` (the config's early_stopping_patience), it stops once that many validation passes bring no better loss."""
    check_trainable(model)
    stop = [EarlyStoppingCallback(early_stopping_patience=patience)] if patience else []
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=make_collator(tokenizer),  # pads each batch to its own longest review
        compute_metrics=compute_metrics,  # accuracy, macro F1 (and ROC-AUC for two classes) on each validation pass
        callbacks=[EvaluateAtEnd(), *stop],
    )


def describe_budget(cfg: Config, train_size: int) -> str:
    """What a trained variant's run will cost at most, in steps and epochs, stated before it starts."""
    steps = math.ceil(math.ceil(train_size / cfg.train_batch_size) * cfg.epochs)
    if not cfg.early_stopping_patience:
        return f"{cfg.epochs:g} epoch(s), {steps:,} steps of {cfg.train_batch_size}"
    every = max(1, round(steps / cfg.evals_per_run))
    return (
        f"until validation loss stops improving ({cfg.early_stopping_patience} passes without a better one; a pass every "
        f"{every:,} steps), at most {cfg.epochs:g} epochs = {steps:,} steps of {cfg.train_batch_size}; the best pass's weights are kept"
    )


def activation_cost(model, batch: dict) -> dict:
    """What one training step of `model` on `batch` keeps for backward, and its seconds.

    Counts the bytes of the tensors autograd saves during the forward pass (each storage once, weights
    excluded: they are in memory anyway). With gradient checkpointing on, only each block's input is
    saved and the block runs again during backward: less memory, more time. Gradients are cleared after.
    """
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    forward = time.perf_counter() - start
    loss.backward()
    step = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return {"saved_bytes": sum(saved.values()), "forward_seconds": forward, "step_seconds": step}


def memory_split(models: dict, batch: dict, precision: str = "fp32") -> list[dict]:
    """Per model (label -> model) and gradient checkpointing off, then on: its weights' bytes and `activation_cost`'s
    bytes and seconds for one training step on `batch` (after a warm-up step), under the Trainer's autocast for the
    resolved `precision`.

    QLoRA turns on 4-bit storage and checkpointing together; measured apart, each gets credit only for its own saving.
    Each model is left with checkpointing as it was.
    """
    rows = []
    for label, model in models.items():
        if on_gpu() and not layers_4bit(model):  # a 4-bit model loads onto the GPU; an fp32 one is moved there
            model.to("cuda")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        was_on = model.is_activation_checkpointing
        model.config.use_cache = False  # a generation cache is useless here, and incompatible with checkpointing
        for on in (False, True):
            if on:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.activation_checkpointing_disable()
            with autocast(precision, model.device.type):
                activation_cost(model, batch)  # warm-up: the first step pays one-time setup costs
                cost = activation_cost(model, batch)
            rows.append({"variant": label, "checkpointing": on, "weights_bytes": model.get_memory_footprint(), **cost})
        if not was_on:
            model.activation_checkpointing_disable()
    return rows


def last_checkpoint(folder) -> str | None:
    """The newest *complete* checkpoint in `folder` (`get_last_checkpoint`), or None.

    The Trainer writes trainer_state.json last: a folder without it is a save a crash cut short, from which
    resuming would fail, so it is removed and the one before it taken.
    """
    while (checkpoint := get_last_checkpoint(folder) if Path(folder).is_dir() else None) is not None:
        if (Path(checkpoint) / "trainer_state.json").is_file():
            return checkpoint
        shutil.rmtree(checkpoint)
    return None


RUN_SETTINGS_FILE = "run_settings.json"  # beside a run's checkpoints: the settings they were trained with
OUTPUT_FIELDS = ("save_dir", "records_dir", "work_dir")  # where results go, not what they are


def run_settings(cfg: Config) -> dict:
    """What a run's checkpoints depend on: the config less its output folders, with the precision it resolved to here."""
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in OUTPUT_FIELDS}
    return settings | {"precision": resolve_precision(cfg.precision)}


def prepare_output_dir(trainer: Trainer, cfg: Config, resume: bool) -> str | None:
    """The checkpoint to resume from (None: start afresh), after checking that it belongs to `cfg`.

    Resuming another config's checkpoint would continue that run, its learning-rate schedule included, and
    record it as this one, so it is refused. A fresh start removes checkpoints left by an earlier run: the
    Trainer's rotation keeps the highest step number, so they would outlive this run's own.
    """
    folder = Path(trainer.args.output_dir)
    stamp, settings = folder / RUN_SETTINGS_FILE, run_settings(cfg)
    checkpoint = last_checkpoint(folder) if resume else None
    if checkpoint and stamp.is_file():  # checkpoints from before the stamp existed cannot be checked
        stamped = read_json(stamp)
        changed = sorted(k for k in settings.keys() | stamped.keys() if settings.get(k) != stamped.get(k))
        if changed:
            differences = ", ".join(f"{k}: {stamped.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
            raise ValueError(
                f"{folder} holds checkpoints of a run with other settings ({differences}). Resume with the settings it "
                f"was started with, or run without resume to start over (its checkpoints are then removed)."
            )
    if not resume:
        old = sorted(folder.glob("checkpoint-*"))
        for path in old:
            shutil.rmtree(path, ignore_errors=True)  # several processes (DDP) may clear it at once
        if old:
            print(f"fresh start: removed {len(old)} checkpoint(s) of an earlier run in {folder} (resume would continue it)")
    write_json_atomic(settings, stamp)
    return checkpoint


def fit(trainer: Trainer, cfg: Config, resume: bool = False) -> tuple:
    """`trainer.train()`, from the last checkpoint of this same config when `resume`.

    Returns (train output, PeakMemory with the wall seconds, the checkpoint resumed from or None, tokens
    trained on in this call: a resumed run's time and tokens cover the resumed part only).
    """
    checkpoint = prepare_output_dir(trainer, cfg, resume)
    tokens_before = read_json(Path(checkpoint) / "trainer_state.json").get("num_input_tokens_seen", 0) if checkpoint else 0
    if not on_gpu():  # the CUDA allocator reuses its cache; glibc's keeps what it cannot reuse (ReturnFreedMemory)
        trainer.add_callback(ReturnFreedMemory)
    with PeakMemory() as training:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    return output, training, checkpoint, trainer.state.num_input_tokens_seen - tokens_before


def validation_tokens(trainer: Trainer, val_ds) -> int:
    """Real tokens of the validation passes inside training (each a pass over `val_ds`)."""
    passes = sum("eval_loss" in entry for entry in trainer.state.log_history)
    return passes * int(sum(val_ds["length"])) if passes else 0


def train_and_evaluate(trainer: Trainer, cfg: Config, test_ds, resume: bool = False) -> dict:
    """Train (from the last checkpoint when `resume`), then evaluate on `test_ds`; timings, tokens, memory."""
    train_output, training, checkpoint, train_tokens = fit(trainer, cfg, resume)
    with PeakMemory() as evaluation:
        prediction, probabilities = predict_in_order(trainer, test_ds)
    tokens = {
        "train": train_tokens,
        "validation": validation_tokens(trainer, trainer.eval_dataset),
        "eval": sum(test_ds["length"]),
    }
    result = measured_result(trainer, train_output, prediction, probabilities, {"train": training, "eval": evaluation}, tokens)
    return result | {"resumed_from": checkpoint}


def fit_head(cfg: Config, variant, model, features: dict, labels: dict, callbacks=()) -> tuple:
    """Train the model's head on cached features (train) with validation passes; returns (trainer, train output)."""
    args = head_training_args(cfg, variant)
    head = FeatureHead(model.score)  # shares the weights: training it trains the model's head
    trainer = Trainer(
        model=head,
        args=args,
        train_dataset=feature_dataset(features["train"], labels["train"]),
        eval_dataset=feature_dataset(features["validation"], labels["validation"]),
        data_collator=default_data_collator,
        compute_metrics=compute_metrics,
        callbacks=[EvaluateAtEnd(), *callbacks],
    )
    return trainer, trainer.train()


def train_head_on_features(cfg: Config, variant, model, tokenizer, splits, resume: bool = False) -> tuple[Trainer, dict]:
    """Head-only training that pays the frozen forward pass once per review instead of once per epoch.

    The features are saved in the work folder as they are computed; with `resume`, a rerun after a
    crash reuses them and pays only for what is missing.
    """
    folder = Path(cfg.work_dir) / variant.name
    model.to(make_training_args(cfg, variant).device)  # the Trainer would move only the head; the frozen pass needs it too
    labels = {name: splits[name]["label"] for name in ("train", "validation", "test")}
    with PeakMemory() as training:
        features, tokens, seconds = split_features(cfg, model, tokenizer, splits, ("train", "validation"), resume, folder)
        trainer, train_output = fit_head(cfg, variant, model, features, labels)
    with PeakMemory() as evaluation:
        test, test_tokens, _ = split_features(cfg, model, tokenizer, splits, ("test",), resume, folder)
        prediction = trainer.predict(feature_dataset(test["test"], labels["test"]), metric_key_prefix="test")
    tokens = {"train": tokens["train"]["real"], "validation": tokens["validation"]["real"], "eval": test_tokens["test"]["real"]}
    phases = {"train": training, "eval": evaluation}
    result = measured_result(trainer, train_output, prediction, softmax(prediction.predictions), phases, tokens)
    return trainer, result | {"feature_seconds": sum(seconds.values()), "head_epochs": cfg.head_epochs}


def measured_result(trainer, train_output, prediction, probabilities, phases: dict, tokens: dict) -> dict:
    """The measured part of a record: loss, times, tokens, peak memory, test metrics with their 95% interval.

    `phases` holds the PeakMemory of training ("train") and of the test pass ("eval"): each its seconds and
    peak; `tokens` the real tokens of training, of its validation passes and of the test pass.
    """
    metrics = {k.removeprefix("test_"): v for k, v in prediction.metrics.items() if not k.endswith(("runtime", "per_second"))}
    metrics.pop("loss", None)
    n_test = len(probabilities)
    return {
        "metrics": {**metrics, "accuracy_ci95": list(accuracy_interval(metrics["accuracy"], n_test)), "test_reviews": n_test},
        "train_loss": train_output.training_loss,
        "train_seconds": phases["train"].seconds,
        "eval_seconds": phases["eval"].seconds,
        **{f"{phase}_tokens": {"real": int(n)} for phase, n in tokens.items()},
        "train_tokens_per_s": tokens["train"] / phases["train"].seconds,
        "eval_tokens_per_s": tokens["eval"] / phases["eval"].seconds,
        "peak_memory_bytes": {name: phase.peak_bytes for name, phase in phases.items()},
        "train_memory_rise_bytes": phases["train"].rise_bytes,
        "memory_measure": phases["train"].describe(),
        "log_history": trainer.state.log_history,
        "predictions": recorded_predictions(probabilities),
    }


def train_variant(cfg: Config, variant, model, tokenizer, splits, resume: bool = False, trainer=None) -> tuple:
    """Train `model` as `variant` declares on splits["train"], evaluate on splits["test"]; returns (trainer, record).

    `trainer`: one built around `model` (e.g. in view in the notebook); None = `make_trainer`'s.
    With `resume`, training continues from its last checkpoint in the work folder; head-only on
    cached features reuses the features already saved there (its head epochs take seconds: redone).
    """
    if on_cached_features(cfg, variant):
        trainer, result = train_head_on_features(cfg, variant, model, tokenizer, splits, resume=resume)
    else:
        if trainer is None:
            args = make_training_args(cfg, variant)
            trainer = make_trainer(model, tokenizer, args, splits["train"], splits["validation"], cfg.early_stopping_patience)
        check_trainable(trainer.model)
        result = train_and_evaluate(trainer, cfg, splits["test"], resume=resume)
    config = config_to_dict(cfg)
    record = {
        "variant": variant.name,
        "profile": cfg.profile,
        "config": config,
        "model": cfg.model_name,
        "dataset": config["dataset"],
        "labels": class_names(splits["test"]),
        "test_draw": describe_draw(cfg),
        "precision": resolve_precision(cfg.precision),
        "precision_chosen": describe_precision(cfg.precision),  # what `auto` picked on this machine, and why
        "nf4_kernel": nf4_kernel(model),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),  # sdpa, eager, ...
        **provenance(),
        "params": count_parameters(model),
        "model_bytes": int(model.get_memory_footprint()),
        **result,
        # what the analysis plots need beside the predictions (plots.plot_analysis)
        "test_labels": [int(x) for x in splits["test"]["label"]],
        "test_n_tokens": [int(x) for x in splits["test"]["n_tokens"]],
    }
    return trainer, record
