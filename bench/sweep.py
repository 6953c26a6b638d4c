"""Learning rates tuned on validation, and accuracy against training cost (nothing here reads the test set).

    python bench/sweep.py --variant lora --lr 2e-4 1e-3           # ~35 min per rate on 2 CPU cores (cpu profile)
    python bench/sweep.py --variant head_only --lr 1e-4 3e-4 1e-3 3e-3 1e-2    # one frozen pass, then seconds per rate
    python bench/sweep.py --report --readme docs/benchmarks.md    # curves, table and chosen rates from the records

Each run trains one variant of the profile at one learning rate, everything else as the profile
says, with `--evals` validation passes on the profile's validation split (carved from train). Each
pass is stamped with the training seconds and peak memory so far (train.TrainClock), and the run is
written to results/<profile>/sweep/<variant>-lr<rate>.json. The profile's own records
(results/<profile>/<variant>.json) join the report as runs too, with the points they have.

The report answers "at equal training time, or at equal memory, which run is best?" on validation
accuracy, and names, per variant, the rate whose run ended best on validation.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shlex
import sys
import time
from pathlib import Path

from peft_sentiment import VARIANTS, models, plots, recording, report, train
from peft_sentiment.config import config_to_dict, make_config, parse_overrides
from peft_sentiment.features import split_features
from peft_sentiment.pipeline import prepare_data

LR_FIELD = {"head_only": "lr_head_only", "lora": "lr_lora", "nf4_lora": "lr_lora"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="config profile (default: cpu)")
    parser.add_argument("--variant", choices=VARIANTS, help="the variant to sweep")
    parser.add_argument("--lr", type=float, nargs="+", help="learning rates to try")
    parser.add_argument("--evals", type=int, default=4, help="validation passes per run (the curve's points)")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="other config overrides, as in the CLI")
    parser.add_argument("--resume", action="store_true", help="continue a LoRA run from its last checkpoint")
    parser.add_argument("--report", action="store_true", help="draw the curves and table from the records")
    parser.add_argument("--readme", help="with --report: regenerate the sweep block of this Markdown file (docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if not args.report and not (args.variant and args.lr):
        parser.error("give --variant and --lr to run a sweep, or --report to draw one")
    if any(lr <= 0 for lr in args.lr or ()):
        parser.error(f"learning rates must be positive, got {args.lr}")
    return args


def sweep_dir(cfg) -> Path:
    return Path(cfg.records_dir) / "sweep"


def run_name(cfg, variant: str, lr: float) -> str:
    """`lora-lr0.0005`, plus what `cfg` (with --set) changes from its profile: `lora-lr0.0005-lora_dropout0.0`."""
    changed = report.recipe_differences(config_to_dict(cfg), config_to_dict(make_config(cfg.profile)), variant)
    return "-".join([f"{variant}-lr{lr:g}", *(f"{key}{value}" for key, value in changed.items())])


def run_config(base, variant: str, lr: float, evals: int):
    """`base` with one learning rate changed, and outputs kept apart from the profile's own."""
    work = Path(base.work_dir) / "sweep" / run_name(base, variant, lr)
    return dataclasses.replace(
        base,
        **{LR_FIELD[variant]: lr},
        evals_per_run=evals,
        work_dir=str(work),
        adapter_dir_f32=str(work / "adapter"),  # a sweep never overwrites the committed adapters
        adapter_dir_nf4=str(work / "adapter"),
    )


def sweep_record(cfg, variant: str, lr: float, trainer, train_output, seconds: float, memory, model, command: str) -> dict:
    return {
        "variant": variant,
        "profile": cfg.profile,
        "learning_rate": lr,
        "config": config_to_dict(cfg),
        "model": cfg.model_name,
        "model_bytes": int(model.get_memory_footprint()),
        "train_loss": train_output.training_loss,
        "train_seconds": seconds,  # wall time of train(), validation passes included
        "peak_memory_bytes": {"train": memory.peak_bytes},
        "log_history": trainer.state.log_history,
        "device": recording.device_info(),
        "versions": recording.library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
    }


def sweep_lora(base, variant, rates, evals, tokenized, model_path, tokenizer, resume, command) -> list[dict]:
    records = []
    for lr in rates:
        cfg = run_config(base, variant, lr, evals)
        model = models.build_configured_variant(cfg, variant, model_path, tokenizer)
        args = train.make_training_args(cfg, variant)
        trainer = train.make_trainer(model, tokenizer, args, tokenized["train"], tokenized["validation"])
        output, training, checkpoint = train.fit(trainer, cfg, resume)
        record = sweep_record(cfg, variant, lr, trainer, output, training.seconds, training, model, command)
        records.append(write(record | {"resumed_from": checkpoint}, cfg))
    return records


def sweep_head(base, rates, evals, tokenized, model_path, tokenizer, command) -> list[dict]:
    """One frozen pass (measured, not read from a cache), then a fresh head per learning rate."""
    model = models.build_variant("head_only", model_path, tokenizer, seed=base.seed)
    model.to(train.make_training_args(base, "head_only").device)  # the frozen pass runs on the GPU when there is one
    initial_head = copy.deepcopy(model.score.state_dict())
    labels = {name: tokenized[name]["label"] for name in ("train", "validation")}
    records = []
    with train.PeakMemory() as memory:  # each run's peak includes the frozen pass it needs
        features, _, seconds = split_features(base, model, tokenizer, tokenized, ("train", "validation"), resume=False)
        for lr in rates:
            cfg = run_config(base, "head_only", lr, evals)
            model.score.load_state_dict(initial_head)
            start = time.perf_counter()
            trainer, output = train.fit_head(cfg, model, features, labels, memory, clock_offset=seconds["train"])
            head_seconds = time.perf_counter() - start
            # the cost of this run: the frozen pass over train (validation features are evaluation) plus the head
            record = sweep_record(cfg, "head_only", lr, trainer, output, seconds["train"] + head_seconds, memory, model, command)
            records.append(write(record, cfg))
    return records


def write(record: dict, cfg) -> dict:
    path = sweep_dir(cfg) / f"{run_name(cfg, record['variant'], record['learning_rate'])}.json"
    recording.write_json_atomic(record, path)
    final = [e for e in record["log_history"] if "eval_accuracy" in e][-1]
    print(f"{record['variant']} lr {record['learning_rate']:g}: validation accuracy {final['eval_accuracy']:.4f} -> {path}")
    return record


def best_settings(curves: list[dict]) -> dict[str, dict]:
    """Per variant, the run whose last validation pass scored best (ties: the first, the smaller rate)."""
    best = {}
    for c in curves:
        final = c["points"][-1][1]
        if c["variant"] not in best or final > best[c["variant"]]["final"]:
            best[c["variant"]] = {"setting": c["setting"], "final": final}
    return best


def sweep_section(cfg, runs: list[dict], plot_path: Path) -> str:
    curves = report.validation_curves(runs, reference=config_to_dict(cfg))
    baseline = next(iter(recording.read_baselines(cfg.records_dir)), None)
    lines = [
        f"**Profile `{cfg.profile}`, validation split ({cfg.val_size} reviews carved from train; the test set is not read), "
        f"{runs[0]['device']['name']} ({runs[0]['device'].get('cores', runs[0]['device'].get('count'))} "
        f"{'cores' if runs[0]['device']['type'] == 'cpu' else 'GPUs'}).** Per variant, the best validation accuracy any "
        "of its runs reached within a training-time budget (steps only; validation passes excluded) and within a "
        "peak-memory budget; the budgets are each variant's own least time and memory.",
        "",
        report.compute_matched_table(curves),
        "",
    ]
    if baseline:
        lines.append(f"TF-IDF + LR on the same validation reviews: {max(baseline['validation_accuracy_by_C'].values()):.1%}.")
    for variant, best in best_settings(curves).items():
        finals = "; ".join(
            f"{c['setting']}{' (profile run)' if 'profile run' in c['label'] else ''}: {c['points'][-1][1]:.1%}"
            for c in curves
            if c["variant"] == variant
        )
        lines.append(
            f"{recording.VARIANT_LABELS[variant]}: best final validation accuracy with {best['setting']} "
            f"({best['final']:.1%}); by run: {finals}; the profile uses lr {cfg.learning_rate(variant):g}."
        )
    if any(r.get("source") == "profile run" for r in runs) and runs[0]["device"]["type"] == "cpu":
        lines.append(
            "The profile runs' memory is the RSS of the one process that trained them one after another "
            "(bench/accuracy.py's or the notebook's), so it includes what earlier variants left: an upper bound. "
            "The sweep's runs each ran alone."
        )
    half_width = 1.96 * (0.9 * 0.1 / cfg.val_size) ** 0.5
    lines += [
        f"With {cfg.val_size} validation reviews a difference under ~{half_width:.0%} is within noise (95%, at 90% accuracy).",
        "",
        f"![accuracy vs training cost]({plot_path.as_posix()})",
        "",
        "Reproduce: " + ", ".join(f"`{c}`" for c in sorted({r["command"] for r in runs if r.get("command")})),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = "python " + shlex.join(["bench/sweep.py", *argv])
    cfg = make_config(args.profile, **parse_overrides(args.set))
    if args.report:
        runs = report.read_validation_runs(cfg.records_dir)
        if not runs:
            raise SystemExit(f"No records in {cfg.records_dir} or {sweep_dir(cfg)}: run a sweep first (see --help).")
        curves = report.validation_curves(runs, reference=config_to_dict(cfg))
        baseline = next(iter(recording.read_baselines(cfg.records_dir)), None)
        base_acc = max(baseline["validation_accuracy_by_C"].values()) if baseline else None
        plot_path = sweep_dir(cfg) / "curves.png"
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        device = runs[0]["device"]
        fig = plots.plot_validation_curves(curves, base_acc, f"profile {cfg.profile} on {device['name']}")
        fig.savefig(plot_path, dpi=120)
        section = sweep_section(cfg, runs, plot_path)
        print(section)
        if args.readme:
            report.replace_block(args.readme, "sweep", section)
        return 0
    _, model_path, tokenizer, tokenized = prepare_data(cfg)
    if args.variant == "head_only":
        sweep_head(cfg, args.lr, args.evals, tokenized, model_path, tokenizer, command)
    else:
        sweep_lora(cfg, args.variant, args.lr, args.evals, tokenized, model_path, tokenizer, args.resume, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
