"""Learning rates tuned on validation, and accuracy against training cost (nothing here reads the test set).

    python bench/sweep.py --variant lora --lr 2e-4 1e-3           # ~35 min per rate on 2 CPU cores (cpu profile)
    python bench/sweep.py --variant head_only --lr 1e-4 3e-4 1e-3 3e-3 1e-2    # one frozen pass, then seconds per rate
    python bench/sweep.py --report --readme docs/benchmarks.md    # curves, table and chosen rates from the records

Each run trains one variant of the profile at one learning rate, everything else as the profile
says, with `--evals` validation passes on the profile's validation split (carved from train). Each
pass is stamped with the training seconds and peak memory so far (TrainClock, below), and the run is
written to results/<profile>/sweep/<variant>-lr<rate>.json. The profile's own records
(results/<profile>/<variant>.json) join the report as runs too, with the points they have.

The report answers "at equal training time, or at equal memory, which run is best?" on validation
accuracy, and names, per variant, the rate whose run ended best on validation.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from peft_sentiment import hardware, models, recording, report, train
from peft_sentiment.config import config_to_dict, make_config, parse_overrides
from peft_sentiment.features import split_features
from peft_sentiment.pipeline import prepare_data
from peft_sentiment.variants import VARIANTS, get_variant, label_of

# Config fields that do not change what a run learns (where it writes, how often it validates); the
# variants' learning-rate fields are left out too, since a run's label names its rate anyway.
# (the test subset too: the sweep scores validation only)
NOT_RECIPE = {"profile", "data_dir", "work_dir", "records_dir", "save_dir", "evals_per_run", "checkpoint_every", "test_size",
              "test_seed", "retired_test_subset"}  # fmt: skip

# What records from before a setting existed ran with (sweep records predate truncation settings)
SETTINGS_BEFORE_THEY_EXISTED = {"truncation": "head", "truncation_head_share": 0.25}
RENAMED_FIELDS = {"lr_head": "lr_head_only"}  # config field -> its name in records written before the rename


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="config profile (default: cpu)")
    parser.add_argument("--variant", choices=list(VARIANTS), help="the variant to sweep")
    parser.add_argument("--lr", type=float, nargs="+", help="learning rates to try")
    parser.add_argument("--evals", type=int, default=4, help="validation passes per run (the curve's points)")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="other config overrides, as in the CLI")
    parser.add_argument("--resume", action="store_true", help="continue a Trainer run from its last checkpoint")
    parser.add_argument("--report", action="store_true", help="draw the curves and table from the records")
    parser.add_argument("--readme", help="with --report: regenerate the sweep block of this Markdown file (docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if not args.report and not (args.variant and args.lr):
        parser.error("give --variant and --lr to run a sweep, or --report to draw one")
    if any(lr <= 0 for lr in args.lr or ()):
        parser.error(f"learning rates must be positive, got {args.lr}")
    return args


class TrainClock(TrainerCallback):
    """Stamps every validation result in `log_history` with the training seconds and peak memory so far.

    The seconds count optimizer steps only, not validation passes or checkpoint saves, so each
    validation accuracy can be plotted against what training had cost by then (validation_curves).
    `memory` is a running `train.PeakMemory`; `offset` is work paid before the first step (head-only:
    the frozen forward pass). On resume the clock continues from the last stamp, which the checkpoint's
    log_history keeps (the steps between that stamp and the checkpoint go uncounted: resumed curves
    undercount a little).
    """

    def __init__(self, memory: train.PeakMemory, offset: float = 0.0):
        self.memory, self.offset = memory, offset
        self.seconds = offset

    def on_train_begin(self, args, state, control, **kwargs):
        stamps = [h["train_seconds"] for h in state.log_history if "train_seconds" in h]
        self.seconds = stamps[-1] if stamps else self.offset

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._step_start

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        last = state.log_history[-1]  # Trainer.evaluate logs its metrics just before this event
        if "eval_accuracy" in last:
            last |= {"train_seconds": self.seconds, "peak_memory_bytes": self.memory.current_peak()}


# ----------------------------------------------------------------------------------------------
# Running the sweep


def sweep_dir(cfg) -> Path:
    return Path(cfg.records_dir) / "sweep"


def run_name(cfg, variant: str, lr: float) -> str:
    """`lora-lr0.0005`, plus what `cfg` (with --set) changes from its profile: `lora-lr0.0005-lora_dropout0.0`."""
    changed = recipe_differences(config_to_dict(cfg), config_to_dict(make_config(cfg.profile)), variant)
    return "-".join([f"{variant}-lr{lr:g}", *(f"{key}{value}" for key, value in changed.items())])


def run_config(base, variant, lr: float, evals: int):
    """`base` with `variant`'s learning rate changed, and outputs kept apart from the profile's own."""
    work = Path(base.work_dir) / "sweep" / run_name(base, variant.name, lr)
    return dataclasses.replace(
        base,
        **{variant.learning_rate: lr},
        evals_per_run=evals,
        work_dir=str(work),
        save_dir=str(work),  # a sweep never overwrites the committed adapters
    )


def sweep_record(cfg, variant, lr: float, trainer, train_output, seconds: float, peak_bytes: int, model, command: str) -> dict:
    return {
        "variant": variant.name,
        "profile": cfg.profile,
        "learning_rate": lr,
        "config": config_to_dict(cfg),
        "model": cfg.model_name,
        "model_bytes": int(model.get_memory_footprint()),
        "train_loss": train_output.training_loss,
        "train_seconds": seconds,  # wall time of train(), validation passes included
        "peak_memory_bytes": {"train": peak_bytes},
        "log_history": trainer.state.log_history,
        "device": hardware.device_info(),
        "versions": recording.library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
    }


def sweep_trainer(base, variant, rates, evals, prepared, resume, command) -> list[dict]:
    """One run per learning rate of a variant that trains through the model (LoRA, NF4 LoRA, full fine-tuning)."""
    records, tokenized = [], prepared.tokenized
    for lr in rates:
        cfg = run_config(base, variant, lr, evals)
        model = models.build_model(cfg, variant, prepared.model_path, prepared.tokenizer, prepared.labels)
        args = train.make_training_args(cfg, variant)
        trainer = train.make_trainer(model, prepared.tokenizer, args, tokenized["train"], tokenized["validation"])
        with train.PeakMemory() as memory:  # the clock's running peak; fit measures the record's own inside it
            trainer.add_callback(TrainClock(memory))
            output, training, checkpoint, _ = train.fit(trainer, cfg, resume)
        record = sweep_record(cfg, variant, lr, trainer, output, training.seconds, training.peak_bytes, model, command)
        records.append(write(record | {"resumed_from": checkpoint}, cfg))
    return records


def sweep_head(base, variant, rates, evals, prepared, command) -> list[dict]:
    """One frozen pass (measured, not read from a cache), then a fresh head per learning rate."""
    model = models.build_model(base, variant, prepared.model_path, prepared.tokenizer, prepared.labels)
    model.to(train.make_training_args(base, variant).device)  # the frozen pass runs on the GPU when there is one
    initial_head = copy.deepcopy(model.score.state_dict())
    tokenized, folder = prepared.tokenized, Path(base.work_dir) / variant.name
    labels = {name: tokenized[name]["label"] for name in ("train", "validation")}
    records = []
    with train.PeakMemory() as memory:  # each run's peak includes the frozen pass it needs
        features, _, seconds = split_features(
            base, model, prepared.tokenizer, tokenized, ("train", "validation"), resume=False, folder=folder
        )
        for lr in rates:
            cfg = run_config(base, variant, lr, evals)
            model.score.load_state_dict(initial_head)
            start = time.perf_counter()
            clock = TrainClock(memory, offset=seconds["train"])
            trainer, output = train.fit_head(cfg, variant, model, features, labels, callbacks=[clock])
            head_seconds = time.perf_counter() - start
            # the cost of this run: the frozen pass over train (validation features are evaluation) plus the head;
            # the peak so far (read inside the block: on a GPU its peak_bytes is set on exit)
            cost = seconds["train"] + head_seconds
            record = sweep_record(cfg, variant, lr, trainer, output, cost, memory.current_peak(), model, command)
            records.append(write(record, cfg))
    return records


def write(record: dict, cfg) -> dict:
    path = sweep_dir(cfg) / f"{run_name(cfg, record['variant'], record['learning_rate'])}.json"
    recording.write_json_atomic(record, path)
    final = [e for e in record["log_history"] if "eval_accuracy" in e][-1]
    print(f"{record['variant']} lr {record['learning_rate']:g}: validation accuracy {final['eval_accuracy']:.4f} -> {path}")
    return record


# ----------------------------------------------------------------------------------------------
# The report: validation curves against training cost, from the sweep's records and the profile's


def recipe_differences(config: dict, reference: dict, variant: str) -> dict:
    """The settings in which `config` trains `variant` differently from `reference` (a profile's config)."""
    v = get_variant(variant)
    reads = {"lora_": v.trains == "adapter", "nf4_": v.quantization is not None, "head_": v.trains == "head"}
    unused = tuple(prefix for prefix, read in reads.items() if not read)  # settings the variant never reads
    not_recipe = NOT_RECIPE | {d.learning_rate for d in VARIANTS.values()}
    config = SETTINGS_BEFORE_THEY_EXISTED | config
    if config.get("truncation") != "head+tail":
        config.pop("truncation_head_share", None)  # only head+tail reads it
    return {
        key: value
        for key, value in config.items()
        if key in reference and value != reference[key] and key not in not_recipe and not key.startswith(unused)
    }


def learning_rate_of(record: dict) -> float:
    """The learning rate a record's run trained with (sweep records name it; profile runs have it in their config)."""
    field, config = get_variant(record["variant"]).learning_rate, record["config"]
    return record.get("learning_rate") or config.get(field, config.get(RENAMED_FIELDS.get(field)))


def read_validation_runs(records_dir: str) -> list[dict]:
    """The runs with validation passes: this script's (in `records_dir`/sweep) and the profile's own.

    In variant, then learning-rate order; the profile's records are marked `source: profile run`.
    """
    runs = [json.loads(p.read_text()) for p in sorted((Path(records_dir) / "sweep").glob("*.json"))]
    if Path(records_dir).is_dir():
        runs += [r | {"source": "profile run"} for r in recording.read_records(records_dir)]
    order = list(VARIANTS)
    return sorted(runs, key=lambda r: (order.index(r["variant"]), learning_rate_of(r)))


def validation_curves(records: list[dict], reference: dict | None = None) -> list[dict]:
    """Per training run: validation accuracy against training seconds and peak memory so far.

    Points come from the `log_history` stamps that TrainClock adds (training steps only, not
    validation passes). Records from before it have one point: the run's end, with its training time
    minus its validation passes (checkpoint saves stay in: slightly late). Each run's `setting` is its
    learning rate plus, given the profile's config as `reference`, whatever else it changed.
    """
    curves = []
    for r in records:
        evals = [e for e in r["log_history"] if "eval_accuracy" in e]
        if not evals:
            continue
        if all("train_seconds" in e for e in evals):
            points = [(e["train_seconds"], e["eval_accuracy"], e["peak_memory_bytes"]) for e in evals]
        else:
            seconds = r["train_seconds"] - sum(e.get("eval_runtime", 0.0) for e in evals)
            points = [(seconds, evals[-1]["eval_accuracy"], r["peak_memory_bytes"]["train"])]
        lr = learning_rate_of(r)
        changed = recipe_differences(r["config"], reference, r["variant"]) if reference else {}
        setting = ", ".join([f"lr {lr:g}", *(f"{key} {value}" for key, value in changed.items())])
        label = f"{label_of(r['variant'])}, {setting}" + (f" ({r['source']})" if r.get("source") else "")
        curves.append({"variant": r["variant"], "label": label, "learning_rate": lr, "setting": setting, "points": points})
    return curves


def best_within(curve: dict, seconds: float | None = None, memory_bytes: float | None = None) -> float | None:
    """The best validation accuracy `curve` reached within a training-time and/or memory budget (None: never)."""
    inside = [
        acc
        for t, acc, mem in curve["points"]
        if (seconds is None or t <= seconds * 1.0001) and (memory_bytes is None or mem <= memory_bytes * 1.0001)
    ]
    return max(inside) if inside else None


def compute_matched_table(curves: list[dict]) -> str:
    """Markdown: per variant, the best validation accuracy any of its runs reached within each budget.

    The budgets are each variant's own cost (the least training time and peak memory any of its
    runs needed), so each column asks: with what this variant needs, what do the others reach?
    """
    variants = list(dict.fromkeys(c["variant"] for c in curves))
    times = {v: min(c["points"][-1][0] for c in curves if c["variant"] == v) for v in variants}
    memories = {v: min(c["points"][-1][2] for c in curves if c["variant"] == v) for v in variants}
    columns = [f"<= {times[v]:,.0f} s ({label_of(v)}'s shortest run)" for v in variants]
    columns += [f"<= {memories[v] / 1e9:.1f} GB ({label_of(v)}'s smallest peak)" for v in variants]
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|"]
    for v in variants:
        cells = []
        for budget in [{"seconds": times[w]} for w in variants] + [{"memory_bytes": memories[w]} for w in variants]:
            reached = [(best_within(c, **budget), c["setting"]) for c in curves if c["variant"] == v]
            reached = [(acc, setting) for acc, setting in reached if acc is not None]
            acc, setting = max(reached, key=lambda x: x[0]) if reached else (None, None)
            cells.append("-" if acc is None else f"{acc:.1%} ({setting})")
        lines.append(f"| {label_of(v)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_validation_curves(curves: list[dict], baseline_accuracy: float | None = None, hardware: str = ""):
    """Validation accuracy against training time, one panel per variant, one labelled line per run.

    Each run's label says what it changed (learning rate, ...) and its peak memory; the profile's own run is dashed.
    """
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(c["variant"] for c in curves))
    fig, axes = plt.subplots(1, max(len(variants), 1), figsize=(4.4 * max(len(variants), 1), 4), sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=False):
        runs = sorted((c for c in curves if c["variant"] == variant), key=lambda c: c["learning_rate"])
        for i, c in enumerate(runs):
            t, acc, mem = zip(*c["points"], strict=True)
            profile_run = "profile run" in c["label"]
            ax.plot(
                t, acc, "--" if profile_run else "-", marker="o", color=plt.get_cmap("tab10")(i % 10),
                label=f"{c['setting']}{' (this run)' if profile_run else ''}, peak {mem[-1] / 1e9:.1f} GB",
            )  # fmt: skip
        if baseline_accuracy is not None:
            ax.axhline(baseline_accuracy, color="grey", linestyle=":", label="TF-IDF + LR")
        ax.set(title=label_of(variant), xlabel="training seconds (validation passes excluded)")
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set(ylabel="validation accuracy")
    fig.suptitle(f"Validation accuracy against training time{', ' + hardware if hardware else ''}", fontsize=10)
    fig.tight_layout()
    return fig


def best_settings(curves: list[dict]) -> dict[str, dict]:
    """Per variant, the run whose last validation pass scored best (ties: the first, the smaller rate)."""
    best = {}
    for c in curves:
        final = c["points"][-1][1]
        if c["variant"] not in best or final > best[c["variant"]]["final"]:
            best[c["variant"]] = {"setting": c["setting"], "final": final}
    return best


def sweep_section(cfg, runs: list[dict], plot_path: Path) -> str:
    curves = validation_curves(runs, reference=config_to_dict(cfg))
    baseline = next(iter(recording.read_baselines(cfg.records_dir)), None)
    lines = [
        f"**Profile `{cfg.profile}`, validation split ({cfg.val_size} reviews carved from train; the test set is not read), "
        f"{runs[0]['device']['name']} ({runs[0]['device'].get('cores', runs[0]['device'].get('count'))} "
        f"{'cores' if runs[0]['device']['type'] == 'cpu' else 'GPUs'}).** Per variant, the best validation accuracy any "
        "of its runs reached within a training-time budget (steps only; validation passes excluded) and within a "
        "peak-memory budget; the budgets are each variant's own least time and memory.",
        "",
        compute_matched_table(curves),
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
            f"{label_of(variant)}: best final validation accuracy with {best['setting']} "
            f"({best['final']:.1%}); by run: {finals}; the profile uses lr {getattr(cfg, get_variant(variant).learning_rate):g}."
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
        runs = read_validation_runs(cfg.records_dir)
        if not runs:
            raise SystemExit(f"No records in {cfg.records_dir} or {sweep_dir(cfg)}: run a sweep first (see --help).")
        curves = validation_curves(runs, reference=config_to_dict(cfg))
        baseline = next(iter(recording.read_baselines(cfg.records_dir)), None)
        base_acc = max(baseline["validation_accuracy_by_C"].values()) if baseline else None
        plot_path = sweep_dir(cfg) / "curves.png"
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        device = runs[0]["device"]
        fig = plot_validation_curves(curves, base_acc, f"profile {cfg.profile} on {device['name']}")
        fig.savefig(plot_path, dpi=120)
        section = sweep_section(cfg, runs, plot_path)
        print(section)
        if args.readme:
            report.replace_block(args.readme, "sweep", section)
        return 0
    variant, prepared = get_variant(args.variant), prepare_data(cfg)
    if variant.trains == "head":  # the head alone: one frozen pass serves every rate
        sweep_head(cfg, variant, args.lr, args.evals, prepared, command)
    else:
        sweep_trainer(cfg, variant, args.lr, args.evals, prepared, args.resume, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
