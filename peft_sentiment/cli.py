"""Command line: `python -m peft_sentiment train|evaluate|predict|merge|report`, on the notebook's profiles and parameters.

Exit codes: 0 success, 2 bad input (unknown name, missing file, bad value: the message says what to
do), 1 anything else.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
from pathlib import Path

import torch

from peft_sentiment import VARIANTS, data, hardware, inference, metrics, models, report, train
from peft_sentiment.config import Config, make_config

EXAMPLES = """examples:
  python -m peft_sentiment train --profile smoke
  python -m peft_sentiment train --profile cpu --variants lora --set lr_lora=3e-4 --resume
  python -m peft_sentiment evaluate saved_f32_lora --set test_size=200
  python -m peft_sentiment predict saved_f32_lora "A moving, beautifully shot film."
  python -m peft_sentiment merge saved_f32_lora merged_f32
  echo "Dull and far too long." | python -m peft_sentiment predict saved_nf4_lora
  python -m peft_sentiment report results/cpu --readme README.md
"""


def parse_overrides(pairs: list[str]) -> dict:
    """`name=value` pairs as config overrides; values are Python literals (3e-4, None, 'gpt2'), else strings."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected NAME=VALUE, for example --set lora_r=8.")
        try:
            overrides[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name.strip()] = value
    return overrides


def run_training(cfg: Config, variants=VARIANTS, *, resume: bool = False, command: str | None = None, splits=None) -> list[dict]:
    """The notebook's pipeline without the narration: data, model, each variant trained, recorded, saved.

    Runs as one process, or as several under `torchrun` / `accelerate launch` (DDP through the
    Trainer): every process trains on its share of each batch, only the first writes records and adapters.
    """
    from accelerate import PartialState

    # joins the process group when launched by torchrun/accelerate (gloo on CPUs); trivial otherwise
    state = PartialState(cpu=not torch.cuda.is_available())
    report.check_writable(cfg.records_dir, cfg.adapter_dir_f32, cfg.adapter_dir_nf4, cfg.work_dir)
    if state.is_main_process:
        print(f"profile {cfg.profile}: {hardware.describe_precision(cfg.precision)}")
    if splits is None:
        splits = data.prepare_splits(cfg, data.load_imdb(cfg.data_dir))
    with state.main_process_first():  # one process builds models and tokenization caches, the others reuse them
        model_path = models.resolve_model(cfg.model_name, texts=splits["train"]["text"])
        models.check_max_length(model_path, cfg.max_length)
        tokenizer = models.load_tokenizer(model_path)
        tokenized = data.tokenize_reviews(splits, tokenizer, cfg.max_length, cfg.prompt_suffix)
    lora_config, bnb_config = models.make_lora_config(cfg, model_path), models.make_bnb_config(cfg)
    records = []
    for variant in variants:
        model = train.build_variant(variant, model_path, tokenizer, seed=cfg.seed, lora_config=lora_config, bnb_config=bnb_config)
        _, record = train.train_variant(cfg, variant, model, tokenizer, tokenized, resume=resume)
        record |= {"command": command, "processes": state.num_processes}  # with several, tokens and times are rank 0's
        if state.is_main_process:
            report.write_record(record, cfg.records_dir)
            if variant != "head_only":
                meta = inference.adapter_meta(cfg, variant, model_path, bnb_config if variant == "nf4_lora" else None)
                inference.save_adapter(model, tokenizer, cfg.adapter_dir(variant), meta, record)
            m = record["metrics"]
            print(f"{variant}: accuracy {m['accuracy']:.4f} (95% CI {m['accuracy_ci95'][0]:.4f}-{m['accuracy_ci95'][1]:.4f})")
        records.append(record)
    state.wait_for_everyone()
    return records


def evaluate_adapter(adapter: str, overrides: dict) -> dict:
    """Accuracy (with its 95% interval) and the other metrics of a saved adapter on its profile's test subset."""
    meta = inference.check_adapter_dir(adapter)
    cfg = make_config(meta["profile"], **overrides)
    test = data.prepare_splits(cfg, data.load_imdb(cfg.data_dir))["test"]
    model, tokenizer = inference.load_adapter(adapter)  # as trained: reproduces the record on every CPU
    out = inference.predict_reviews(
        model, tokenizer, test["text"], meta["max_length"], meta["prompt_suffix"], cfg.eval_batch_size, progress=True
    )
    probs = inference.pos_probabilities(out)
    m = metrics.classification_metrics(test["label"], probs)
    ci = metrics.accuracy_interval(m["accuracy"], len(probs))
    return {
        "adapter": str(adapter),
        "profile": cfg.profile,
        "metrics": m | {"accuracy_ci95": list(ci), "test_reviews": len(probs)},
        "nf4_kernel": models.nf4_kernel(model),
        "device": report.device_info(),
        "predictions": [round(p, 6) for p in probs],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m peft_sentiment",
        description="Fine-tune a decoder LM for IMDB sentiment (head-only, LoRA, NF4 LoRA), classify reviews, report results.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and evaluate variants; write records and adapters")
    t.add_argument("--profile", help="full | cpu | smoke (default: $PEFT_PROFILE, else full)")
    t.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="default: all three")
    t.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override one config value; repeatable")
    t.add_argument("--resume", action="store_true", help="continue LoRA variants from their last checkpoint")
    p = sub.add_parser("predict", help="classify reviews with a saved adapter; prints label and probability")
    p.add_argument("adapter", help="an adapter folder, e.g. saved_f32_lora")
    p.add_argument("texts", nargs="*", help="reviews; none = read --file, else standard input (one review per line)")
    p.add_argument("--file", help="a text file with one review per line")
    e = sub.add_parser("evaluate", help="evaluate a saved adapter on its profile's test subset; prints metrics")
    e.add_argument("adapter", help="an adapter folder, e.g. saved_f32_lora")
    e.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override the profile, e.g. test_size=200")
    e.add_argument("--out", help="also write the metrics and per-review probabilities to this JSON file")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            cfg = make_config(args.profile, **parse_overrides(args.set))
            command = "python -m peft_sentiment " + shlex.join(sys.argv[1:] if argv is None else argv)
            run_training(cfg, args.variants, resume=args.resume, command=command)
        elif args.command == "predict":
            texts = read_texts(args)
            # predicting only: bitsandbytes' packed bf16 kernel where the CPU has it (1.28x faster, logits within 0.025)
            model, tokenizer = inference.load_adapter(args.adapter, cpu_inference_kernel=True)
            meta = inference.check_adapter_dir(args.adapter)
            for text, out in zip(
                texts, inference.predict_reviews(model, tokenizer, texts, meta["max_length"], meta["prompt_suffix"]), strict=True
            ):
                print(f"{out['label']}\t{out['probability']:.4f}\t{text[:80]}")
        elif args.command == "evaluate":
            result = evaluate_adapter(args.adapter, parse_overrides(args.set))
            low, high = result["metrics"]["accuracy_ci95"]
            print(
                f"accuracy {result['metrics']['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}) on {result['metrics']['test_reviews']} reviews"
            )
            print({k: round(v, 4) for k, v in result["metrics"].items() if k in ("precision", "recall", "f1", "roc_auc")})
            if args.out:
                report.write_json_atomic(result, Path(args.out))
        elif args.command == "merge":
            folder = inference.merge_adapter(args.adapter, args.out_dir)
            print(
                f"merged {args.adapter} into its base: {folder} (load with transformers.pipeline('text-classification', model={str(folder)!r}))"
            )
        elif args.command == "report":
            for folder in args.records_dirs:
                print(report.results_section(folder), end="\n\n")
                if args.plots:
                    records = report.read_records(folder)
                    print(report.analysis_table(records).to_string(float_format="{:.4f}".format), end="\n\n")
                    report.plot_accuracy_vs_cost(records, report.read_baselines(folder)).savefig(
                        Path(folder) / "accuracy_vs_cost.png", dpi=120
                    )
                    report.plot_analysis(records).savefig(Path(folder) / "analysis.png", dpi=110)
                    print(f"wrote {Path(folder) / 'accuracy_vs_cost.png'} and {Path(folder) / 'analysis.png'}")
            if args.readme:
                report.update_readme(args.readme, args.records_dirs)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
