"""Command line: `python -m peft_sentiment train|evaluate|predict|merge|report|profile`, on the notebook's profiles.

Exit codes: 0 success, 2 bad input (unknown name, missing file, bad value: the message says what to
do), 1 anything else.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from peft_sentiment import hardware, inference, plots, recording, report
from peft_sentiment.config import PROFILE_COSTS, PROFILE_ENV, PROFILES, choose_profile, make_config, parse_overrides
from peft_sentiment.experiment import evaluate_adapter, run_training
from peft_sentiment.variants import VARIANTS

EXAMPLES = """examples:
  python -m peft_sentiment train --profile smoke
  python -m peft_sentiment train --profile cpu --variants full_finetune --set lr_full=3e-5 --resume
  python -m peft_sentiment train --profile smoke --set dataset=my_data/ --set text_column=review --set label_column=stars
  python -m peft_sentiment evaluate saved_f32_lora --set test_size=200
  python -m peft_sentiment predict saved_f32_lora "A moving, beautifully shot film."
  python -m peft_sentiment merge saved_f32_lora merged_f32
  echo "Dull and far too long." | python -m peft_sentiment predict saved_nf4_lora
  python -m peft_sentiment report results/cpu --readme README.md
  python -m peft_sentiment profile     # the profile a run without --profile gets, why, and what it costs
"""


PRECISION_HELP = "auto: what this machine computes natively (default); recorded: the adapter's training precision"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m peft_sentiment",
        description="Fine-tune a decoder LM for text classification (IMDB by default) in several variants, classify texts, "
        "report results.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and evaluate variants; write records and adapters")
    t.add_argument(
        "--profile", help=f"{' | '.join(PROFILES)} (default: $PEFT_PROFILE, else full with a CUDA GPU and the Hub, else quick)"
    )
    t.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: the profile's (config `variants`)")
    t.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override one config value; repeatable")
    t.add_argument("--resume", action="store_true", help="continue each variant from its last checkpoint")
    p = sub.add_parser("predict", help="classify reviews with a saved adapter; prints label and probability")
    p.add_argument("adapter", help="an adapter folder, e.g. saved_f32_lora")
    p.add_argument("texts", nargs="*", help="reviews; none = read --file, else standard input (one review per line)")
    p.add_argument("--file", help="a text file with one review per line")
    p.add_argument("--precision", choices=inference.PREDICTION_PRECISIONS, default="auto", help=PRECISION_HELP)
    e = sub.add_parser("evaluate", help="evaluate a saved adapter on its profile's test subset; prints metrics")
    e.add_argument("adapter", help="an adapter folder, e.g. saved_f32_lora")
    e.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override the profile, e.g. test_size=200")
    e.add_argument("--out", help="also write the metrics and per-review probabilities to this JSON file")
    e.add_argument("--precision", choices=inference.PREDICTION_PRECISIONS, default="auto", help=PRECISION_HELP)
    m = sub.add_parser("merge", help="fold an adapter into its base model and save a plain model (transformers.pipeline-ready)")
    m.add_argument("adapter", help="an adapter folder, e.g. saved_f32_lora")
    m.add_argument("out_dir", help="where to save the merged model")
    r = sub.add_parser("report", help="rebuild the comparison table (and the README block) from records")
    r.add_argument("records_dirs", nargs="+", help="folders of JSON records, e.g. results/cpu")
    r.add_argument("--readme", help="also regenerate this README's results block")
    r.add_argument(
        "--plots",
        action="store_true",
        help="also draw <dir>/accuracy_vs_cost.png and <dir>/analysis.png (confusion, ROC, accuracy by length, calibration)",
    )
    sub.add_parser(
        "profile", help="print the profile a run without --profile gets (./run.sh reads it); why and its cost go to stderr"
    )
    return parser


def read_texts(args) -> list[str]:
    """Reviews from arguments, a file, or standard input, in that order of preference."""
    if args.texts:
        return args.texts
    lines = Path(args.file).read_text().splitlines() if args.file else sys.stdin.read().splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise ValueError("No reviews given: pass them as arguments, with --file, or on standard input.")
    return texts


def train_command(args, argv) -> None:
    cfg = make_config(args.profile, **parse_overrides(args.set))
    run_training(cfg, args.variants, resume=args.resume, command="python -m peft_sentiment " + shlex.join(argv))


def predict_command(args, argv) -> None:
    texts = read_texts(args)
    # predicting only: bitsandbytes' packed bf16 kernel where the CPU has it (1.28x faster, logits within 0.025)
    model, tokenizer = inference.load_adapter(args.adapter, cpu_inference_kernel=True)
    meta = inference.check_adapter_dir(args.adapter)
    print(inference.describe_prediction_precision(meta, args.precision), file=sys.stderr)
    outputs = inference.predict_reviews(model, tokenizer, texts, **inference.encoding(meta, args.precision))
    for text, out in zip(texts, outputs, strict=True):
        print(f"{out['label']}\t{out['probability']:.4f}\t{text[:80]}")


def evaluate_command(args, argv) -> None:
    result = evaluate_adapter(args.adapter, parse_overrides(args.set), args.precision)
    print(result["precision"], file=sys.stderr)
    m = result["metrics"]
    low, high = m["accuracy_ci95"]
    print(f"accuracy {m['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}) on {m['test_reviews']} reviews")
    print({k: round(v, 4) for k, v in m.items() if k in ("f1_macro", "precision", "recall", "f1", "roc_auc")})
    if args.out:
        recording.write_json_atomic(result, Path(args.out))


def merge_command(args, argv) -> None:
    folder = inference.merge_adapter(args.adapter, args.out_dir)
    print(
        f"merged {args.adapter} into its base: {folder} (load with transformers.pipeline('text-classification', model={str(folder)!r}))"
    )


def report_command(args, argv) -> None:
    for folder in args.records_dirs:
        print(report.results_section(folder), end="\n\n")
        if args.plots:
            records = recording.read_records(folder, order=VARIANTS)
            print(report.analysis_table(records).to_string(float_format=report.format_cell), end="\n\n")
            cost_plot = plots.plot_accuracy_vs_cost(records, recording.read_baselines(folder))
            cost_plot.savefig(Path(folder) / "accuracy_vs_cost.png", dpi=120)
            plots.plot_analysis(records).savefig(Path(folder) / "analysis.png", dpi=110)
            print(f"wrote {Path(folder) / 'accuracy_vs_cost.png'} and {Path(folder) / 'analysis.png'}")
    if args.readme:
        report.update_readme(args.readme, args.records_dirs)


def profile_command(args, argv) -> None:
    name, why = choose_profile()
    cfg = make_config(name)  # an unknown $PEFT_PROFILE stops here, with the valid names
    others = "|".join(p for p in PROFILES if p != name)
    print(f"Profile '{name}': {why} ({PROFILE_ENV}={others} chooses another).", file=sys.stderr)
    print(f"  {PROFILE_COSTS[name]}", file=sys.stderr)
    print(f"  This machine: {hardware.describe_precision(cfg.precision)}.", file=sys.stderr)
    print(name)


COMMANDS = {"train": train_command, "predict": predict_command, "evaluate": evaluate_command, "merge": merge_command,
            "report": report_command, "profile": profile_command}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args, argv)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
