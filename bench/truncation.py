"""Which tokens of a long review to keep, and what the prompt suffix is worth: measured on validation only.

    python bench/truncation.py --variant head_only             # all settings; ~40 min on 2 CPU cores (cpu profile)
    python bench/truncation.py --variant lora --settings head head+tail    # ~30 min per setting
    python bench/truncation.py --variant lora --settings head head+tail --resume   # after a crash
    python bench/truncation.py --report --readme docs/benchmarks.md --summary README.md   # the tables from the records

At the profile's max length (the same cost), each setting trains the variant on the profile's own
training subset and is scored on a larger validation set carved from the training reviews the profile
does not use (--val-size, default 1,000: about +-1.9 points at 90%), never the test set. Accuracy is
reported overall and separately on the reviews the profile's setting cuts (longer than max length)
and on the whole ones, each with its Wilson 95% interval; the settings see the very same reviews, so
differences are paired. Head-only computes each distinct token sequence's frozen features once:
reviews that fit are the same under every truncation.
Writes results/<profile>/truncation/<variant>.json, again after each LoRA setting, so a crash loses at
most the setting in progress; --resume keeps the settings recorded with this exact config and validation
set, and continues the next from its last checkpoint (a fresh start removes old checkpoints).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from validation import SETTINGS, machine, run, same_reviews

from peft_sentiment import metrics, recording, report
from peft_sentiment.config import make_config, parse_overrides
from peft_sentiment.variants import VARIANTS, label_of


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="config profile (default: cpu)")
    parser.add_argument("--variant", choices=list(VARIANTS), default="head_only")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--val-size", type=int, default=1000, help="validation reviews carved from unused training reviews")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="other config overrides, as in the CLI")
    parser.add_argument(
        "--resume", action="store_true", help="keep settings recorded with this exact config; resume the next from checkpoints"
    )
    parser.add_argument("--report", action="store_true", help="print (and with --readme, write) the table from the records")
    parser.add_argument(
        "--readme", help="with --report: regenerate the truncation block of this Markdown file (docs/benchmarks.md)"
    )
    parser.add_argument(
        "--summary",
        help="with --report: regenerate the short truncation-summary block (the profile's setting vs head) of this file (README.md)",
    )
    return parser.parse_args(argv)


def truncation_section(records: list[dict]) -> str:
    """Markdown: per variant and setting, validation accuracy overall, on cut reviews and on whole ones, then each
    setting paired against `head` on the same reviews (exact McNemar)."""
    first = records[0]
    lines = [
        f"**Profile `{first['profile']}`, max length {first['config']['max_length']}, validation: "
        f"{first['validation']['reviews']:,} {first['validation']['source']} (the test set is not read).** "
        "Truncated = the reviews longer than the max length, which every setting cuts: the same reviews for every setting.",
        "",
        "| variant | setting | accuracy (95% CI) | truncated reviews | whole reviews |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        for name, s in r["settings"].items():
            cells = [
                f"{s[p]['accuracy']:.1%} ({s[p]['ci95'][0]:.1%}-{s[p]['ci95'][1]:.1%}, n={s[p]['n']})"
                for p in ("all", "truncated", "whole")
            ]
            lines.append(f"| {label_of(r['variant'])} | {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each setting against `head` on the same reviews: how many only the setting gets right, how many only `head`"
        " does, and the exact McNemar p-value (a difference is resolved at p < 0.05).",
        "",
        "| variant | setting | all reviews | truncated reviews |",
        "|---|---|---|---|",
    ]
    for r in records:
        cut = truncated_reviews(r, records)
        for name in [n for n in r["settings"] if n != "head" and "head" in r["settings"]]:
            cells = [paired_cell(r, name), "-" if cut is None else paired_cell(r, name, cut)]
            lines.append(f"| {label_of(r['variant'])} | {name} | " + " | ".join(cells) + " |")
    paired = variants_paired(records)
    if paired:
        lines += ["", "Variants against each other, at the same setting on the same reviews:", "", *paired]
    lines += ["", "Reproduce (machine, precision, wall time):"]
    lines += [f"- `{r['command']}` ({machine(r)}, {r['total_seconds'] / 60:.1f} min, {r['created'][:10]})" for r in records]
    return "\n".join(lines)


def truncated_reviews(record: dict, records: list[dict]) -> list[bool] | None:
    """Which validation reviews the record's max length cuts; for a record from before it named them, those of a
    record on the very same reviews, else None."""
    for other in [record, *records]:
        if "validation_truncated" in other and same_reviews(other, record):
            return other["validation_truncated"]
    return None


def variants_paired(records: list[dict]) -> list[str]:
    """Markdown lines: at each setting that several variants ran on the same reviews, each pair of them, paired."""
    lines = []
    for setting in dict.fromkeys(name for r in records for name in r["settings"]):
        ran = [r for r in records if setting in r["settings"]]
        for i, a in enumerate(ran):
            for b in [b for b in ran[i + 1 :] if same_reviews(a, b)]:
                d = metrics.paired_difference(a["validation_labels"], a["predictions"][setting], b["predictions"][setting])
                label_a, label_b = label_of(a["variant"]), label_of(b["variant"])
                lines.append(
                    f"- `{setting}`: {label_b} {b['settings'][setting]['all']['accuracy']:.1%} against {label_a} "
                    f"{a['settings'][setting]['all']['accuracy']:.1%}; {d['only_b']} reviews only {label_b} gets right, "
                    f"{d['only_a']} only {label_a} (exact McNemar p = {d['p_value']:.2g})"
                )
    return lines


def paired_with_head(record: dict, setting: str, keep: list[bool] | None = None) -> dict:
    """`setting` against `head` on the reviews `keep` marks (all when None): metrics.paired_difference's counts and p."""
    keep = np.ones(len(record["validation_labels"]), bool) if keep is None else np.asarray(keep, bool)
    labels, predictions = np.asarray(record["validation_labels"])[keep], record["predictions"]
    return metrics.paired_difference(labels, np.asarray(predictions[setting])[keep], np.asarray(predictions["head"])[keep])


def paired_cell(record: dict, setting: str, keep: list[bool] | None = None) -> str:
    """'only setting right / only head right (p)' on the reviews `keep` marks (all when None)."""
    d = paired_with_head(record, setting, keep)
    return f"{d['only_a']} / {d['only_b']} (p = {d['p_value']:.2g})"


def truncation_summary(records: list[dict], setting: str) -> str:
    """Markdown for the README: per variant, `head` against `setting` on validation, overall and on the cut reviews."""
    rows = [r for r in records if {"head", setting} <= set(r["settings"])]
    if not rows:
        return f"No record has both `head` and `{setting}` yet: `python bench/truncation.py --settings head {setting}`."
    first = rows[0]
    cut_n = first["settings"]["head"]["truncated"]["n"]
    lines = [
        f"| variant | `head`: all / cut reviews | `{setting}`: all / cut reviews | on the {cut_n} cut reviews, only `{setting}`"
        " / only `head` right (exact McNemar p) |",
        "|---|---|---|---|",
    ]
    ahead, resolved = [], []
    for r in rows:
        head, other = r["settings"]["head"], r["settings"][setting]
        cut = truncated_reviews(r, records)
        lines.append(
            f"| {label_of(r['variant'])} | {head['all']['accuracy']:.1%} / {head['truncated']['accuracy']:.1%}"
            f" | {other['all']['accuracy']:.1%} / {other['truncated']['accuracy']:.1%}"
            f" | {'-' if cut is None else paired_cell(r, setting, cut)} |"
        )
        if cut is not None and (d := paired_with_head(r, setting, cut))["only_a"] > d["only_b"]:
            ahead.append(label_of(r["variant"]))
            resolved += [ahead[-1]] if d["p_value"] < 0.05 else []
    lines += [
        "",
        f"On the cut reviews `{setting}` gets more right than `head` for: {', '.join(ahead) or 'none'}; "
        f"resolved (p < 0.05) for: {', '.join(resolved) or 'none'}.",
        "",
        f"Validation only: {first['validation']['reviews']:,} {first['validation']['source']}, max length "
        f"{first['config']['max_length']}; the test set is not read. The whole table, the other settings and how it was run: "
        '[docs/benchmarks.md](docs/benchmarks.md) ("Long reviews").',
    ]
    return "\n".join(lines)


def read_records(folder: Path) -> list[dict]:
    """The truncation records in `folder`, in the variants' order."""
    return [recording.read_json(p) for p in sorted(folder.glob("*.json"), key=lambda p: list(VARIANTS).index(p.stem))]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    folder = Path(make_config(args.profile, **parse_overrides(args.set)).records_dir) / "truncation"
    if not args.report:
        record = run(args, argv, folder / f"{args.variant}.json", script="bench/truncation.py")
        print(f"{args.variant}: {record['total_seconds'] / 60:.1f} min")
    records = read_records(folder)
    section = truncation_section(records)
    print(section)
    if args.readme:
        report.replace_block(args.readme, "truncation", section)
    if args.summary:
        cfg = make_config(args.profile, **parse_overrides(args.set))
        report.replace_block(args.summary, "truncation-summary", truncation_summary(records, cfg.truncation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
