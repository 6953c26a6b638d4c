"""What predicting a committed adapter in another precision than it was trained in costs and moves, on each CPU path.

    python bench/prediction.py                    # both adapters, this CPU's path and the AVX2-only one, 200 reviews
    python bench/prediction.py --reviews 48 --paths avx2
    python bench/prediction.py --report --readme docs/benchmarks.md

The committed adapters were trained and recorded in bf16 (autocast) on a CPU with AVX512-BF16. On a CPU without it
bf16 is emulated: slower than fp32, and rounded differently. Each path runs in a fresh process: `native` as this CPU
is, `avx2` with oneDNN, torch's kernels and MKL held to AVX2 (hardware.AVX2_ONLY_ENV, as on most laptops; `auto`
then resolves to fp32). In each, the adapter predicts the record's first test reviews in `auto` and in the `recorded` precision; the
record says how far each moved P(pos) from the recorded one, which labels flipped, and how long it took.
Writes results/prediction/cpu.json: the committed-adapter test takes its tolerances from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from harness import ROOT, git_commit, run_in_worker, what_else_ran

from peft_sentiment import data, hardware, inference, recording, report
from peft_sentiment.config import make_config

PATHS = {"native": {}, "avx2": hardware.AVX2_ONLY_ENV}
ADAPTERS = {"saved_f32_lora": "lora", "saved_nf4_lora": "nf4_lora"}
OUT = ROOT / "results" / "prediction" / "cpu.json"


def recorded_test_reviews(adapter: Path, variant: str, data_dir: str) -> tuple[list[str], dict, dict]:
    """The test reviews an adapter's record was made on (in its order), the record, and the adapter's metadata."""
    meta = inference.check_adapter_dir(adapter)
    record = json.loads((ROOT / "results" / meta["profile"] / f"{variant}.json").read_text())
    recorded = {k: record["config"].get(k) for k in ("test_size", "seed", "test_seed", "retired_test_subset")}
    cfg = make_config(meta["profile"], data_dir=data_dir, **recorded)  # the record's test subset, not today's profile's
    return data.prepare_splits(cfg, data.load_splits(cfg))["test"]["text"], record, meta


def movement(now: list[float], recorded: list[float]) -> dict:
    """How far P(pos) moved from the record, and the labels that flipped (with the recorded probability)."""
    now, recorded = np.asarray(now), np.asarray(recorded)
    flipped = np.flatnonzero((now >= 0.5) != (recorded >= 0.5))
    return {
        "max_abs_delta": float(np.abs(now - recorded).max()),
        "mean_abs_delta": float(np.abs(now - recorded).mean()),
        "flips": [{"review": int(i), "recorded": float(recorded[i]), "now": float(now[i])} for i in flipped],
    }


def measure(reviews: int, emulated_reviews: int, data_dir: str) -> dict:
    """In this process's CPU path: per adapter, `auto` and `recorded` predictions timed and compared with the record."""
    out = {"precision_auto": hardware.describe_precision("auto"), "adapters": {}}
    native = hardware.cpu_has_native_bf16()
    for folder, variant in ADAPTERS.items():
        texts, record, meta = recorded_test_reviews(ROOT / folder, variant, data_dir)
        model, tokenizer = inference.load_adapter(ROOT / folder)
        results = {}
        for choice in ("auto", "recorded"):
            if choice == "recorded" and results["auto"]["precision"] == meta["precision"]:
                results[choice] = results["auto"]  # the same computation: not run twice
                continue
            # bf16 where this CPU emulates it is 6-12x slower: fewer reviews
            n = emulated_reviews if inference.encoding(meta, choice)["precision"] == "bf16" and not native else reviews
            started = time.perf_counter()
            predicted = inference.predict_reviews(model, tokenizer, texts[:n], **inference.encoding(meta, choice))
            seconds = time.perf_counter() - started
            now = [p["probabilities"][1] for p in predicted]
            results[choice] = {"precision": inference.encoding(meta, choice)["precision"], "reviews": n, "seconds": seconds,
                               **movement(now, record["predictions"][:n])}  # fmt: skip
        out["adapters"][folder] = {"recorded_precision": record["precision"], **results}
    return out


def prediction_section(record: dict) -> str:
    """Markdown: per path, adapter and choice, the precision, |delta P| against the record, flips, and the seconds."""
    shared = any(entry["busy_processes"] for entry in record["what_else_ran"])
    lines = [
        f"**{record['device']['name']}, {record['device']['cores']} cores; the records' first test reviews.**"
        + (" Seconds are no speed figure: other work shared the cores." if shared else ""),
        "",
        "| CPU path | adapter | predicted in | reviews | s | max / mean abs delta P | labels flipped (recorded P -> now) |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, result in record["paths"].items():
        for folder, adapter in result["adapters"].items():
            for choice in ("auto", "recorded"):
                r = adapter[choice]
                flips = ", ".join(f"{f['recorded']:.3f} -> {f['now']:.3f}" for f in r["flips"]) or "none"
                lines.append(
                    f"| {path} | {folder} | {r['precision']} ({choice}) | {r['reviews']} | {r['seconds']:.0f} "
                    f"| {r['max_abs_delta']:.4f} / {r['mean_abs_delta']:.4f} | {flips} |"
                )
    lines += ["", f"Reproduce: `{record['command']}` ({record['created'][:10]}, commit {record['commit']})."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=200, help="the record's first test reviews to predict")
    parser.add_argument("--emulated-reviews", type=int, default=48, help="as many, where bf16 is emulated (slow)")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--report", action="store_true", help="print the table from the committed record")
    parser.add_argument("--readme", help="with --report: regenerate the prediction block of this Markdown file")
    parser.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data_dir = os.environ.get("IMDB_DATA_DIR") or str(ROOT.parent / "shared" / "data" / "imdb")
    if args.report:
        section = prediction_section(json.loads(OUT.read_text()))
        print(section)
        if args.readme:
            report.replace_block(args.readme, "prediction", section)
        return 0
    if args.worker:
        recording.write_json_atomic(measure(args.reviews, args.emulated_reviews, data_dir), Path(args.worker[0]))
        return 0
    record = {
        "command": "python " + shlex.join(["bench/prediction.py", *argv]),
        "commit": git_commit(),
        "reviews": args.reviews,
        "emulated_reviews": args.emulated_reviews,
        **recording.provenance(),
        "paths": {},
        "what_else_ran": [],
    }
    for path in args.paths:
        env = os.environ | PATHS[path]
        record["paths"][path] = {"env": PATHS[path], **run_in_worker(__file__, argv, [], env=env)}
        record["what_else_ran"].append({"after_path": path, **what_else_ran()})
        for folder, result in record["paths"][path]["adapters"].items():
            for choice in ("auto", "recorded"):
                r = result[choice]
                print(f"{path} {folder} {choice} ({r['precision']}): {r['seconds']:.0f} s, max |dP| {r['max_abs_delta']:.4f}, "
                      f"{len(r['flips'])} flipped")  # fmt: skip
    recording.write_json_atomic(record, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
