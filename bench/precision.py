"""bf16 against fp32, side by side in one run, per variant: training and evaluation tokens/s, validation accuracy.

    python bench/precision.py                              # the cpu profile, ~1 h on 2 CPU cores with AVX512-BF16
    python bench/precision.py --resume                     # after a crash: keeps the runs already recorded
    python bench/precision.py --report --readme docs/benchmarks.md     # the table from the record
    python bench/precision.py --report --pair results/cpu/truncation/lora.json results/cpu/bf16/truncation/lora.json
                                                           # two bench/truncation.py runs at full size, paired

Every declared variant trains on the first --train-size reviews of the profile's training subset, once in fp32 and
once in bf16 mixed precision (the Trainer's autocast; weights and optimizer state stay fp32), and is scored on
--val-size validation reviews carved from training reviews the profile does not use (as bench/truncation.py carves
them), never the test set. Both precisions see the same reviews in the same order, so their accuracies are paired
(exact McNemar test). Nothing else should run on the machine meanwhile: the record says what the run measured, not
what shared the cores. Writes results/precision/<device>.json after each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

from datasets import DatasetDict
from harness import git_commit, what_else_ran
from validation import carve_validation

from peft_sentiment import hardware, metrics, models, recording, report, train
from peft_sentiment.config import config_to_dict, make_config, parse_overrides
from peft_sentiment.experiment import prepare_data
from peft_sentiment.variants import VARIANTS, get_variant, label_of

PRECISIONS = ("fp32", "bf16")
RECORD_FIELDS = ("train_tokens_per_s", "eval_tokens_per_s", "train_seconds", "eval_seconds", "train_tokens", "eval_tokens")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="config profile (default: cpu)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--train-size", type=int, default=160, help="training reviews (the profile's first ones)")
    parser.add_argument("--val-size", type=int, default=400, help="validation reviews carved from unused training reviews")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="other config overrides, as in the CLI")
    parser.add_argument("--out", help="the record (default: results/precision/<device type>.json)")
    parser.add_argument("--resume", action="store_true", help="keep the runs recorded with this exact config and data")
    parser.add_argument("--report", action="store_true", help="only print (and with --readme, write) the table")
    parser.add_argument("--readme", help="regenerate the precision block of this Markdown file (docs/benchmarks.md)")
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("FP32", "BF16"),
        help="with --report: also pair two bench/truncation.py records of one variant (repeat for more variants)",
    )
    return parser.parse_args(argv)


def measure(cfg, variant, prepared) -> dict:
    """Train `variant` in `cfg.precision` on the prepared train split, predict its "test" split (the validation reviews)."""
    tokenized = prepared.tokenized
    model = models.build_model(cfg, variant, prepared.model_path, prepared.tokenizer, prepared.labels)
    trainer = None
    if variant.trains != "head":  # no validation pass inside training: the one after it gives the figures
        args = train.make_training_args(cfg, variant, eval_strategy="no", save_strategy="no")
        trainer = train.make_trainer(model, prepared.tokenizer, args, tokenized["train"], None)
    _, record = train.train_variant(cfg, variant, model, prepared.tokenizer, tokenized, trainer=trainer)
    return {key: record[key] for key in RECORD_FIELDS} | {
        "precision": record["precision"],
        "val_accuracy": record["metrics"]["accuracy"],
        "val_accuracy_ci95": record["metrics"]["accuracy_ci95"],
        "nf4_kernel": record["nf4_kernel"],
        "predictions": record["predictions"],
    }


def compare(runs: dict, labels) -> dict:
    """bf16 against fp32 for one variant: speed-ups and the paired accuracy difference."""
    fp32, bf16 = runs["fp32"], runs["bf16"]
    d = metrics.paired_difference(labels, bf16["predictions"], fp32["predictions"])
    return {
        "train_speedup": bf16["train_tokens_per_s"] / fp32["train_tokens_per_s"],
        "eval_speedup": bf16["eval_tokens_per_s"] / fp32["eval_tokens_per_s"],
        "accuracy_difference": bf16["val_accuracy"] - fp32["val_accuracy"],
        "only_bf16_right": d["only_a"],
        "only_fp32_right": d["only_b"],
        "mcnemar_p": d["p_value"],
    }


def run(args, argv, path: Path) -> dict:
    """Each variant in each precision on the same reviews; the record at `path` is rewritten after every run."""
    started = time.perf_counter()
    base = make_config(args.profile, **parse_overrides(args.set))
    splits = carve_validation(base, args.val_size)
    splits = DatasetDict(
        train=splits["train"].select(range(min(args.train_size, len(splits["train"])))),
        validation=splits["validation"].select(range(16)),  # head-only's few validation steps while its head trains
        test=splits["validation"],  # what every run is scored on: the carved validation reviews
    )
    prepared = prepare_data(base, splits)
    record = {
        "command": "python " + shlex.join(["bench/precision.py", *argv]),
        "commit": git_commit(),  # the code that ran
        "profile": base.profile,
        "config": config_to_dict(base),
        "train_reviews": len(splits["train"]),
        "validation": {"reviews": len(splits["test"]), "source": "training reviews the profile does not use"},
        "validation_labels": list(map(int, splits["test"]["label"])),
        **recording.provenance(),
        "what_else_ran": {"at_start": what_else_ran()},  # and after each run: the cores were this run's, or not
        "variants": {},
    }
    previous = recording.read_json(path) if args.resume and path.is_file() else None
    if previous and all(previous.get(k) == record[k] for k in ("config", "train_reviews", "validation_labels")):
        record["variants"], record["what_else_ran"] = previous["variants"], previous["what_else_ran"]
        record["commit"] = (
            previous["commit"] if previous["commit"] == record["commit"] else f"{previous['commit']}, then {record['commit']}"
        )
    seconds_before = previous.get("total_seconds", 0.0) if previous and record["variants"] else 0.0
    for name in args.variants:
        runs = record["variants"].setdefault(name, {})
        for precision in PRECISIONS:
            if precision in runs:
                print(f"{name} {precision}: recorded already")
                continue
            cfg = dataclasses.replace(base, precision=precision, work_dir=str(Path(base.work_dir) / "precision" / precision))
            print(f"=== {label_of(name)}, {precision} ===", flush=True)
            runs[precision] = measure(cfg, get_variant(name), prepared)
            record["what_else_ran"][f"after {name} {precision}"] = what_else_ran()
            if set(PRECISIONS) <= set(runs):
                runs["comparison"] = compare(runs, record["validation_labels"])
            record["total_seconds"] = seconds_before + time.perf_counter() - started
            record["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            recording.write_json_atomic(record, path)
    return record


def precision_section(record: dict) -> str:
    """Markdown: per variant, fp32 and bf16 tokens/s and validation accuracy, the ratios and the paired test."""
    device = record["device"]
    flags = [f for f, present in device.get("features", {}).items() if present and "bf16" in f]
    lines = [
        f"**{device['name']}, {device.get('cores', device.get('count'))} {'cores' if device['type'] == 'cpu' else 'GPUs'}"
        f" ({', '.join(flags) or 'no native bf16'}), profile `{record['profile']}` (model `{record['config']['model_name']}`,"
        f" max length {record['config']['max_length']}): {record['train_reviews']} training reviews, "
        f"{record['validation']['reviews']} validation reviews ({record['validation']['source']}); the test set is not read.**",
        "",
        "| variant | train tokens/s fp32 / bf16 (x) | eval tokens/s fp32 / bf16 (x) | validation accuracy fp32 / bf16 |"
        " only fp32 / only bf16 right (exact McNemar p) |",
        "|---|---|---|---|---|",
    ]
    for name, runs in record["variants"].items():
        if "comparison" not in runs:
            continue
        fp32, bf16, c = runs["fp32"], runs["bf16"], runs["comparison"]
        lines.append(
            f"| {label_of(name)} | {fp32['train_tokens_per_s']:,.0f} / {bf16['train_tokens_per_s']:,.0f} (x{c['train_speedup']:.2f})"
            f" | {fp32['eval_tokens_per_s']:,.0f} / {bf16['eval_tokens_per_s']:,.0f} (x{c['eval_speedup']:.2f})"
            f" | {fp32['val_accuracy']:.1%} / {bf16['val_accuracy']:.1%}"
            f" | {c['only_fp32_right']} / {c['only_bf16_right']} (p = {c['mcnemar_p']:.2g}) |"
        )
    busy = sorted({p["command"].split()[0] for check in record["what_else_ran"].values() for p in check["busy_processes"]})
    lines += [
        "",
        f"Reproduce: `{record['command']}` ({record.get('total_seconds', 0) / 60:.0f} min, {record.get('created', '')[:10]}). "
        + (f"Other processes busy at some check: {', '.join(busy)}." if busy else "No other process was busy at any check."),
    ]
    return "\n".join(lines)


def paired_runs_section(fp32_path: str, bf16_path: str) -> str:
    """Markdown: one variant trained at the profile's full size in each precision (bench/truncation.py records of the
    same validation reviews), paired on the settings both ran."""
    fp32, bf16 = recording.read_json(fp32_path), recording.read_json(bf16_path)
    if fp32["validation_labels"] != bf16["validation_labels"] or fp32["variant"] != bf16["variant"]:
        raise ValueError(f"{fp32_path} and {bf16_path} are not the same variant on the same validation reviews.")
    lines = [
        f"With {fp32['config']['train_size']:,} training reviews (the `cpu` profile's size then; 1,250 since), "
        f"{label_of(fp32['variant'])} on the same "
        f"{len(fp32['validation_labels']):,} validation reviews (bench/truncation.py):",
        "",
    ]
    for setting in [name for name in fp32["settings"] if name in bf16["settings"]]:
        d = metrics.paired_difference(fp32["validation_labels"], bf16["predictions"][setting], fp32["predictions"][setting])
        a, b = (r["settings"][setting]["all"]["accuracy"] for r in (fp32, bf16))
        lines.append(
            f"- `{setting}`: fp32 {a:.1%}, bf16 {b:.1%}; {d['only_b']} reviews only fp32 gets right, {d['only_a']} only bf16 "
            f"(exact McNemar p = {d['p_value']:.2g}). Runs: `{fp32['command']}` ({fp32['total_seconds'] / 60:.0f} min) and "
            f"`{bf16['command']}` ({bf16['total_seconds'] / 60:.0f} min)."
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    path = Path(args.out or f"results/precision/{hardware.device_info()['type']}.json")
    record = recording.read_json(path) if args.report else run(args, argv, path)
    section = precision_section(record)
    for pair in args.pair or []:
        section += "\n\n" + paired_runs_section(*pair)
    print(section)
    if args.readme:
        report.replace_block(args.readme, "precision", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
