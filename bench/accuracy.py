"""Accuracy benchmark: head-only, LoRA and NF4 LoRA through the package's own code, plus a TF-IDF baseline.

    python bench/accuracy.py --profile cpu            # ~90 min on 2 CPU cores; writes results/cpu/
    python bench/accuracy.py --profile cpu --resume   # after a crash: keeps the variants already recorded

Writes one JSON record per variant (and results/<profile>/baselines/tfidf_logreg.json), the trained
adapters (saved_f32_lora/, saved_nf4_lora/ on non-smoke profiles) and accuracy_vs_cost.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from peft_sentiment import VARIANTS, data, inference, models, report, train
from peft_sentiment.config import config_to_dict, make_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="config profile (default: cpu)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--resume", action="store_true", help="skip variants whose record for this exact config exists")
    return parser.parse_args(argv)


def already_done(cfg, variant: str) -> bool:
    """True when a record of `variant` with this exact config is on disk."""
    path = Path(cfg.records_dir) / f"{variant}.json"
    return path.is_file() and json.loads(path.read_text())["config"] == config_to_dict(cfg)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python " + shlex.join(["bench/accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    cfg = make_config(args.profile)
    report.check_writable(cfg.records_dir, cfg.adapter_dir_f32, cfg.adapter_dir_nf4, cfg.work_dir)
    started = time.perf_counter()
    splits = data.prepare_splits(cfg, data.load_imdb(cfg.data_dir))
    print(f"profile {cfg.profile}: {len(splits['train'])} train / {len(splits['validation'])} val / {len(splits['test'])} test")

    baseline = train.train_tfidf_baseline(splits, cfg.seed)
    baseline["command"] = command
    report.write_json_atomic(baseline, Path(cfg.records_dir) / "baselines" / "tfidf_logreg.json")
    print(f"TF-IDF + LR: {baseline['metrics']['accuracy']:.4f} (C={baseline['C']}, {baseline['train_seconds']:.1f} s)")

    model_path = models.resolve_model(cfg.model_name, texts=splits["train"]["text"])
    models.check_max_length(model_path, cfg.max_length)
    tokenizer = models.load_tokenizer(model_path)
    tokenized = data.tokenize_reviews(splits, tokenizer, cfg.max_length, cfg.prompt_suffix)
    lora_config, bnb_config = models.make_lora_config(cfg, model_path), models.make_bnb_config(cfg)
    for variant in args.variants:
        if args.resume and already_done(cfg, variant):
            print(f"{variant}: recorded already, skipped (--resume)")
            continue
        model = train.build_variant(variant, model_path, tokenizer, seed=cfg.seed, lora_config=lora_config, bnb_config=bnb_config)
        trainer, record = train.train_variant(cfg, variant, model, tokenizer, tokenized)
        record["command"] = command
        report.write_record(record, cfg.records_dir)
        if variant != "head_only":
            quantization = bnb_config if variant == "nf4_lora" else None
            meta = inference.adapter_meta(cfg, variant, model_path, quantization)
            inference.save_adapter(model, tokenizer, cfg.adapter_dir(variant), meta, record)
        m = record["metrics"]
        print(f"{variant}: accuracy {m['accuracy']:.4f} {m['accuracy_ci95']}, train {record['train_seconds']:.0f} s")
        del model, trainer

    records = report.read_records(cfg.records_dir)
    fig = report.plot_accuracy_vs_cost(records, [baseline])
    fig.savefig(Path(cfg.records_dir) / "accuracy_vs_cost.png", dpi=120)
    print(report.markdown_table(records))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
