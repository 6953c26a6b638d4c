"""Will it fit? `cost.estimate_training_memory` against the measured peak, for every GPT-2 size that runs here.

    python bench/memory.py     # gpt2 to gpt2-xl (random weights) x every variant, batch 4 x 256; ~15 min here (3 variants)

A (model, variant) that its own estimate says will not fit in the memory available (RSS_OVER_ESTIMATE)
is skipped and recorded as such: on this 24 GB machine, gpt2-xl's fp32 LoRA step (and its full fine-tuning).

Each (model, variant) runs in its own process, so each peak is its own: the package's builder makes
the variant, the process's memory is read, then one full training step (forward, backward, AdamW
step: what allocates gradients and optimizer state) runs on a batch of random tokens exactly
`--seq-len` long (no padding, so the estimate's sequence length is exact) while the peak is sampled
(process RSS on a CPU, the CUDA allocator's peak on a GPU). The record compares what training adds
to the loaded model: estimate vs measurement, and the weights: estimate vs get_memory_footprint().
The process's peak also holds what no formula of the model counts (allocator caching, transient
buffers, thread workspaces, lazily loaded code), so the activations the estimate models are also
measured on their own: the bytes autograd keeps for backward (`saved_tensors_hooks`, each storage
once, parameters excluded), against the estimate's activations.
Weights do not change memory use, so random ones measure the real models' memory.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import cost
import psutil
import torch
from harness import page_in_weights, run_in_worker
from transformers import AutoConfig

from peft_sentiment import catalog, hardware, models, recording, report, train
from peft_sentiment.config import make_config
from peft_sentiment.variants import VARIANTS, get_variant, label_of

DEFAULT_MODELS = ("gpt2-random", "gpt2-medium-random", "gpt2-large-random", "gpt2-xl-random")
LABELS = ("neg", "pos")  # random tokens, random labels: two classes, as IMDB's


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="short names or model folders")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--out", default=None, help="record path (default: results/memory/<cpu|cuda>.json)")
    parser.add_argument("--readme", help="also regenerate the memory block of this Markdown file (docs/benchmarks.md)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "VARIANT", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def current_bytes() -> int:
    gc.collect()
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else psutil.Process().memory_info().rss


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


def heap_reader():
    """A function returning the bytes malloc has handed out and not freed (glibc's mallinfo2), or None.

    RSS also counts what malloc keeps after a free (arena pages it has not trimmed) and pages that no
    allocation holds any more; these live bytes are what an estimate of tensors can be held to.
    None where there is no glibc >= 2.33 (mallinfo2) or on a GPU (the CUDA allocator's peak is live bytes).
    """
    if torch.cuda.is_available():
        return None
    try:
        mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def live_bytes() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd  # in use in the arenas + mmapped chunks (the large tensors)

    return live_bytes


def saved_activation_bytes(model, batch: dict) -> tuple[int, torch.Tensor]:
    """The bytes autograd keeps for backward in one forward pass (each storage once, parameters excluded), and the loss."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    return sum(kept.values()), loss


def run_worker(args, model_name: str, name: str, out: str) -> None:
    """One training step of variant `name` on `model_name`, its peak memory and the estimate, as JSON in `out`."""
    import transformers

    transformers.logging.set_verbosity_error()
    # the full profile's LoRA and NF4 settings; NF4 computes in fp32 on a CPU, as the estimate assumes
    # (this CPU has no fast bf16: one gpt2 NF4 step took 269 s with bf16 compute)
    nf4_compute = "bfloat16" if torch.cuda.is_available() else "float32"
    cfg = make_config("full", model_name=model_name, nf4_compute_dtype=nf4_compute)
    model_path = catalog.resolve_model(model_name)
    tokenizer = catalog.load_tokenizer(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    variant = get_variant(name)
    model = models.build_model(cfg, variant, model_path, tokenizer, LABELS)
    if variant.quantization is None:  # a quantized model is placed on its device when it loads
        model.to(device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=generator).to(device)
    labels = torch.randint(0, len(LABELS), (args.batch,), generator=generator).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    page_in_weights(model)  # or the step's first touch of file-mapped weights counts as training memory
    before = current_bytes()
    read_heap = heap_reader()
    model.train()
    with train.PeakMemory(interval_s=0.01) as memory, train.PeakMemory(0.01, read_heap) if read_heap else nullcontext() as heap:
        start = time.perf_counter()
        kept, loss = saved_activation_bytes(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - start
    estimate = estimate_step(model_name, variant, args)
    result = {
        "model": model_name,
        "variant": name,
        "params": estimate["params"],
        "model_bytes": int(model.get_memory_footprint()),
        "memory_before_bytes": before,
        "peak_bytes": memory.peak_bytes,
        "measured_added_bytes": memory.peak_bytes - before,
        "estimate": estimate,
        "estimated_added_bytes": estimate["total"] - estimate["weights"],
        "saved_activation_bytes": kept,
        # malloc's live bytes: what the step's tensors and buffers really held, without what RSS keeps
        "measured_added_heap_bytes": None if read_heap is None else heap.peak_bytes - heap.start_bytes,
        "step_seconds": seconds,
        "nf4_compute_dtype": nf4_compute,
    }
    Path(out).write_text(json.dumps(result, indent=1))


# A (model, variant) whose estimate, scaled to RSS, exceeds the memory available now is skipped, not
# run into swap or the OOM killer. The scale is LoRA's, the variant whose memory grows fastest: its RSS
# added 1.7x the estimate on every size here (memory malloc keeps; docs/benchmarks.md). NF4's RSS added 5-8x its
# estimate, but that estimate is small (under 0.6 GB up to gpt2-xl): for NF4 the check is a loose one.
RSS_OVER_ESTIMATE = 1.8


def estimate_step(model_name: str, variant, args) -> dict:
    """`cost.estimate_training_memory` for one step of `variant` on `model_name` with the full profile's LoRA settings."""
    cfg = make_config("full", model_name=model_name)
    config = AutoConfig.from_pretrained(catalog.resolve_model(model_name))
    return cost.estimate_training_memory(
        config, variant, args.batch, args.seq_len, cfg.lora_r, cfg.lora_targets, lora_dropout=cfg.lora_dropout
    )


def predicted_rss_bytes(model_name: str, variant, args) -> float:
    """What a step of `variant` on `model_name` should take in RSS: weights + the estimate's added bytes, scaled."""
    estimate = estimate_step(model_name, variant, args)
    return estimate["weights"] + RSS_OVER_ESTIMATE * (estimate["total"] - estimate["weights"])


def summarize(run: dict) -> dict:
    heap = run.get("measured_added_heap_bytes")
    return {
        "weights_error": run["estimate"]["weights"] / run["model_bytes"] - 1,
        "added_error": run["estimated_added_bytes"] / run["measured_added_bytes"] - 1,
        "added_heap_error": run["estimated_added_bytes"] / heap - 1 if heap else None,
        "activations_error": run["estimate"]["activations"] / run["saved_activation_bytes"] - 1
        if run["saved_activation_bytes"]
        else None,
    }


def memory_section(record: dict) -> str:
    """Markdown: estimate vs measurement per model and variant, with the command."""
    device = record["device"]
    heap = any(run.get("measured_added_heap_bytes") for run in record["runs"])
    lines = [
        f"**Batch {record['settings']['batch']} x {record['settings']['seq_len']} tokens, one training step, "
        f"{device['name']} ({'process RSS' if device['type'] == 'cpu' else 'CUDA allocator peak'}), {record['created'][:10]}.** "
        "Added = peak minus the memory before the step (activations, gradients, optimizer state, allocator overhead)."
        + (" Live heap: the same for the bytes malloc had handed out and not freed (glibc `mallinfo2`)." if heap else ""),
        "",
        "| model | params | variant | weights MB: estimate / measured | added MB: estimate / measured RSS (error) "
        + ("| added MB: measured live heap (error) " if heap else "")
        + "| activations kept for backward MB: estimate / measured (error) |",
        "|---|---|---|---|---|---|" + ("---|" if heap else ""),
    ]
    for run in record["runs"]:
        if "skipped" in run:
            lines.append(f"| {run['model'].removesuffix('-random')} | | {label_of(run['variant'])} | skipped: {run['skipped']} |")
            continue
        e = summarize(run)
        heap_cell = ""
        if heap:
            measured = run.get("measured_added_heap_bytes")
            heap_cell = "| - " if not measured else f"| {measured / 1e6:,.0f} ({e['added_heap_error']:+.0%}) "
        lines.append(
            f"| {run['model'].removesuffix('-random')} | {run['params'] / 1e6:,.0f}M | {label_of(run['variant'])} "
            f"| {run['estimate']['weights'] / 1e6:,.0f} / {run['model_bytes'] / 1e6:,.0f} "
            f"| {run['estimated_added_bytes'] / 1e6:,.0f} / {run['measured_added_bytes'] / 1e6:,.0f} ({e['added_error']:+.0%}) "
            + heap_cell
            + f"| {run['estimate']['activations'] / 1e6:,.0f} / {run['saved_activation_bytes'] / 1e6:,.0f} "
            f"({'-' if e['activations_error'] is None else format(e['activations_error'], '+.0%')}) |"
        )
    lines += ["", f"Reproduce: `{record['command']}`"]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        run_worker(args, *args.worker)
        return 0
    started = time.perf_counter()
    record = {
        "command": "python " + shlex.join(["bench/memory.py", *argv]),
        "device": hardware.device_info(),
        "versions": recording.library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {"batch": args.batch, "seq_len": args.seq_len},
        "runs": [],
    }
    for model_name in args.models:
        catalog.resolve_model(model_name)  # build a random-weight model once, outside the measured processes
        for name in args.variants:
            need, available = predicted_rss_bytes(model_name, get_variant(name), args), psutil.virtual_memory().available
            if need > available:
                why = f"needs ~{need / 1e9:.1f} GB by the estimate (x{RSS_OVER_ESTIMATE} for RSS), {available / 1e9:.1f} GB available"
                record["runs"].append({"model": model_name, "variant": name, "skipped": why})
                print(f"{model_name} {name}: skipped, {why}", flush=True)
                continue
            run = run_in_worker(__file__, argv, [model_name, name])
            record["runs"].append(run)
            print(f"{model_name} {name}: added {run['measured_added_bytes'] / 1e6:,.0f} MB measured, "
                  f"{run['estimated_added_bytes'] / 1e6:,.0f} MB estimated ({summarize(run)['added_error']:+.0%})", flush=True)  # fmt: skip
    record["total_seconds"] = time.perf_counter() - started
    out = Path(args.out or f"results/memory/{record['device']['type']}.json")
    recording.write_json_atomic(record, out)
    section = memory_section(record)
    print(section)
    if args.readme:
        report.replace_block(args.readme, "memory", section)
    print(f"wrote {out} in {record['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
