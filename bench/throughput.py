"""Throughput benchmark: what each variant costs on GPT-2 124M's architecture, the project's pipeline vs the common one.

    python bench/throughput.py        # ~20 min on 2 CPU cores (head-only, LoRA, NF4 LoRA; full fine-tuning adds
                                      # its own); writes results/throughput/<device>.json and .png

Speed and memory do not depend on the weights' values, so `gpt2-random` (GPT2Config(): 124M, random
weights; SmolLM2's tokenizer stands in for GPT-2's) has gpt2's compute profile. Reviews are real
IMDB reviews at max_length 512. For each variant, two pipelines train and evaluate the same model
with the same batch size and Trainer settings:

* project: the package's own code: no padding at tokenization, each batch padded to its longest
  review, training batches grouped by length, evaluation longest-first; head-only computes the
  frozen forward pass once (`train.train_variant`) and trains the head on the cached features;
* baseline: the common tutorial pipeline: every review padded to 512 when tokenized, batches in
  random order, evaluation in dataset order, head-only trained through the frozen model each epoch.

Bounded work, paired and stratified: the project's pipeline forms its batches over the pool (training:
the Trainer's length-grouped sampler on `--train-pool` reviews; evaluation: longest-first on
`--eval-pool`), and the measurement times `--steps` training steps (after one warm-up step on the
longest batch, which the Trainer also runs first) and `--eval-batches` evaluation batches that stand
for the whole epoch: the batches are split by padded length into that many equal-count strata, and
from each the batch nearest the stratum's mean length is taken. IMDB lengths vary tenfold, so k
random batches would make the ratio a lottery; stratified, the k batches' cost tracks the epoch's.
Both pipelines run the very same reviews in the same batches (the baseline's cost per batch does
not depend on which reviews it holds: all are padded to 512). Each (variant, pipeline) trains in its
own process, so its peak memory is its own. Evaluation is timed in the project's process, the two
pipelines alternating batch by batch (`measure_eval_paired`): this machine's speed drifts too much
over minutes for two processes' rates to be compared.
The baseline also keeps transformers' stock GPT-2 activation ("gelu_new", eight elementwise ops)
where the project loads the same function fused (models.FUSED_ACTIVATIONS).
MFU = model FLOPs on real tokens (bench/cost.py) / time / the n x n matmul peak measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import cost
import numpy as np
import psutil
import torch
from harness import page_in_weights, run_in_worker
from transformers import AutoConfig, TrainerCallback
from transformers.trainer_pt_utils import get_length_grouped_indices

from peft_sentiment import catalog, data, features, hardware, models, recording, report, train
from peft_sentiment.config import make_config
from peft_sentiment.experiment import prepare_data
from peft_sentiment.variants import VARIANTS, get_variant, label_of

PIPELINES = ("baseline", "project")
PLOT_LABELS = {"baseline": "pad to 512, random order", "project": "project: dynamic padding, length-grouped"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--model", default="gpt2-random", help="model name (default: gpt2-random)")
    parser.add_argument("--data-dir", default=os.environ.get("IMDB_DATA_DIR"), help="IMDB parquet folder ($IMDB_DATA_DIR)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16 if on_gpu else 8, help="training batch (GPU 16, CPU 8)")
    parser.add_argument("--eval-batch", type=int, default=64 if on_gpu else 32, help="evaluation batch (GPU 64, CPU 32)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (length strata), after one warm-up")
    parser.add_argument("--eval-batches", type=int, default=2, help="timed evaluation batches (length strata)")
    parser.add_argument("--train-pool", type=int, default=2000, help="training reviews the steps' batches are drawn from")
    parser.add_argument("--eval-pool", type=int, default=1000, help="test reviews the evaluation batches are drawn from")
    parser.add_argument("--head-epochs", type=int, default=10, help="head-only epochs the effective throughput is for")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=None, help="record path (default: results/throughput/<cpu|cuda>.json)")
    parser.add_argument("--readme", help="also regenerate the throughput block of this Markdown file (docs/benchmarks.md)")
    parser.add_argument("--skip-tokenization", action="store_true", help="do not time tokenizing all 50,000 reviews")
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "PIPELINE", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# One measurement (runs in its own process)


class TokenCounter:
    """Counts real and padded tokens the model sees, split into training (grad on) and evaluation.

    A forward pre-hook on the model is exact whatever the Trainer does between steps (validation
    passes inside train(), gradient accumulation). With `keep_shapes`, `calls` also keeps each forward
    call's real row lengths and padded length (for FLOPs): the package counts real tokens only.
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


class StepLog(TrainerCallback):
    """Wall time of every optimizer step (end to end: data, forward, backward, optimizer)."""

    def __init__(self):
        self.ends = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def worker_config(args):
    """The `full` profile at the benchmark's sizes (max length 512, the given batches)."""
    return make_config(
        "full",
        model_name=args.model,
        data_dir=args.data_dir,
        train_size=args.train_pool,
        val_size=8,
        test_size=args.eval_pool,
        max_length=args.max_length,
        train_batch_size=args.batch,
        eval_batch_size=args.eval_batch,
        head_epochs=args.head_epochs,
        nf4_compute_dtype="bfloat16" if torch.cuda.is_available() else "float32",  # as the cpu profile
        work_dir=tempfile.mkdtemp(prefix="throughput-"),
        records_dir=tempfile.mkdtemp(prefix="throughput-records-"),
    )


def pad_to_max_length(ds, tokenizer, max_length: int):
    """The common pipeline's tokenization: every review truncated and padded to `max_length`."""

    def encode(batch):
        return tokenizer(data.strip_markup(batch["text"]), truncation=True, max_length=max_length, padding="max_length")

    return ds.map(encode, batched=True, remove_columns=["text"], desc="Tokenizing (pad to max_length)")


def real_lengths(ds) -> list[int]:
    """Each review's real (non-pad) token count, whichever pipeline tokenized it."""
    return list(ds["length"]) if "length" in ds.column_names else [int(sum(m)) for m in ds["attention_mask"]]


def epoch_batches(lengths: list[int], batch_size: int, order: str, seed: int) -> list[list[int]]:
    """The full batches the project's pipeline forms over a pool of reviews with these `lengths`.

    "grouped": training, the Trainer's length-grouped sampler; "longest_first": evaluation
    (train.predict_in_order); "shortest_first": head-only's frozen pass (features.extract_features).
    """
    if order == "grouped":
        indices = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    else:
        indices = features.length_order(lengths, longest_first=order == "longest_first")
    batches = [[int(i) for i in indices[j : j + batch_size]] for j in range(0, len(indices), batch_size)]
    return [b for b in batches if len(b) == batch_size]  # a short last batch is not typical


def stratified_batches(batches: list[list[int]], lengths: list[int], k: int) -> list[list[int]]:
    """`k` batches that stand for all of `batches`: one per equal-count stratum of padded length.

    From each stratum, the batch whose padded length (its longest review) is nearest the stratum's
    mean; a step's cost grows with its padded length, so each picked batch costs about what an
    average batch of its stratum does.
    """
    padded = sorted(batches, key=lambda b: max(lengths[i] for i in b))
    picked = []
    for stratum in np.array_split(np.arange(len(padded)), min(k, len(padded))):
        sizes = np.array([max(lengths[i] for i in padded[j]) for j in stratum])
        picked.append(padded[stratum[int(np.argmin(np.abs(sizes - sizes.mean())))]])
    return picked


def rates(seconds: float, calls: list[dict], params: dict, shape: tuple, kind: str, recompute: bool = False) -> dict:
    """Tokens/s (real and padded) and FLOP rates of the forward calls in `calls`, done in `seconds`."""
    real = [n for c in calls for n in c["lengths"]]
    padded = [c["padded"] for c in calls for _ in c["lengths"]]
    if kind == "train":
        model_flops = cost.training_flops(params, *shape, real)
        hardware_flops = cost.training_flops(params, *shape, padded, recompute=recompute)
    else:
        model_flops = cost.forward_flops(params, *shape, real)
        hardware_flops = cost.forward_flops(params, *shape, padded)
    return {
        "seconds": seconds,
        "batches": len(calls),
        "real_tokens": int(sum(real)),
        "padded_tokens": int(sum(padded)),
        "real_tokens_per_s": sum(real) / seconds,
        "padded_tokens_per_s": sum(padded) / seconds,
        "padding_efficiency": sum(real) / sum(padded),
        "model_flops_per_s": model_flops / seconds,
        "hardware_flops_per_s": hardware_flops / seconds,
    }


def measure_trainer_steps(cfg, variant, model, tokenizer, train_ds, warmup: bool = True) -> tuple[float, list, int]:
    """Time Trainer steps over `train_ds`, whose rows are already in batch order; with `warmup`, the first is untimed.

    Returns the timed steps' seconds, every step's forward shapes (the warm-up's first), and peak memory.
    """
    args = train.make_training_args(
        cfg,
        variant,
        max_steps=len(train_ds) // cfg.train_batch_size,
        warmup_steps=0,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        train_sampling_strategy="sequential",  # the batches were formed by the pipeline's sampler (epoch_batches)
        disable_tqdm=True,
    )
    trainer = train.make_trainer(model, tokenizer, args, train_ds, None)
    step_log, shapes = StepLog(), TokenCounter(model, keep_shapes=True)
    trainer.add_callback(step_log)
    with train.PeakMemory() as memory:
        trainer.train()
    shapes.remove()
    # the timed steps: the first (warm-up, on the longest batch, as the Trainer's sampler starts) is dropped
    seconds = step_log.ends[-1] - step_log.ends[1 if warmup else 0]
    return seconds, shapes.calls, memory.peak_bytes


def measure_eval_paired(cfg, variant, model, tokenizer, project_batches, baseline_batches=None) -> dict:
    """Time `trainer.predict` batch by batch, the pipelines alternating: project batch k, then baseline batch k.

    Each list holds one dataset per batch (the same reviews, tokenized each pipeline's way). This
    machine's speed drifts by tens of percent over minutes (a shared VM: LoRA's project evaluation
    ran at 572 and 693 real tok/s in two runs; one forward pass took 12.2 s, then 9.4 s), so timing
    the pipelines in separate processes minutes apart made the evaluation ratio a draw (NF4: x2.03,
    then x1.75). Alternated in one process, drift hits both alike. The baseline batches run with the
    stock activation, swapped in and out around each. Returns {pipeline: (seconds, calls, peak bytes)}.
    """
    # sequential, as train.predict_in_order sets it: the batches must stay as the pipeline formed them
    args = train.make_training_args(
        cfg, variant, eval_strategy="no", save_strategy="no", disable_tqdm=True, train_sampling_strategy="sequential"
    )
    trainer = train.make_trainer(model, tokenizer, args, None, None)
    pipelines = {"project": project_batches} | ({"baseline": baseline_batches} if baseline_batches else {})
    for pipeline, batches in pipelines.items():  # first calls: thread pools, allocator
        swap_activation(model, stock=pipeline == "baseline")
        trainer.predict(batches[0].select(range(2)))
    seconds, calls, peaks = dict.fromkeys(pipelines, 0.0), {p: [] for p in pipelines}, dict.fromkeys(pipelines, 0)
    for k in range(len(project_batches)):
        for pipeline, batches in pipelines.items():
            swap_activation(model, stock=pipeline == "baseline")
            shapes = TokenCounter(model, keep_shapes=True)
            with train.PeakMemory() as memory:
                start = time.perf_counter()
                trainer.predict(batches[k])
                seconds[pipeline] += time.perf_counter() - start
            shapes.remove()
            calls[pipeline] += shapes.calls
            peaks[pipeline] = max(peaks[pipeline], memory.peak_bytes)
    swap_activation(model, stock=False)
    return {p: (seconds[p], calls[p], peaks[p]) for p in pipelines}


def swap_activation(model, stock: bool) -> int:
    """Put in transformers' stock GPT-2 activation (`stock`) or the project's fused one; returns how many swapped."""
    return models.fuse_activations(
        model, {v: k for k, v in models.FUSED_ACTIVATIONS.items()} if stock else models.FUSED_ACTIVATIONS
    )


def run_worker(args, name: str, pipeline: str, out: str) -> None:
    """Measure variant `name` on one pipeline; write the result as JSON to `out`."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    cfg, variant = worker_config(args), get_variant(name)
    splits, model_path, tokenizer, tokenized, labels = prepare_data(cfg)  # the project's pipeline
    if pipeline == "baseline":
        tokenized = pad_to_max_length(splits, tokenizer, cfg.max_length)
    # the same reviews in the same batches for both pipelines, chosen from the project's epoch (see the docstring)
    train_lengths, test_lengths = real_lengths(tokenized["train"]), real_lengths(tokenized["test"])
    train_batches = epoch_batches(train_lengths, cfg.train_batch_size, "grouped", cfg.seed)
    warmup = max(train_batches, key=lambda b: max(train_lengths[i] for i in b))
    timed = stratified_batches(train_batches, train_lengths, args.steps)
    train_ds = tokenized["train"].select([i for b in [warmup, *timed] for i in b])
    model = models.build_model(cfg, variant, model_path, tokenizer, labels)
    if pipeline == "baseline":
        swap_activation(model, stock=True)
    params, shape = cost.matmul_params(model), cost.attention_shape(model)
    recompute = variant.gradient_checkpointing
    page_in_weights(model)  # so that "memory before training" holds the whole model
    result = {
        "variant": name,
        "pipeline": pipeline,
        "model_bytes": int(model.get_memory_footprint()),
        "matmul_params": params,
        # what memory holds before training: the baseline of the will-it-fit check
        "memory_before_bytes": torch.cuda.memory_allocated() if torch.cuda.is_available() else psutil.Process().memory_info().rss,
    }
    if variant.trains == "head" and pipeline == "project":
        result |= measure_cached_head(cfg, variant, model, tokenizer, tokenized, params, shape, args)
    else:
        seconds, calls, peak = measure_trainer_steps(cfg, variant, model, tokenizer, train_ds)
        result["train"] = rates(seconds, calls[1:], params, shape, "train", recompute) | {"peak_memory_bytes": peak}
        longest = max(c["padded"] for c in calls)
        estimate = cost.estimate_training_memory(
            AutoConfig.from_pretrained(model_path),
            variant,
            cfg.train_batch_size,
            longest,
            cfg.lora_r,
            cfg.lora_targets,
            lora_dropout=cfg.lora_dropout,
        )
        # what training adds to the loaded model: estimated vs measured (peak minus memory before training)
        result["memory_check"] = {
            "longest_batch": [cfg.train_batch_size, longest],
            "estimate": estimate,
            "estimated_added_bytes": estimate["total"] - estimate["weights"],
            "measured_added_bytes": peak - result["memory_before_bytes"],
            "estimated_weights_bytes": estimate["weights"],
        }
    if pipeline == "project":  # both pipelines' evaluation, alternated; run_all moves the baseline's to its run
        eval_batches = epoch_batches(test_lengths, cfg.eval_batch_size, "longest_first", cfg.seed)
        picked = stratified_batches(eval_batches, test_lengths, args.eval_batches)
        padded = pad_to_max_length(splits["test"], tokenizer, cfg.max_length)
        timings = measure_eval_paired(
            cfg,
            variant,
            model,
            tokenizer,
            [tokenized["test"].select(b) for b in picked],
            [padded.select(b) for b in picked],
        )
        for name, (seconds, calls, peak) in timings.items():
            key = "eval" if name == "project" else "eval_baseline"
            result[key] = rates(seconds, calls, params, shape, "eval") | {"peak_memory_bytes": peak, "paired": len(timings) > 1}
    Path(out).write_text(json.dumps(result, indent=1))


def measure_cached_head(cfg, variant, model, tokenizer, tokenized, params, shape, args) -> dict:
    """Head-only as the package trains it (train.train_variant): one frozen pass over sampled batches, then the head.

    The frozen pass sorts reviews by length and batches them; its batches are length strata of those
    it forms on the training pool (see `stratified_batches`), so they stand for a full run's.
    """
    lengths = real_lengths(tokenized["train"])
    batches = epoch_batches(lengths, cfg.eval_batch_size, "shortest_first", cfg.seed)
    picked = stratified_batches(batches, lengths, max(2, args.steps * cfg.train_batch_size // cfg.eval_batch_size))
    rows = [i for b in picked for i in b]
    splits = {
        "train": tokenized["train"].select(rows),
        "validation": tokenized["validation"],
        "test": tokenized["test"].select(range(cfg.eval_batch_size)),  # the record's own test pass (not timed here)
    }
    shapes = TokenCounter(model.base_model, keep_shapes=True)  # extract_features calls the backbone, below the head
    _, record = train.train_variant(cfg, variant, model, tokenizer, splits)
    shapes.remove()
    test_calls = -(-len(splits["test"]) // cfg.eval_batch_size)
    forward = rates(record["feature_seconds"], shapes.calls[:-test_calls], params, shape, "eval")  # train + validation
    real = record["train_tokens"]["real"]
    effective = record["head_epochs"] * real / record["train_seconds"]  # tokens trained on, per second, over all epochs
    return {
        "train": forward
        | {
            "head_epochs": record["head_epochs"],
            "train_seconds_all_epochs": record["train_seconds"],
            "effective_real_tokens_per_s": effective,
            "peak_memory_bytes": record["peak_memory_bytes"]["train"],
        }
    }


# ----------------------------------------------------------------------------------------------
# The whole benchmark (the parent process)


def time_tokenization(args, argv) -> dict:
    """Tokenize all 50,000 reviews twice in fresh processes sharing an empty datasets cache: cold, then cached."""
    env = {**os.environ, "HF_DATASETS_CACHE": tempfile.mkdtemp(prefix="hf-datasets-"), "TOKENIZERS_PARALLELISM": "true"}
    cold, warm = (run_in_worker(__file__, argv, ["tokenization", "-"], env=env) for _ in ("cold", "cached"))
    return {
        "reviews": cold["reviews"],
        "kept_tokens": cold["kept_tokens"],
        "train_kept_tokens": cold["train_kept_tokens"],
        "cold_seconds": cold["tokenize_seconds"],
        "cold_reviews_per_s": cold["reviews"] / cold["tokenize_seconds"],
        "cached_seconds": warm["tokenize_seconds"],
        "how": "data.tokenize_reviews: Dataset.map(batched=True, batch_size=1000) with the fast (Rust) tokenizer; "
        "the second run, a new process as a notebook re-run would be, finds the datasets cache",
    }


def tokenize_all(args, out: str) -> None:
    """One timing of tokenizing all of IMDB (a worker of time_tokenization), as JSON in `out`."""
    start = time.perf_counter()
    imdb = data.load_splits(make_config("full", data_dir=args.data_dir))
    loaded = time.perf_counter() - start
    tokenizer = catalog.load_tokenizer(catalog.resolve_model(args.model))
    start = time.perf_counter()
    encoded = data.tokenize_reviews(imdb, tokenizer, args.max_length)
    seconds = time.perf_counter() - start
    result = {
        "load_seconds": loaded,
        "tokenize_seconds": seconds,
        "reviews": sum(len(split) for split in encoded.values()),
        "kept_tokens": sum(sum(split["length"]) for split in encoded.values()),
        "train_kept_tokens": sum(encoded["train"]["length"]),
    }
    Path(out).write_text(json.dumps(result))


def run_all(args, argv) -> dict:
    # MFU's denominator in the dtype the runs' matmuls compute in (bf16 autocast where the hardware has it natively)
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(hardware.resolve_precision("auto"), "float32")
    peak = cost.measure_matmul_peak(dtype=getattr(torch, dtype))
    print(f"matmul peak (2048 x 2048 {dtype}): {peak / 1e9:.1f} GFLOP/s", flush=True)
    record = {
        "command": "python " + shlex.join(["bench/throughput.py", *argv]),
        **recording.provenance(),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "model": args.model,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
        "matmul_peak_flops": peak,
        "matmul_peak_dtype": dtype,
        "runs": [],
    }
    if not args.skip_tokenization:
        record["tokenization"] = time_tokenization(args, [a for a in argv if a != "--skip-tokenization"])
        print(f"tokenization: {json.dumps(record['tokenization'])}", flush=True)
    worker_argv = [a for a in argv if a != "--skip-tokenization"]
    pairs = [(v, p) for v in args.variants for p in PIPELINES]
    for variant, pipeline in pairs:
        start = time.perf_counter()
        run = run_in_worker(__file__, worker_argv, [variant, pipeline])
        run["wall_seconds"] = time.perf_counter() - start
        if "eval_baseline" in run:  # timed in the project's process (measure_eval_paired), the baseline's figure
            next(r for r in record["runs"] if r["variant"] == variant and r["pipeline"] == "baseline")["eval"] = run.pop(
                "eval_baseline"
            )
        record["runs"].append(run)
        evaluation = f", eval {run['eval']['real_tokens_per_s']:.0f} (baseline's too)" if "eval" in run else ""
        print(f"{variant} {pipeline}: train {run['train']['real_tokens_per_s']:.0f} real tok/s{evaluation}", flush=True)
    record["summary"] = summarize(record)
    record["matmul_peak_flops_after"] = cost.measure_matmul_peak(dtype=getattr(torch, dtype))  # no change of speed meanwhile
    return record


def summarize(record: dict) -> dict:
    """Per variant: project/baseline ratios, MFU, memory, and the time of one full-IMDB epoch at the measured rate."""
    runs = {(r["variant"], r["pipeline"]): r for r in record["runs"]}
    peak = record["matmul_peak_flops"]
    train_tokens = record.get("tokenization", {}).get("train_kept_tokens")
    summary = {}
    for variant in dict.fromkeys(r["variant"] for r in record["runs"]):
        base, proj = runs[(variant, "baseline")], runs[(variant, "project")]
        row = {
            "train_ratio": proj["train"]["real_tokens_per_s"] / base["train"]["real_tokens_per_s"],
            "eval_ratio": proj["eval"]["real_tokens_per_s"] / base["eval"]["real_tokens_per_s"],
            "model_bytes": proj["model_bytes"],
        }
        checks = {name: run["memory_check"] for name, run in (("baseline", base), ("project", proj)) if "memory_check" in run}
        if checks:  # the will-it-fit estimate against measurement
            row["memory_estimate_error"] = {
                name: c["estimated_added_bytes"] / c["measured_added_bytes"] - 1 for name, c in checks.items()
            } | {
                "weights": proj["model_bytes"] and checks[next(iter(checks))]["estimated_weights_bytes"] / proj["model_bytes"] - 1
            }
        for name, run in (("baseline", base), ("project", proj)):
            row[name] = {
                "train_real_tokens_per_s": run["train"]["real_tokens_per_s"],
                "train_padded_tokens_per_s": run["train"]["padded_tokens_per_s"],
                "eval_real_tokens_per_s": run["eval"]["real_tokens_per_s"],
                "eval_padded_tokens_per_s": run["eval"]["padded_tokens_per_s"],
                "train_mfu": run["train"]["model_flops_per_s"] / peak,
                "train_hardware_utilisation": run["train"]["hardware_flops_per_s"] / peak,
                "eval_mfu": run["eval"]["model_flops_per_s"] / peak,
                "train_peak_memory_bytes": run["train"]["peak_memory_bytes"],
                "eval_peak_memory_bytes": run["eval"]["peak_memory_bytes"],
            }
            if train_tokens:  # head-only on cached features: the one frozen pass (its epochs then cost ~nothing)
                row[name]["full_imdb_epoch_hours"] = train_tokens / run["train"]["real_tokens_per_s"] / 3600
        if "head_epochs" in proj["train"]:  # the head trained on cached features: one frozen pass, then its epochs
            epochs = proj["train"]["head_epochs"]
            row[f"train_ratio_over_{epochs}_epochs"] = (
                proj["train"]["effective_real_tokens_per_s"] / base["train"]["real_tokens_per_s"]
            )
        summary[variant] = row
    for name, variant in VARIANTS.items():  # a quantized model against the fp32 one it is compared with (NF4 LoRA: LoRA)
        if variant.quantization and name in summary and variant.compared_with in summary:
            summary["nf4_bytes_vs_fp32"] = summary[name]["model_bytes"] / summary[variant.compared_with]["model_bytes"]
    return summary


def plot(record: dict):
    """Real tokens per second, training and evaluation, per variant and pipeline, with the ratio on top."""
    import matplotlib.pyplot as plt

    summary = {k: v for k, v in record["summary"].items() if isinstance(v, dict)}
    variants = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, phase in zip(axes[:2], ("train", "eval"), strict=True):
        x = np.arange(len(variants))
        for i, pipeline in enumerate(PIPELINES):
            values = [summary[v][pipeline][f"{phase}_real_tokens_per_s"] for v in variants]
            ax.bar(x + (i - 0.5) * 0.38, values, 0.38, label=PLOT_LABELS[pipeline])
        for j, v in enumerate(variants):
            top = max(summary[v][p][f"{phase}_real_tokens_per_s"] for p in PIPELINES)
            ax.annotate(f"x{summary[v][f'{phase}_ratio']:.2f}", (j, top), ha="center", va="bottom")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # room for the ratios and the legend
        ax.set_xticks(x, [label_of(v) for v in variants])
        ax.set_ylabel("real (non-pad) tokens / s")
        ax.set_title(f"{'training' if phase == 'train' else 'evaluation'} throughput")
        ax.legend(fontsize=8, loc="upper left")
    ax = axes[2]
    ax.bar([label_of(v) for v in variants], [summary[v]["model_bytes"] / 1e6 for v in variants], color="grey")
    ax.set_ylabel("model bytes (MB, get_memory_footprint)")
    ax.set_title("model size")
    device = record["device"]["name"]
    fig.suptitle(f"{record['model']} at max_length {record['settings']['max_length']} on {device}", fontsize=10)
    fig.tight_layout()
    return fig


def throughput_section(record: dict) -> str:
    """Markdown: the throughput benchmark's record as a table (both pipelines, their ratio) with its command."""
    s = record["settings"]
    device = record["device"]
    where = f"{device['name']} ({device.get('cores', device.get('count'))} {'cores' if device['type'] == 'cpu' else 'GPUs'})"
    lines = [
        f"**`{record['model']}`, max length {s['max_length']}, batch {s['batch']} (training) / {s['eval_batch']} "
        f"(evaluation), on {where}, {record['created'][:10]}.** Matmul peak measured in the same run: "
        f"{record['matmul_peak_flops'] / 1e9:.0f} GFLOP/s ({record.get('matmul_peak_dtype', 'float32')}, 2048 x 2048, the "
        "runs' matmul dtype). Peak memory: "
        f"{'process RSS' if device['type'] == 'cpu' else 'the CUDA allocator peak'}.",
        "",
        "| variant | pipeline | train tokens/s (real / padded) | eval tokens/s (real / padded) | train MFU | eval MFU "
        "| peak train memory MB | model MB | one full-IMDB epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {k: v for k, v in record["summary"].items() if isinstance(v, dict)}
    for variant, row in summary.items():
        for pipeline in ("baseline", "project"):
            r = row[pipeline]
            hours = r.get("full_imdb_epoch_hours")
            lines.append(
                f"| {label_of(variant)} | {pipeline} | {r['train_real_tokens_per_s']:,.0f} / "
                f"{r['train_padded_tokens_per_s']:,.0f} | {r['eval_real_tokens_per_s']:,.0f} / {r['eval_padded_tokens_per_s']:,.0f} "
                f"| {r['train_mfu']:.1%} | {r['eval_mfu']:.1%} | {r['train_peak_memory_bytes'] / 1e6:,.0f} "
                f"| {row['model_bytes'] / 1e6:,.0f} | {'-' if hours is None else f'{hours:.1f} h'} |"
            )
        lines.append(f"| | **project / baseline** | **x{row['train_ratio']:.2f}** | **x{row['eval_ratio']:.2f}** | | | | | |")
    notes = []
    for variant, row in summary.items():
        for key, value in row.items():
            if key.startswith("train_ratio_over_"):
                epochs, label = key.removeprefix("train_ratio_over_").removesuffix("_epochs"), label_of(variant)
                notes.append(
                    f"{label[:1].upper()}{label[1:]} over {epochs} epochs (one frozen pass, then the head on cached features): "
                    f"x{value:.1f}."
                )
    if all(r.get("eval", {}).get("paired") for r in record["runs"]):
        notes.append(
            "Evaluation: both pipelines timed in one process, alternating batch by batch (machine drift cancels); "
            "training: each pipeline in its own process (its own peak memory), minutes apart."
        )
    if "nf4_bytes_vs_fp32" in record["summary"]:
        notes.append(f"NF4 model bytes: {record['summary']['nf4_bytes_vs_fp32']:.1%} of the fp32 model's.")
    tok = record.get("tokenization")
    if tok:
        notes.append(
            f"Tokenizing all {tok['reviews']:,} reviews: {tok['cold_seconds']:.0f} s ({tok['cold_reviews_per_s']:,.0f} reviews/s); "
            f"a re-run finds the datasets cache: {tok['cached_seconds']:.1f} s."
        )
    lines += ["", *notes, "", f"Reproduce: `{record['command']}` ({record['total_seconds'] / 60:.0f} min)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.data_dir is None:
        raise SystemExit("Set IMDB_DATA_DIR (or --data-dir) to the folder with train.parquet and test.parquet.")
    if args.worker and args.worker[0] == "tokenization":
        tokenize_all(args, args.worker[2])
        return 0
    if args.worker:
        run_worker(args, *args.worker)
        return 0
    started = time.perf_counter()
    record = run_all(args, argv)
    record["total_seconds"] = time.perf_counter() - started
    out = Path(args.out or f"results/throughput/{record['device']['type']}.json")
    recording.write_json_atomic(record, out)
    plot(record).savefig(out.with_suffix(".png"), dpi=120)
    print(throughput_section(record))
    if args.readme:
        report.replace_block(args.readme, "throughput", throughput_section(record))
    print(f"wrote {out} in {record['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
