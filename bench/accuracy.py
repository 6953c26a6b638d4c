"""Accuracy benchmark: every declared variant through the package's own code, plus a TF-IDF baseline.

    python bench/accuracy.py --profile cpu            # the notebook's pipeline without the notebook (under 2 hours, 2 cores)
    python bench/accuracy.py --profile cpu --variants full_finetune   # one variant (full fine-tuning: not yet timed here)
    python bench/accuracy.py --profile cpu --resume   # after a crash: keeps the variants already recorded

Writes one JSON record per variant (and results/<profile>/baselines/tfidf_logreg.json), each variant's
trained adapter or model where its declaration saves one (under the profile's save_dir: saved_f32_lora/,
saved_nf4_lora/, saved_full_finetune/) and accuracy_vs_cost.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from peft_sentiment import data, plots, recording, report
from peft_sentiment.baseline import train_tfidf_baseline
from peft_sentiment.config import config_to_dict, make_config, parse_overrides
from peft_sentiment.experiment import run_training
from peft_sentiment.variants import VARIANTS, variants_to_run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="config profile (default: cpu)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: the profile's (its `variants` setting)")
    parser.add_argument("--baseline-only", action="store_true", help="only the TF-IDF baseline (seconds)")
    parser.add_argument(
        "--resume", action="store_true", help="skip variants recorded with this exact config; resume the rest from checkpoints"
    )
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="config overrides, as in the CLI")
    return parser.parse_args(argv)


def already_done(cfg, variant: str) -> bool:
    """True when a record of `variant` with this exact config is on disk."""
    path = Path(cfg.records_dir) / f"{variant}.json"
    return path.is_file() and json.loads(path.read_text())["config"] == config_to_dict(cfg)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python " + shlex.join(["bench/accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    cfg = make_config(args.profile, **parse_overrides(args.set))
    started = time.perf_counter()
    splits = data.prepare_splits(cfg, data.load_splits(cfg))
    print(f"profile {cfg.profile}: {len(splits['train'])} train / {len(splits['validation'])} val / {len(splits['test'])} test")

    baseline = train_tfidf_baseline(splits, cfg.seed)
    baseline["command"] = command
    recording.write_baseline(baseline, cfg.records_dir)
    print(f"TF-IDF + LR: {baseline['metrics']['accuracy']:.4f} (C={baseline['C']}, {baseline['train_seconds']:.1f} s)")

    if args.baseline_only:
        return 0
    chosen = args.variants or list(variants_to_run(cfg))
    todo = [v for v in chosen if not (args.resume and already_done(cfg, v))]
    print(f"variants to run: {todo} (recorded already: {sorted(set(chosen) - set(todo))})")
    run_training(cfg, todo, resume=args.resume, command=command, splits=splits)

    records = recording.read_records(cfg.records_dir, VARIANTS)
    fig = plots.plot_accuracy_vs_cost(records, [baseline])
    fig.savefig(Path(cfg.records_dir) / "accuracy_vs_cost.png", dpi=120)
    print(report.markdown_table(records))
    # the whole run's wall time (the profile's budget is for all of it), for the README's results block
    seconds = time.perf_counter() - started
    recording.write_run_summary(cfg.records_dir, command, todo, seconds, resumed=args.resume)
    print(f"total {seconds:.0f} s ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
