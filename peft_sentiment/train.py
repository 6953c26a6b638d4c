"""Train and evaluate one variant with the Hugging Face Trainer, measuring time, tokens and memory."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

from peft_sentiment.config import Config, check_variant, config_to_dict
from peft_sentiment.metrics import accuracy_interval, compute_metrics
from peft_sentiment.models import BUILDERS, count_parameters
from peft_sentiment.report import device_info, library_versions


class TokenCounter:
    """Counts real and padded tokens the model sees, split into training (grad on) and evaluation.

    A forward pre-hook on the model is exact whatever the Trainer does between steps (validation
    passes inside train(), gradient accumulation), so throughput is measured, not estimated.
    """

    def __init__(self, model):
        self.reset()
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def reset(self) -> None:
        self.tokens = {"train": {"real": 0, "padded": 0}, "eval": {"real": 0, "padded": 0}}

    def _count(self, module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None:
            return
        phase = self.tokens["train" if torch.is_grad_enabled() else "eval"]
        phase["real"] += int(mask.sum())
        phase["padded"] += int(mask.numel())

    def remove(self) -> None:
        self._handle.remove()


class PeakMemory:
    """Peak memory inside a `with` block: CUDA allocator peak on a GPU, sampled process RSS on a CPU."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_bytes = 0

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while True:
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            if self._stop.wait(self.interval_s):
                return

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        return False


def make_training_args(cfg: Config, variant: str, **overrides) -> TrainingArguments:
    """The Trainer settings every variant shares; only the learning rate differs by variant."""
    check_variant(variant)
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
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
        eval_strategy="steps",
        eval_steps=0.25,  # validation accuracy four times per run: a learning curve at little cost
        logging_steps=0.05,
        save_strategy="no",
        bf16=bf16,  # mixed precision where the GPU has bf16; CPUs here have no fast bf16
        fp16=on_gpu and not bf16,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=True,
        dataloader_pin_memory=on_gpu,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def make_trainer(model, tokenizer, args: TrainingArguments, train_ds, eval_ds) -> Trainer:
    """A Trainer with dynamic padding (to a multiple of 8 on GPUs, for tensor cores)."""
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )


def train_and_evaluate(trainer: Trainer, test_ds) -> dict:
    """Train, then evaluate on `test_ds`; the timings, token counts and peak memory of both phases."""
    counter = TokenCounter(trainer.model)
    with PeakMemory() as train_memory:
        start = time.perf_counter()
        train_output = trainer.train()
        train_seconds = time.perf_counter() - start
    # Validation passes inside train() cost time too; they are reported, and excluded from train tokens.
    train_tokens, val_tokens = counter.tokens["train"], counter.tokens["eval"]
    counter.reset()
    with PeakMemory() as eval_memory:
        start = time.perf_counter()
        prediction = trainer.predict(test_ds, metric_key_prefix="test")
        eval_seconds = time.perf_counter() - start
    eval_tokens = counter.tokens["eval"]
    counter.remove()
    metrics = {k.removeprefix("test_"): v for k, v in prediction.metrics.items() if not k.endswith(("runtime", "per_second"))}
    metrics.pop("loss", None)
    low, high = accuracy_interval(metrics["accuracy"], len(test_ds))
    return {
        "metrics": {**metrics, "accuracy_ci95": [low, high], "test_reviews": len(test_ds)},
        "train_loss": train_output.training_loss,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "train_tokens": train_tokens,
        "validation_tokens": val_tokens,
        "eval_tokens": eval_tokens,
        "train_tokens_per_s": train_tokens["real"] / train_seconds,
        "eval_tokens_per_s": eval_tokens["real"] / eval_seconds,
        "peak_memory_bytes": {"train": train_memory.peak_bytes, "eval": eval_memory.peak_bytes},
        "log_history": trainer.state.log_history,
    }


def build_variant(variant: str, model_path: str, tokenizer, *, seed: int, lora_config=None, bnb_config=None):
    """The model of `variant`, built after seeding so that the head and LoRA weights start the same."""
    set_seed(seed)
    return BUILDERS[check_variant(variant)](
        model_path, pad_token_id=tokenizer.pad_token_id, lora_config=lora_config, bnb_config=bnb_config
    )


def train_variant(cfg: Config, variant: str, model, tokenizer, splits) -> tuple:
    """Train `model` on splits["train"], evaluate on splits["test"]; returns (trainer, record)."""
    trainer = make_trainer(model, tokenizer, make_training_args(cfg, variant), splits["train"], splits["validation"])
    result = train_and_evaluate(trainer, splits["test"])
    record = {
        "variant": variant,
        "profile": cfg.profile,
        "config": config_to_dict(cfg),
        "model_path": str(model.config.name_or_path),
        "versions": library_versions(),
        "device": device_info(),
        "params": count_parameters(model),
        "model_bytes": int(model.get_memory_footprint()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **result,
    }
    return trainer, record
