"""Train and evaluate one variant with the Hugging Face Trainer, measuring time, tokens and memory."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from transformers import (
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from peft_sentiment.config import Config, check_variant, config_to_dict
from peft_sentiment.features import FeatureHead, feature_dataset, length_order, split_features
from peft_sentiment.hardware import resolve_precision
from peft_sentiment.metrics import accuracy_interval, compute_metrics, positive_probabilities
from peft_sentiment.models import check_trainable, count_parameters, nf4_kernel
from peft_sentiment.recording import device_info, library_versions, read_json, write_json_atomic


class TokenCounter:
    """Counts real and padded tokens the model sees, split into training (grad on) and evaluation.

    A forward pre-hook on the model is exact whatever the Trainer does between steps (validation
    passes inside train(), gradient accumulation), so throughput is measured, not estimated. With
    `keep_shapes`, `calls` also keeps each forward call's real row lengths and padded length (for FLOPs).
    """

    def __init__(self, model, keep_shapes: bool = False):
        self.keep_shapes = keep_shapes
        self.reset()
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def reset(self) -> None:
        self.tokens = {"train": {"real": 0, "padded": 0}, "eval": {"real": 0, "padded": 0}}
        self.calls = []

    def _count(self, module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None:
            return
        phase = self.tokens["train" if torch.is_grad_enabled() else "eval"]
        phase["real"] += int(mask.sum())
        phase["padded"] += int(mask.numel())
        if self.keep_shapes:
            self.calls.append({"lengths": mask.sum(1).tolist(), "padded": int(mask.shape[1])})

    def remove(self) -> None:
        self._handle.remove()


class PeakMemory:
    """Peak memory inside a `with` block (CUDA allocator peak on a GPU, sampled process RSS on a CPU), and its seconds.

    `read`, a function returning bytes, is sampled instead, on any device (bench/memory: malloc's live bytes).
    `start_bytes` is the value on entry, which the peak includes: `peak_bytes - start_bytes` is what the
    block added, never negative (sampling starts after entry, when the block may already have freed memory).
    """

    def __init__(self, interval_s: float = 0.05, read=None):
        self.interval_s, self.read = interval_s, read
        self.start_bytes = self.peak_bytes = 0
        self.seconds = 0.0  # the block's wall time
        self._cuda = read is None and torch.cuda.is_available()

    def __enter__(self):
        self._start = time.perf_counter()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
            return self
        if self.read is None:
            process = psutil.Process()
            self.read = lambda: process.memory_info().rss
        self.start_bytes = self.peak_bytes = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, self.read())
            if self._stop.wait(self.interval_s):
                return

    def current_peak(self) -> int:
        """The peak so far, inside the block."""
        return torch.cuda.max_memory_allocated() if self._cuda else self.peak_bytes

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        if self._cuda:
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        return False


class TrainClock(TrainerCallback):
    """Stamps every validation result in `log_history` with the training seconds and peak memory so far.

    The seconds count optimizer steps only, not validation passes or checkpoint saves, so each
    validation accuracy can be plotted against what training had cost by then (report.validation_curves).
    `offset` is work paid before the first step (head-only: the frozen forward pass). On resume the
    clock continues from the last stamp, which the checkpoint's log_history keeps (the steps between
    that stamp and the checkpoint go uncounted: resumed curves undercount a little).
    """

    def __init__(self, memory: PeakMemory, offset: float = 0.0):
        self.memory, self.offset = memory, offset
        self.seconds = offset

    def on_train_begin(self, args, state, control, **kwargs):
        stamps = [h["train_seconds"] for h in state.log_history if "train_seconds" in h]
        self.seconds = stamps[-1] if stamps else self.offset

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._step_start

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        last = state.log_history[-1]  # Trainer.evaluate logs its metrics just before this event
        if "eval_accuracy" in last:
            last |= {"train_seconds": self.seconds, "peak_memory_bytes": self.memory.current_peak()}


class EvaluateAtEnd(TrainerCallback):
    """A validation pass at the last step too: "every 1/n of the run" misses it when n does not divide the steps."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.eval_strategy == "steps" and state.global_step >= state.max_steps:
            control.should_evaluate = True


def make_training_args(cfg: Config, variant: str, **overrides) -> TrainingArguments:
    """The Trainer settings every variant shares; only the learning rate differs by variant."""
    check_variant(variant)
    on_gpu = torch.cuda.is_available()
    precision = resolve_precision(cfg.precision)
    settings = dict(
        output_dir=str(Path(cfg.work_dir) / variant),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.train_batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.learning_rate(variant),
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of the total steps
        lr_scheduler_type="linear",
        # Batches of similar length: dynamic padding then wastes little (IMDB lengths vary 10x).
        train_sampling_strategy="group_by_length",
        # A float below 1 is a fraction of the run's steps; 1.0 would mean "every step", so one pass is "epoch".
        eval_strategy="steps" if cfg.evals_per_run > 1 else "epoch",
        eval_steps=1 / cfg.evals_per_run if cfg.evals_per_run > 1 else None,
        logging_steps=0.05,
        # Checkpoints (adapter, optimizer, scheduler, RNG and data-order state) so a crashed run resumes exactly.
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=1,
        # Mixed precision through the Trainer's autocast (on a CPU too); weights and optimizer state stay fp32.
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=True,
        dataloader_pin_memory=on_gpu,
        use_cpu=not on_gpu,  # also what makes torchrun/accelerate on CPUs train as one DDP job (gloo)
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def predict_in_order(trainer: Trainer, ds) -> tuple:
    """`trainer.predict` on `ds`, run longest-first (least padding), with P(pos) per review in `ds` order."""
    order = length_order(ds["length"], longest_first=True)
    # Length-grouped evaluation would shuffle batches; after training, order is ours to choose.
    trainer.args.train_sampling_strategy = "sequential"
    prediction = trainer.predict(ds.select(order), metric_key_prefix="test")
    probabilities = np.empty(len(ds))
    probabilities[order] = positive_probabilities(prediction.predictions)
    return prediction, [round(float(p), 6) for p in probabilities]


def make_collator(tokenizer) -> DataCollatorWithPadding:
    """Dynamic padding: each batch to its own longest review (to a multiple of 8 on GPUs, for tensor cores)."""
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)


def make_trainer(model, tokenizer, args: TrainingArguments, train_ds, eval_ds) -> Trainer:
    """The Trainer every LoRA run uses (the notebook builds the same one in view)."""
    check_trainable(model)
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=make_collator(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[EvaluateAtEnd()],
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


CHECKPOINT_PARTS = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin", "pytorch_model.bin")


def last_checkpoint(trainer: Trainer) -> str | None:
    """The newest *complete* checkpoint in the trainer's output folder, or None.

    A run killed while saving leaves a checkpoint folder with some files missing; resuming from it
    fails, so such a folder is passed over for the one before it.
    """
    folder = Path(trainer.args.output_dir)
    steps = {
        int(p.name.removeprefix("checkpoint-")): p
        for p in folder.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit()
    }
    for step in sorted(steps, reverse=True):
        checkpoint = steps[step]
        if all((checkpoint / part).is_file() for part in CHECKPOINT_PARTS) and any(
            (checkpoint / w).is_file() for w in WEIGHT_FILES
        ):
            return str(checkpoint)
    return None


RUN_SETTINGS_FILE = "run_settings.json"  # beside a run's checkpoints: the settings they were trained with
OUTPUT_FIELDS = ("adapter_dir_f32", "adapter_dir_nf4", "records_dir", "work_dir")  # where results go, not what they are


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
    stamp = folder / RUN_SETTINGS_FILE
    settings = run_settings(cfg)
    checkpoint = last_checkpoint(trainer) if resume else None
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
    """`trainer.train()` (from the last checkpoint of this same config when `resume`), its validation passes stamped by TrainClock.

    Returns (train output, PeakMemory with the wall seconds, the checkpoint resumed from or None).
    """
    checkpoint = prepare_output_dir(trainer, cfg, resume)
    with PeakMemory() as training:
        trainer.add_callback(TrainClock(training))
        output = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.pop_callback(TrainClock)
    return output, training, checkpoint


def train_and_evaluate(trainer: Trainer, cfg: Config, test_ds, resume: bool = False) -> dict:
    """Train (from the last checkpoint when `resume`), then evaluate on `test_ds`; timings, tokens, memory."""
    counter = TokenCounter(trainer.model)
    train_output, training, checkpoint = fit(trainer, cfg, resume)
    # Validation passes inside train() cost time too; they are reported, and excluded from train tokens.
    train_tokens, val_tokens = counter.tokens["train"], counter.tokens["eval"]
    counter.reset()
    with PeakMemory() as evaluation:
        prediction, probabilities = predict_in_order(trainer, test_ds)
    counter.remove()
    tokens = {"train": train_tokens, "validation": val_tokens, "eval": counter.tokens["eval"]}
    result = measured_result(trainer, train_output, prediction, probabilities, {"train": training, "eval": evaluation}, tokens)
    return result | {"resumed_from": checkpoint}  # then time and tokens cover only the resumed part


def fit_head(cfg: Config, model, features: dict, labels: dict, memory: PeakMemory, clock_offset: float = 0.0):
    """Train the model's head on cached features (train) with validation passes; returns (trainer, train output)."""
    args = make_training_args(
        cfg, "head_only", num_train_epochs=cfg.head_epochs, train_sampling_strategy="random", save_strategy="no"
    )
    head = FeatureHead(model.score)  # shares the weights: training it trains the model's head
    trainer = Trainer(
        model=head,
        args=args,
        train_dataset=feature_dataset(features["train"], labels["train"]),
        eval_dataset=feature_dataset(features["validation"], labels["validation"]),
        data_collator=default_data_collator,
        compute_metrics=compute_metrics,
        callbacks=[EvaluateAtEnd(), TrainClock(memory, offset=clock_offset)],
    )
    return trainer, trainer.train()


def train_head_on_features(cfg: Config, model, tokenizer, splits, resume: bool = False) -> tuple[Trainer, dict]:
    """Head-only training that pays the frozen forward pass once per review instead of once per epoch.

    The features are saved in `cfg.work_dir` as they are computed; with `resume`, a rerun after a
    crash reuses them and pays only for what is missing.
    """
    # the Trainer would move only the head; the frozen pass needs the GPU too
    model.to(make_training_args(cfg, "head_only").device)
    labels = {name: splits[name]["label"] for name in ("train", "validation", "test")}
    with PeakMemory() as training:
        features, tokens, seconds = split_features(cfg, model, tokenizer, splits, ("train", "validation"), resume)
        trainer, train_output = fit_head(cfg, model, features, labels, training, clock_offset=seconds["train"])
    with PeakMemory() as evaluation:
        test, test_tokens, _ = split_features(cfg, model, tokenizer, splits, ("test",), resume)
        prediction = trainer.predict(feature_dataset(test["test"], labels["test"]), metric_key_prefix="test")
        probabilities = [round(float(p), 6) for p in positive_probabilities(prediction.predictions)]  # sequential: in order
    tokens = {"train": tokens["train"], "validation": tokens["validation"], "eval": test_tokens["test"]}
    result = measured_result(trainer, train_output, prediction, probabilities, {"train": training, "eval": evaluation}, tokens)
    return trainer, result | {"feature_seconds": sum(seconds.values()), "head_epochs": cfg.head_epochs}


def measured_result(trainer, train_output, prediction, probabilities, phases: dict, tokens: dict) -> dict:
    """The measured part of a record: loss, times, tokens, peak memory, test metrics with their 95% interval.

    `phases` holds the PeakMemory of training ("train") and of the test pass ("eval"): each its seconds and peak.
    """
    metrics = {k.removeprefix("test_"): v for k, v in prediction.metrics.items() if not k.endswith(("runtime", "per_second"))}
    metrics.pop("loss", None)
    n_test = len(probabilities)
    return {
        "metrics": {**metrics, "accuracy_ci95": list(accuracy_interval(metrics["accuracy"], n_test)), "test_reviews": n_test},
        "train_loss": train_output.training_loss,
        "train_seconds": phases["train"].seconds,
        "eval_seconds": phases["eval"].seconds,
        "train_tokens": tokens["train"],
        "validation_tokens": tokens["validation"],
        "eval_tokens": tokens["eval"],
        "train_tokens_per_s": tokens["train"]["real"] / phases["train"].seconds,
        "eval_tokens_per_s": tokens["eval"]["real"] / phases["eval"].seconds,
        "peak_memory_bytes": {name: phase.peak_bytes for name, phase in phases.items()},
        "log_history": trainer.state.log_history,
        "predictions": probabilities,
    }


def train_variant(cfg: Config, variant: str, model, tokenizer, splits, resume: bool = False, trainer=None) -> tuple:
    """Train `model` on splits["train"], evaluate on splits["test"]; returns (trainer, record).

    `trainer`: one built around `model` (the notebook builds it in view); None = `make_trainer`'s.
    With `resume`, LoRA variants continue from their last checkpoint in `cfg.work_dir`; head-only on
    cached features reuses the features already saved there (its head epochs take seconds: redone).
    """
    if variant == "head_only" and cfg.head_on_cached_features:
        trainer, result = train_head_on_features(cfg, model, tokenizer, splits, resume=resume)
    else:
        if trainer is None:
            trainer = make_trainer(model, tokenizer, make_training_args(cfg, variant), splits["train"], splits["validation"])
        check_trainable(trainer.model)
        result = train_and_evaluate(trainer, cfg, splits["test"], resume=resume)
    record = {
        "variant": variant,
        "profile": cfg.profile,
        "config": config_to_dict(cfg),
        "model": cfg.model_name,
        "precision": resolve_precision(cfg.precision),
        "nf4_kernel": nf4_kernel(model),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),  # sdpa, eager, ...
        "versions": library_versions(),
        "device": device_info(),
        "params": count_parameters(model),
        "model_bytes": int(model.get_memory_footprint()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **result,
        # what the analysis plots need beside the predictions (plots.plot_analysis)
        "test_labels": [int(x) for x in splits["test"]["label"]],
        "test_n_tokens": [int(x) for x in splits["test"]["n_tokens"]],
    }
    return trainer, record
