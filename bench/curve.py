"""How validation accuracy grows with training reviews: the evidence behind a profile's `train_size`.

    python bench/curve.py --variant lora --sizes 500 1000 2000      # ~50 min on 2 CPU cores with native bf16
    python bench/curve.py --variant lora --sizes 500 1000 2000 --resume   # after a crash: the sizes recorded are kept
    python bench/curve.py --report --readme docs/benchmarks.md      # the table and figure from the records

Each size trains the variant as the profile trains it (its recipe, epochs and batch) on the profile's own
stratified training subset of that size, and scores it on the same validation reviews: `--val-size` carved
from the training reviews that none of the sizes uses, so every size is paired with every other (exact
McNemar), and the test set is not read. Seconds per size are the whole size's (training and scoring).
Writes results/<profile>/curve/<variant>.json after each size, and the figure of every variant's curve,
results/<profile>/curve/curve.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a file, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from datasets import DatasetDict  # noqa: E402
from harness import git_commit, what_else_ran  # noqa: E402
from validation import frozen_features, head_probabilities, resumable, scores, trainer_probabilities  # noqa: E402

from peft_sentiment import data, hardware, metrics, models, recording, report  # noqa: E402
from peft_sentiment.config import config_to_dict, make_config, parse_overrides  # noqa: E402
from peft_sentiment.experiment import prepare_data  # noqa: E402
from peft_sentiment.variants import VARIANTS, get_variant, label_of  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="config profile (default: cpu)")
    parser.add_argument("--variant", choices=list(VARIANTS), default="lora")
    parser.add_argument("--sizes", nargs="+", type=int, default=[500, 1000, 2000], help="training reviews per point")
    parser.add_argument("--val-size", type=int, default=1000, help="validation reviews carved from unused training reviews")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="other config overrides, as in the CLI")
    parser.add_argument("--resume", action="store_true", help="keep the sizes recorded with this exact config and validation set")
    parser.add_argument("--report", action="store_true", help="print (and with --readme, write) the table from the records")
    parser.add_argument("--readme", help="with --report: regenerate the curve block of this Markdown file")
    return parser.parse_args(argv)


def carve_validation(cfg, sizes: list[int], n: int) -> dict[int, DatasetDict]:
    """Per size: the profile's training subset of that size, and the same `n` validation reviews for all sizes,
    drawn from the training reviews that no size uses (nor the profile's own validation split)."""
    raw = data.load_splits(cfg)
    subsets = {size: data.prepare_splits(dataclasses.replace(cfg, train_size=size), raw) for size in sizes}
    used = set().union(*(set(s["train"]["text"]) | set(s["validation"]["text"]) for s in subsets.values()))
    rest = raw["train"].filter(lambda batch: [t not in used for t in batch["text"]], batched=True)
    validation = data.take_stratified_subset(rest, n, cfg.seed + 1)
    return {
        size: DatasetDict(train=s["train"], validation=validation, test=validation.select(range(0)))
        for size, s in subsets.items()
    }


def probabilities_at(cfg, variant, prepared, labels: dict, work_dir: Path, resume: bool):
    """Class probabilities on validation of the variant trained on `prepared`'s training split, as the profile trains it."""
    tokenized = {"curve": prepared.tokenized}
    if variant.trains == "head":
        model = models.build_model(cfg, variant, prepared.model_path, prepared.tokenizer, prepared.labels)
        features = frozen_features(model, prepared.tokenizer, tokenized, cfg.eval_batch_size)
        return head_probabilities(cfg, variant, model, features, labels)["curve"]
    [(_, probabilities)] = trainer_probabilities(cfg, variant, tokenized, {"curve": work_dir}, prepared, resume)
    return probabilities


def run(args, argv, path: Path) -> dict:
    """Train and score each size in turn; the record at `path` is rewritten as each one finishes."""
    cfg = make_config(args.profile, **parse_overrides(args.set))
    splits = carve_validation(cfg, args.sizes, args.val_size)
    validation_labels = list(map(int, next(iter(splits.values()))["validation"]["label"]))
    record = {
        "variant": args.variant,
        "profile": cfg.profile,
        "command": "python " + shlex.join(["bench/curve.py", *argv]),
        "commit": git_commit(),
        "config": config_to_dict(cfg),
        "precision": hardware.describe_precision(cfg.precision),
        "validation": {"reviews": args.val_size, "source": "training reviews no size uses", "seed": cfg.seed + 1},
        "validation_labels": validation_labels,
        "sizes": {},
        "predictions": {},
        **recording.provenance(),
        "what_else_ran": [],
    }
    previous = resumable(path, record) if args.resume else None  # the same checks as bench/truncation.py's
    if previous:
        kept = [s for s in previous["sizes"] if int(s) in args.sizes]
        for key in ("sizes", "predictions"):
            record[key] = {s: previous[key][s] for s in kept}
        record["what_else_ran"] = previous["what_else_ran"]
    variant = get_variant(args.variant)
    for size in [s for s in args.sizes if str(s) not in record["sizes"]]:
        started = time.perf_counter()
        size_cfg = dataclasses.replace(cfg, train_size=size)
        prepared = prepare_data(size_cfg, splits[size])
        cut = [n > cfg.max_length for n in prepared.tokenized["validation"]["n_tokens"]]
        labels = {"train": splits[size]["train"]["label"], "validation": validation_labels}
        work_dir = Path(cfg.work_dir) / "curve" / args.variant / str(size)
        probabilities = probabilities_at(size_cfg, variant, prepared, labels, work_dir, args.resume)
        record["sizes"][str(size)] = {
            **scores(validation_labels, probabilities, np.asarray(cut)),
            "train_tokens": int(sum(prepared.tokenized["train"]["length"])),
            "seconds": time.perf_counter() - started,
        }
        record["predictions"][str(size)] = metrics.recorded_predictions(probabilities)
        record["what_else_ran"].append({"after_size": size, **what_else_ran()})
        record["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        recording.write_json_atomic(record, path)
        print(f"{size} training reviews: validation accuracy {record['sizes'][str(size)]['all']['accuracy']:.1%}")
    return record


def curve_section(records: list[dict]) -> str:
    """Markdown: per variant and size, validation accuracy with its interval, and each size paired with the next larger."""
    lines = [
        "| variant | training reviews | validation accuracy (95% CI) | on cut reviews | against the next larger size: "
        "only this / only that right (p) | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        sizes = sorted(r["sizes"], key=int)
        for size, larger in zip(sizes, [*sizes[1:], None], strict=True):
            s = r["sizes"][size]
            paired = "-"
            if larger is not None:
                d = metrics.paired_difference(r["validation_labels"], r["predictions"][size], r["predictions"][larger])
                paired = f"{d['only_a']} / {d['only_b']} (p = {d['p_value']:.2g})"
            low, high = s["all"]["ci95"]
            lines.append(
                f"| {label_of(r['variant'])} | {int(size):,} | {s['all']['accuracy']:.1%} ({low:.1%}-{high:.1%}) "
                f"| {s['truncated']['accuracy']:.1%} | {paired} | {s['seconds'] / 60:.1f} |"
            )
    first = records[0]
    lines += [
        "",
        f"Validation: the same {first['validation']['reviews']:,} {first['validation']['source']} for every size, profile "
        f"`{first['profile']}` (max length {first['config']['max_length']}); the test set is not read. Reproduce:",
    ]
    lines += [f"- `{r['command']}` ({r['device']['name']}, {r['precision']}, commit {r['commit']})" for r in records]
    return "\n".join(lines)


def plot_curves(records: list[dict], path: Path) -> None:
    """Validation accuracy against training reviews, per variant, with Wilson 95% intervals."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in records:
        sizes = sorted(r["sizes"], key=int)
        acc = [r["sizes"][s]["all"]["accuracy"] for s in sizes]
        low = [a - r["sizes"][s]["all"]["ci95"][0] for a, s in zip(acc, sizes, strict=True)]
        high = [r["sizes"][s]["all"]["ci95"][1] - a for a, s in zip(acc, sizes, strict=True)]
        ax.errorbar([int(s) for s in sizes], acc, yerr=[low, high], marker="o", capsize=3, label=label_of(r["variant"]))
    sizes = sorted({int(s) for r in records for s in r["sizes"]})
    ax.set(xscale="log", xlabel="training reviews", ylabel="validation accuracy", title="Learning curve (validation)")
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes], minor=False)
    ax.minorticks_off()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_records(folder: Path) -> list[dict]:
    """The learning-curve records in `folder`, in the variants' order."""
    return [recording.read_json(folder / f"{v}.json") for v in VARIANTS if (folder / f"{v}.json").is_file()]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    folder = Path(make_config(args.profile, **parse_overrides(args.set)).records_dir) / "curve"
    if not args.report:
        run(args, argv, folder / f"{args.variant}.json")
    records = read_records(folder)
    section = curve_section(records)
    print(section)
    plot_curves(records, folder / "curve.png")
    if args.readme:
        report.replace_block(args.readme, "curve", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
