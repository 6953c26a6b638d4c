"""Tables, summaries and README blocks drawn from the records (`recording`); the figures are in `plots`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from peft_sentiment.metrics import expected_calibration_error, paired_difference
from peft_sentiment.recording import ACCURACY_RUN_FILE, VARIANT_LABELS, read_baselines, read_records


def compare_variants(records: list[dict]):
    """One row per variant: quality, size, cost (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for r in records:
        low, high = r["metrics"]["accuracy_ci95"]
        rows.append({
            "variant": VARIANT_LABELS.get(r["variant"], r["variant"]),
            "accuracy": r["metrics"]["accuracy"],
            "95% CI": f"{low:.3f}-{high:.3f}",
            "F1": r["metrics"]["f1"],
            "ROC-AUC": r["metrics"]["roc_auc"],
            "trainable params": r["params"]["trainable"],
            "model MB": r["model_bytes"] / 1e6,
            "train s": r["train_seconds"],
            "peak train MB": r["peak_memory_bytes"]["train"] / 1e6,
            "train tokens/s": r["train_tokens_per_s"],
            "eval tokens/s": r["eval_tokens_per_s"],
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("variant")


def markdown_table(records: list[dict]) -> str:
    """The comparison as a Markdown table (for the README and model cards)."""
    table = compare_variants(records)
    header = "| variant | " + " | ".join(table.columns) + " |"
    lines = [header, "|" + "---|" * (len(table.columns) + 1)]
    for name, row in table.iterrows():
        cells = [format_cell(row[c]) for c in table.columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_cell(value) -> str:
    """Numbers at a precision a reader can use."""
    if isinstance(value, str):
        return value
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}"


# The results this project must beat: the reference notebook's, full IMDB on GPT-2 (project brief, README).
REFERENCE_ACCURACY = {"head_only": 0.83, "lora": 0.90, "nf4_lora": 0.88}


def describe_run(cfg, model_path: str, tokenized, precision: str) -> str:
    """Markdown: what this run trains and on what, from its config and data (true on every profile)."""
    from peft_sentiment.catalog import SHORT_NAMES, WEIGHTS_SOURCE
    from peft_sentiment.data import truncation_stats

    model = f"`{cfg.model_name}`" + (f": {SHORT_NAMES[cfg.model_name]}" if cfg.model_name in SHORT_NAMES else "")
    sizes = ", ".join(f"{len(tokenized[s]):,} {s}" for s in ("train", "validation", "test"))
    cut = truncation_stats(tokenized["test"], cfg.max_length)
    keep = {
        "head": "its start",
        "tail": "its end",
        "head+tail": f"its first {cfg.truncation_head_share:.0%} and last {1 - cfg.truncation_head_share:.0%}",
    }[cfg.truncation]
    suffix = f"the prompt suffix {cfg.prompt_suffix!r} appended" if cfg.prompt_suffix else "no prompt suffix (the review alone)"
    lines = [
        f"**This run** (profile `{cfg.profile}`): model {model}.",
        f"Weights: {WEIGHTS_SOURCE[cfg.model_name]}." if cfg.model_name in WEIGHTS_SOURCE else f"Loaded from `{model_path}`.",
        f"Reviews: {sizes} (balanced, seed {cfg.seed}).",
        f"Each review is cut to {cfg.max_length} tokens keeping {keep} ({cut['truncated_fraction']:.0%} of the test reviews "
        f"are longer), with {suffix}.",
        f"LoRA: rank {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout}; {precision}.",
    ]
    return " ".join(lines)


def summarize_results(records: list[dict], baselines: list[dict] = ()) -> str:
    """What the run found, against the reference and between variants, drawn from the records themselves.

    Which differences are real is judged on the same test reviews, pairwise (exact McNemar test on the
    reviews where two classifiers disagree): overlapping intervals alone would miss real paired differences.
    """
    by_variant = {r["variant"]: r for r in records}
    lines = []
    best = max(records, key=lambda r: r["metrics"]["accuracy"])
    first = records[0]
    lines.append(
        f"- Best test accuracy: {VARIANT_LABELS[best['variant']]} at {best['metrics']['accuracy']:.1%} "
        f"on {best['metrics']['test_reviews']:,} reviews (profile `{best['profile']}`, {best['device']['name']})."
    )
    like_for_like = first["profile"] == "full" and first["config"].get("model_name") == "gpt2"
    for r in records:
        low, high = r["metrics"]["accuracy_ci95"]
        line = (
            f"- {VARIANT_LABELS[r['variant']]}: {r['metrics']['accuracy']:.1%} (95% CI {low:.1%}-{high:.1%}), "
            f"{r['params']['trainable']:,} trainable parameters, {r['train_seconds']:.0f} s of training"
        )
        if r["variant"] in REFERENCE_ACCURACY:
            ref = REFERENCE_ACCURACY[r["variant"]]
            side = "above" if low > ref else "below" if high < ref else "level with"
            line += f"; {side} the reference's {ref:.0%}" + (" (inside the interval)" if side == "level with" else "")
        lines.append(line + ".")
    if not like_for_like:
        lines.append(
            f"  The reference is GPT-2 on all 25,000 test reviews; this run is `{first['config'].get('model_name')}` on "
            f"{first['metrics']['test_reviews']:,}: a bar to clear, not a like-for-like comparison."
        )
    labels = first.get("test_labels")
    pairs = [("lora", "head_only", "LoRA vs head-only"), ("nf4_lora", "lora", "NF4 LoRA vs LoRA")]
    for a, b, name in pairs:
        if a not in by_variant or b not in by_variant:
            continue
        ra, rb = by_variant[a], by_variant[b]
        gap = ra["metrics"]["accuracy"] - rb["metrics"]["accuracy"]
        line = f"- {name}: {gap * 100:+.1f} points"
        if labels is not None:
            d = paired_difference(labels, ra["predictions"], rb["predictions"])
            verdict = "a real difference" if d["p_value"] < 0.05 else "not distinguishable on this test set"
            line += (
                f"; {d['only_a']} reviews only {VARIANT_LABELS[a]} gets right, {d['only_b']} only {VARIANT_LABELS[b]} "
                f"(exact McNemar p = {d['p_value']:.2g}): {verdict}"
            )
        lines.append(line + ".")
    if "lora" in by_variant and "nf4_lora" in by_variant:
        lora, nf4 = by_variant["lora"], by_variant["nf4_lora"]
        lines.append(
            f"- What NF4 buys: model weights {nf4['model_bytes'] / lora['model_bytes']:.0%} of the fp32 model's bytes, "
            f"peak training memory {nf4['peak_memory_bytes']['train'] / lora['peak_memory_bytes']['train']:.0%} of LoRA's, "
            f"for x{nf4['train_seconds'] / lora['train_seconds']:.2f} the training time (de-quantizing and recomputing "
            "checkpointed activations)."
        )
    for b in baselines:
        beaten = [VARIANT_LABELS[r["variant"]] for r in records if r["metrics"]["accuracy_ci95"][0] > b["metrics"]["accuracy"]]
        lines.append(
            f"- TF-IDF + logistic regression on the same reviews: {b['metrics']['accuracy']:.1%} in {b['train_seconds']:.0f} s; "
            + (
                f"clearly above it (interval above its accuracy): {', '.join(beaten)}."
                if beaten
                else "no variant is clearly above it."
            )
        )
    return "\n".join(lines)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def results_section(records_dir: str) -> str:
    """The README's block for one records folder: what ran where, then the table."""
    records = read_records(records_dir)
    if not records:
        return f"No records in `{records_dir}`."
    first, cfg = records[0], records[0]["config"]
    rows = [
        f"**Profile `{first['profile']}`**: model `{cfg['model_name']}`, IMDB train {cfg['train_size'] or 'all'}"
        f" / validation {cfg['val_size']} / test {first['metrics']['test_reviews']} reviews (balanced, seed {cfg['seed']}), "
        f"max length {cfg['max_length']} ({cfg.get('truncation', 'head')} truncation); {first['device']['name']} ({first['device'].get('cores', first['device'].get('count'))} "
        f"{'cores' if first['device']['type'] == 'cpu' else 'GPUs'}), {first['created'][:10]}.",
        "",
        markdown_table(records),
    ]
    for b in read_baselines(records_dir):
        low, high = b["metrics"]["accuracy_ci95"]
        rows.append(
            f"| TF-IDF + LR (baseline) | {b['metrics']['accuracy']:.3f} | {low:.3f}-{high:.3f} | {b['metrics']['f1']:.3f} | "
            f"{b['metrics']['roc_auc']:.3f} | - | - | {b['train_seconds']:.0f} | {b['peak_memory_bytes']['train'] / 1e6:,.0f} | - | - |"
        )
    commands = sorted({r["command"] for r in [*records, *read_baselines(records_dir)] if r.get("command")})
    if commands:
        rows += ["", "Reproduce: " + ", ".join(f"`{c}`" for c in commands)]
    run_path = Path(records_dir) / ACCURACY_RUN_FILE
    run = json.loads(run_path.read_text()) if run_path.is_file() else None
    if run and {r.get("command") for r in records} == {run["command"]}:  # bench/accuracy's run made these records
        part = " (resumed: this part only)" if run["resumed"] else ""
        rows += [
            "",
            f"`{run['command']}` took {run['total_seconds'] / 60:.1f} min{part} on {run['device']['name']}, {run['created'][:10]}.",
        ]
    rows += ["", "What they say (generated from the records):", "", summarize_results(records, read_baselines(records_dir))]
    for name, what in (("accuracy_vs_cost.png", "accuracy vs cost"), ("analysis.png", "errors, ROC, length, calibration")):
        if (Path(records_dir) / name).is_file():
            rows += ["", f"![{what}]({Path(records_dir).as_posix()}/{name})"]
    return "\n".join(rows)


def recorded_test_split(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, P(pos), token counts before truncation) of a record's test reviews, in test order."""
    missing = [k for k in ("test_labels", "test_n_tokens") if k not in record]
    if missing:
        raise ValueError(
            f"The {record['variant']} record lacks {missing} (written before records kept them): "
            "add them with report.attach_test_data(record, tokenized_test_split)."
        )
    return np.asarray(record["test_labels"]), np.asarray(record["predictions"]), np.asarray(record["test_n_tokens"])


def attach_test_data(record: dict, test_split) -> dict:
    """`record` with its test reviews' labels and token counts, checked against what it recorded."""
    if len(test_split) != len(record["predictions"]):
        raise ValueError(f"{len(test_split)} test reviews given, but the record has {len(record['predictions'])} predictions.")
    labels = [int(x) for x in test_split["label"]]
    hits = np.mean([(p > 0.5) == y for p, y in zip(record["predictions"], labels, strict=True)])
    if not np.isclose(hits, record["metrics"]["accuracy"]):
        raise ValueError("These are not the record's test reviews: its predictions do not give its accuracy on them.")
    return record | {"test_labels": labels, "test_n_tokens": [int(n) for n in test_split["n_tokens"]]}


def analysis_table(records: list[dict]):
    """Per variant: confusion counts, accuracy on truncated vs whole reviews, and ECE."""
    import pandas as pd

    rows = {}
    for r in records:
        labels, p, n_tokens = recorded_test_split(r)
        predicted = (p > 0.5).astype(int)
        cut = n_tokens > r["config"]["max_length"]
        rows[VARIANT_LABELS.get(r["variant"], r["variant"])] = {
            "true neg": int(((predicted == 0) & (labels == 0)).sum()),
            "false pos": int(((predicted == 1) & (labels == 0)).sum()),
            "false neg": int(((predicted == 0) & (labels == 1)).sum()),
            "true pos": int(((predicted == 1) & (labels == 1)).sum()),
            "accuracy whole reviews": float((predicted == labels)[~cut].mean()) if (~cut).any() else float("nan"),
            "accuracy truncated": float((predicted == labels)[cut].mean()) if cut.any() else float("nan"),
            "truncated reviews": int(cut.sum()),
            "ECE": expected_calibration_error(labels, p),
        }
    return pd.DataFrame(rows).T


def update_readme(readme: str, records_dirs: list[str]) -> str:
    """Replace the README's results block with tables generated from `records_dirs`; returns the new text."""
    return replace_block(readme, "results", "\n\n".join(results_section(d) for d in records_dirs))


def replace_block(readme: str, name: str, body: str) -> str:
    """Replace what lies between `<!-- name:start -->` and `<!-- name:end -->` in `readme` by `body`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = Path(readme).read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} block to fill.")
    head, rest = text.split(start, 1)
    body = relink(body, Path(readme).parent)
    new = f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"
    Path(readme).write_text(new)
    return new


def relink(markdown: str, folder: Path) -> str:
    """Links to files given relative to the working folder, made relative to `folder` (where the Markdown lives)."""

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or Path(target).is_absolute() or not Path(target).exists():
            return match.group(0)
        return f"{match.group(1)}({Path(os.path.relpath(target, folder)).as_posix()})"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", fix, markdown)


# Config fields that do not change what a run learns (where it writes, how often it validates), or
# that a run's label names anyway (the learning rate).
NOT_RECIPE = {"profile", "data_dir", "work_dir", "records_dir", "adapter_dir_f32", "adapter_dir_nf4", "evals_per_run",
              "checkpoint_every", "lr_head_only", "lr_lora"}  # fmt: skip


# What records from before a setting existed ran with (sweep records predate truncation settings)
SETTINGS_BEFORE_THEY_EXISTED = {"truncation": "head", "truncation_head_share": 0.25}


def recipe_differences(config: dict, reference: dict, variant: str) -> dict:
    """The settings in which `config` trains `variant` differently from `reference` (a profile's config)."""
    unused = ("lora_", "nf4_") if variant == "head_only" else ("head_",)  # settings the variant never reads
    config = SETTINGS_BEFORE_THEY_EXISTED | config
    if config.get("truncation") != "head+tail":
        config.pop("truncation_head_share", None)  # only head+tail reads it
    return {
        key: value
        for key, value in config.items()
        if key in reference and value != reference[key] and key not in NOT_RECIPE and not key.startswith(unused)
    }


def learning_rate_of(record: dict) -> float:
    """The learning rate a record's run trained with (sweep records name it; profile runs have it in their config)."""
    return record.get("learning_rate") or record["config"]["lr_head_only" if record["variant"] == "head_only" else "lr_lora"]


def read_validation_runs(records_dir: str) -> list[dict]:
    """The runs with validation passes: `bench/sweep.py`'s (in `records_dir`/sweep) and the profile's own.

    In variant, then learning-rate order; the profile's records are marked `source: profile run`.
    """
    runs = [json.loads(p.read_text()) for p in sorted((Path(records_dir) / "sweep").glob("*.json"))]
    if Path(records_dir).is_dir():
        runs += [r | {"source": "profile run"} for r in read_records(records_dir)]
    order = list(VARIANT_LABELS)
    return sorted(runs, key=lambda r: (order.index(r["variant"]), learning_rate_of(r)))


def validation_curves(records: list[dict], reference: dict | None = None) -> list[dict]:
    """Per training run: validation accuracy against training seconds and peak memory so far.

    Points come from the `log_history` stamps that train.TrainClock adds (training steps only, not
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
        label = f"{VARIANT_LABELS.get(r['variant'], r['variant'])}, {setting}" + (f" ({r['source']})" if r.get("source") else "")
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
    columns = [f"<= {times[v]:,.0f} s ({VARIANT_LABELS.get(v, v)}'s shortest run)" for v in variants]
    columns += [f"<= {memories[v] / 1e9:.1f} GB ({VARIANT_LABELS.get(v, v)}'s smallest peak)" for v in variants]
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|"]
    for v in variants:
        cells = []
        for budget in [{"seconds": times[w]} for w in variants] + [{"memory_bytes": memories[w]} for w in variants]:
            reached = [(best_within(c, **budget), c["setting"]) for c in curves if c["variant"] == v]
            reached = [(acc, setting) for acc, setting in reached if acc is not None]
            acc, setting = max(reached, key=lambda x: x[0]) if reached else (None, None)
            cells.append("-" if acc is None else f"{acc:.1%} ({setting})")
        lines.append(f"| {VARIANT_LABELS.get(v, v)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
