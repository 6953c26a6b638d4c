"""Tables, summaries and README blocks drawn from the records (`recording`); the figures are in `plots`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from peft_sentiment.config import IMDB
from peft_sentiment.data import describe_draw
from peft_sentiment.metrics import class_probabilities, expected_calibration_error, paired_difference, predicted_labels
from peft_sentiment.recording import (
    ACCURACY_RUN_FILE,
    read_baselines,
    read_records,
    recorded_test_split,
    training_memory_bytes,
)
from peft_sentiment.variants import VARIANTS, compared_pairs, label_of


def compare_variants(records: list[dict]):
    """One row per variant: quality (accuracy and macro F1 in percent), size, cost (a pandas DataFrame; ROC-AUC only for
    two classes)."""
    import pandas as pd

    rows = []
    for r in records:
        m = r["metrics"]
        rows.append({
            "variant": label_of(r["variant"]),
            "accuracy %": 100 * m["accuracy"],
            "95% CI": "{:.1f}-{:.1f}".format(*(100 * x for x in m["accuracy_ci95"])),
            "macro F1 %": 100 * m["f1_macro"],
            "ROC-AUC": m.get("roc_auc", float("nan")),
            "trainable params": r["params"]["trainable"],
            "model MB": r["model_bytes"] / 1e6,
            "train s": r["train_seconds"],
            "train MB, alone": megabytes(training_memory_bytes(r)),
            "train tokens/s": r["train_tokens_per_s"],
            "eval tokens/s": r["eval_tokens_per_s"],
        })  # fmt: skip
    table = pd.DataFrame(rows).set_index("variant")
    return table.dropna(axis=1, how="all")  # no ROC-AUC column for more than two classes


def readable_table(records: list[dict]):
    """`compare_variants` as people read it: one column per variant, each number formatted by `format_cell`
    (thousands separated, percentages with one decimal), so the table fits a notebook without wrapping."""
    table = compare_variants(records)
    return table.apply(lambda column: [format_cell(v, column.name) for v in column]).T


def markdown_table(records: list[dict], baselines: list[dict] = ()) -> str:
    """The comparison as a Markdown table (for the README), baselines as rows of their own."""
    table = compare_variants(records)
    lines = ["| variant | " + " | ".join(table.columns) + " |", "|" + "---|" * (len(table.columns) + 1)]
    for name, row in table.iterrows():
        lines.append(f"| {name} | " + " | ".join(format_cell(row[c], c) for c in table.columns) + " |")
    for b in baselines:
        m = b["metrics"]
        f1 = m.get("f1_macro")
        known = {"accuracy %": 100 * m["accuracy"], "95% CI": "{:.1f}-{:.1f}".format(*(100 * x for x in m["accuracy_ci95"])),
                 "macro F1 %": None if f1 is None else 100 * f1, "ROC-AUC": m.get("roc_auc"), "train s": b["train_seconds"],
                 "train MB, alone": megabytes(training_memory_bytes(b))}  # fmt: skip
        cells = [format_cell(known[c], c) if known.get(c) is not None and known[c] == known[c] else "-" for c in table.columns]
        lines.append("| TF-IDF + LR (baseline) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def megabytes(n_bytes: int | None) -> float:
    """Bytes in MB (1e6), NaN for a record that did not measure them (a table then shows no column, or "-")."""
    return float("nan") if n_bytes is None else n_bytes / 1e6


def format_cell(value, column: str = "") -> str:
    """A number as people read it: percentages (a column named "... %") with one decimal, counts without decimals,
    small values (a learning rate) with two significant digits, fractions below 1 with three, the rest with one."""
    if isinstance(value, str):
        return value
    if value != value:  # NaN: not measured
        return "-"
    if column.endswith("%"):
        return f"{value:.1f}"
    if 0 < abs(value) < 0.01:  # learning rates and the like: their significant digits, not 0.000
        return f"{value:.2g}"
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:,.1f}"


def describe_run(cfg, model_path: str, tokenized, precision: str) -> str:
    """Markdown: what this run trains and on what, from its config and data (true on every profile)."""
    from peft_sentiment.catalog import SHORT_NAMES, WEIGHTS_SOURCE
    from peft_sentiment.data import class_names, truncation_stats

    model = f"`{cfg.model_name}`" + (f": {SHORT_NAMES[cfg.model_name]}" if cfg.model_name in SHORT_NAMES else "")
    sizes = ", ".join(f"{len(tokenized[s]):,} {s}" for s in ("train", "validation", "test"))
    cut = truncation_stats(tokenized["test"], cfg.max_length)
    share = cfg.truncation_head_share
    keep = {"head": "its start", "tail": "its end", "head+tail": f"its first {share:.0%} and last {1 - share:.0%}"}
    suffix = f"the prompt suffix {cfg.prompt_suffix!r} appended" if cfg.prompt_suffix else "no prompt suffix (the text alone)"
    weights = WEIGHTS_SOURCE.get(cfg.model_name)
    return " ".join([
        f"**This run** (profile `{cfg.profile}`): model {model}.",
        f"Weights: {weights}." if weights else f"Loaded from `{Path(model_path).name}`.",
        f"Data: `{Path(cfg.dataset).name if Path(cfg.dataset).is_absolute() else cfg.dataset}`, classes {class_names(tokenized)};"
        f" {sizes} ({describe_draw(cfg)}).",
        f"Each text is cut to {cfg.max_length} tokens keeping {keep[cfg.truncation]} ({cut['truncated_fraction']:.0%} of the "
        f"test texts are longer), with {suffix}.",
        f"LoRA: rank {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout}; {precision}.",
    ])  # fmt: skip


def describe_untrained(predicted, labels, names: list[str]) -> str:
    """Markdown: what a classifier predicted before training (class shares), and what its accuracy then means."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    shares = np.bincount(predicted, minlength=len(names)) / len(predicted)
    accuracy = float((predicted == labels).mean())
    top = int(shares.argmax())
    said = f"`{names[top]}` for {shares[top]:.0%} of the {len(predicted):,} validation reviews"
    if shares[top] > 0.95:
        return (f"Untrained, the classifier predicts {said}: its accuracy, {accuracy:.1%}, is the share of `{names[top]}` "
                "reviews, not a skill. Training must move it off that.")  # fmt: skip
    return f"Untrained, the classifier predicts {said}; accuracy {accuracy:.1%}, about what guessing gets."


def describe_trained(record: dict, folder: Path | None) -> str:
    """One line per trained variant: its test accuracy, training time and memory, and where it was saved."""
    m, memory = record["metrics"], training_memory_bytes(record)
    low, high = m["accuracy_ci95"]
    return (f"{label_of(record['variant'])}: test accuracy {m['accuracy']:.1%} (95% CI {low:.1%} to {high:.1%})\n"
            f"  trained in {record['train_seconds'] / 60:.1f} min"
            + (f", peak training memory {memory / 1e6:,.0f} MB alone" if memory is not None else "")
            + (f"\n  saved to {folder}" if folder else ""))  # fmt: skip


def summarize_results(records: list[dict], baselines: list[dict] = ()) -> str:
    """What the run found, against the reference and between variants, drawn from the records themselves.

    Which differences are real is judged on the same test reviews, pairwise (exact McNemar test on the
    reviews where two classifiers disagree): overlapping intervals alone would miss real paired differences.
    """
    first = records[0]
    best = max(records, key=lambda r: r["metrics"]["accuracy"])
    lines = [
        f"- Best test accuracy: {label_of(best['variant'])} at {best['metrics']['accuracy']:.1%} "
        f"on {best['metrics']['test_reviews']:,} test texts (profile `{best['profile']}`, {best['device']['name']})."
    ]
    for r in records:
        low, high = r["metrics"]["accuracy_ci95"]
        line = (
            f"- {label_of(r['variant'])}: {r['metrics']['accuracy']:.1%} (95% CI {low:.1%}-{high:.1%}), "
            f"{r['params']['trainable']:,} trainable parameters, {r['train_seconds']:.0f} s of training"
        )
        reference = VARIANTS[r["variant"]].reference_accuracy if r["variant"] in VARIANTS else None
        if reference is not None and r["dataset"] == IMDB:
            side = "above" if low > reference else "below" if high < reference else "level with (inside the interval)"
            line += f"; {side} the reference's {reference:.0%}"
        lines.append(line + ".")
    if first["dataset"] == IMDB and (first["profile"], first["model"]) != ("full", "gpt2"):
        lines.append(
            f"  The reference is GPT-2 on all 25,000 test reviews; this run is `{first['model']}` on "
            f"{first['metrics']['test_reviews']:,}: a bar to clear, not a like-for-like comparison."
        )
    for r, other in compared_pairs(records):  # each variant against the one its declaration compares it with
        lines.append(paired_line(first["test_labels"], r, other))
    for b in baselines:
        beaten = [label_of(r["variant"]) for r in records if r["metrics"]["accuracy_ci95"][0] > b["metrics"]["accuracy"]]
        verdict = (
            f"clearly above it (interval above its accuracy): {', '.join(beaten)}" if beaten else "no variant is clearly above it"
        )
        lines.append(
            f"- TF-IDF + logistic regression on the same texts: {b['metrics']['accuracy']:.1%} in {b['train_seconds']:.0f} s; {verdict}."
        )
    return "\n".join(lines)


def paired_line(labels, a: dict, b: dict) -> str:
    """One summary line: variant `a` against `b` on the same test texts, with the exact McNemar test."""
    gap = a["metrics"]["accuracy"] - b["metrics"]["accuracy"]
    d = paired_difference(labels, a["predictions"], b["predictions"])
    verdict = "a real difference" if d["p_value"] < 0.05 else "not distinguishable on this test set"
    name_a, name_b = label_of(a["variant"]), label_of(b["variant"])
    return (
        f"- {name_a} vs {name_b}: {gap * 100:+.1f} points; {d['only_a']} texts only {name_a} gets right, {d['only_b']} only "
        f"{name_b} (exact McNemar p = {d['p_value']:.2g}): {verdict}."
    )


def results_section(records_dir: str) -> str:
    """The README's block for one records folder: what ran where, then the table."""
    records, baselines = read_records(records_dir, order=VARIANTS), read_baselines(records_dir)
    if not records:
        return f"No records in `{records_dir}`."
    first, cfg, device = records[0], records[0]["config"], records[0]["device"]
    units = f"{device['cores']} cores" if device["type"] == "cpu" else f"{device['count']} GPUs"
    rows = [
        f"**Profile `{first['profile']}`**: model `{cfg['model_name']}`, `{first['dataset']}` train {cfg['train_size'] or 'all'}"
        f" / validation {cfg['val_size']} / test {first['metrics']['test_reviews']} ({describe_draw(cfg)}), "
        f"max length {cfg['max_length']} ({cfg.get('truncation', 'head')} truncation); {device['name']} ({units}), "
        f"{first['created'][:10]}.",
        "",
        markdown_table(records, baselines),
    ]
    commands = sorted({r["command"] for r in [*records, *baselines] if r.get("command")})
    if commands:
        rows += ["", "Reproduce: " + ", ".join(f"`{c}`" for c in commands)]
    run_path = Path(records_dir) / ACCURACY_RUN_FILE
    run = json.loads(run_path.read_text()) if run_path.is_file() else None
    if run and {r.get("command") for r in records} == {run["command"]}:  # that run made these records
        part = " (resumed: this part only)" if run["resumed"] else ""
        rows += [
            "",
            f"`{run['command']}` took {run['total_seconds'] / 60:.1f} min{part} on {run['device']['name']}, {run['created'][:10]}.",
        ]
    rows += ["", "What they say (generated from the records):", "", summarize_results(records, baselines)]
    for name, what in (("accuracy_vs_cost.png", "accuracy vs cost"), ("analysis.png", "errors, ROC, length, calibration")):
        if (Path(records_dir) / name).is_file():
            rows += ["", f"![{what}]({Path(records_dir).as_posix()}/{name})"]
    return "\n".join(rows)


def analysis_table(records: list[dict]):
    """Per variant: accuracy per true class, on truncated vs whole texts (percent), and ECE (top-label calibration)."""
    import pandas as pd

    rows = {}
    for r in records:
        labels, p, n_tokens = recorded_test_split(r)
        right = predicted_labels(p) == labels
        cut = n_tokens > r["config"]["max_length"]
        per_class = {f"accuracy on {name} %": 100 * float(right[labels == i].mean()) for i, name in enumerate(r["labels"])}
        rows[label_of(r["variant"])] = per_class | {
            "accuracy whole texts %": 100 * float(right[~cut].mean()) if (~cut).any() else float("nan"),
            "accuracy truncated %": 100 * float(right[cut].mean()) if cut.any() else float("nan"),
            "truncated texts": int(cut.sum()),
            "ECE": expected_calibration_error(labels, p),
        }
    return pd.DataFrame(rows).T


def misclassified(record: dict, texts: list[str], k: int = 4, chars: int = 360):
    """The `k` test texts the record's model got wrong most confidently (a DataFrame): the text (its start and end when
    longer than `chars`), the true and predicted class, the probability given to the prediction, and its length in
    tokens, marked when the run cut it (the part that decides may be the part removed)."""
    import pandas as pd

    labels, p, n_tokens = recorded_test_split(record)
    probabilities = class_probabilities(p)
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:k]
    names, max_length = record["labels"], record["config"]["max_length"]
    return pd.DataFrame({
        "text": [shorten(texts[i].replace("<br />", " "), chars) for i in worst],  # IMDB's line breaks as spaces
        "true": [names[labels[i]] for i in worst],
        "predicted": [names[predicted[i]] for i in worst],
        "probability": probabilities[worst, predicted[worst]],
        "tokens": [f"{n_tokens[i]:,}" + (f" (cut to {max_length})" if n_tokens[i] > max_length else "") for i in worst],
    })  # fmt: skip


def shorten(text: str, chars: int) -> str:
    """`text`, or its start and end when it is longer than `chars`."""
    return text if len(text) <= chars else f"{text[: chars // 2]} [...] {text[-chars // 2 :]}"


def describe_memory_split(rows: list[dict]) -> str:
    """Markdown: what 4-bit storage and what gradient checkpointing each save and cost, from `train.memory_split`'s rows
    (LoRA and NF4 LoRA, each with checkpointing off and on, one training step on the same batch)."""
    cell = {(r["variant"], r["checkpointing"]): r for r in rows}
    plain, four_bit = dict.fromkeys(r["variant"] for r in rows)

    def mb(variant: str, checkpointing: bool, key: str) -> str:
        value = cell[variant, checkpointing][key] / 1e6
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"  # a tiny model's megabytes keep a decimal

    def step(variant: str, checkpointing: bool) -> float:
        return cell[variant, checkpointing]["step_seconds"]

    weights_plain, weights_four_bit = (cell[v, False]["weights_bytes"] for v in (plain, four_bit))
    return (
        f"**4-bit storage** shrinks the weights from {mb(plain, False, 'weights_bytes')} MB ({plain}) to "
        f"{mb(four_bit, False, 'weights_bytes')} MB ({four_bit}), "
        f"{1 - weights_four_bit / weights_plain:.0%} less, and makes a step x{step(four_bit, False) / step(plain, False):.2f} as long "
        f"(each 4-bit weight is de-quantized before its matmul). **Gradient checkpointing** keeps "
        f"{mb(plain, True, 'saved_bytes')} MB of activations for the backward pass instead of "
        f"{mb(plain, False, 'saved_bytes')} MB ({plain}; {mb(four_bit, True, 'saved_bytes')} vs "
        f"{mb(four_bit, False, 'saved_bytes')} MB for {four_bit}), and makes a step x{step(plain, True) / step(plain, False):.2f} as "
        f"long for {plain} and x{step(four_bit, True) / step(four_bit, False):.2f} for {four_bit} (the forward pass runs twice). {four_bit} as "
        f"declared (both on) takes x{step(four_bit, True) / step(plain, False):.2f} "
        f"the time of {plain} (both off) per step: a comparison of the two alone credits 4-bit storage with what "
        "checkpointing saves, and charges it with what checkpointing costs."
    )


# tokens/s per variant and precision, measured side by side on one CPU (bench/precision.py)
MEASURED_RATES = Path(__file__).resolve().parents[1] / "results" / "precision" / "cpu.json"


def estimate_seconds(cfg, tokenized, chosen: dict, rates: Path = MEASURED_RATES) -> dict | str:
    """Per chosen variant, (training, evaluation) seconds this run should take on a CPU like the one `bench/precision.py`
    measured, from this run's token counts and its tokens/s (head-only on cached features pays one frozen pass over
    every review at the evaluation rate); or, when there is nothing to estimate from, why not."""
    from peft_sentiment.hardware import on_gpu, resolve_precision
    from peft_sentiment.train import on_cached_features

    if on_gpu():
        return (
            "On a GPU: not yet measured by this project (`bench/gpu_check.py` has not run on one); expect far less than on a CPU."
        )
    if not rates.is_file():
        return f"No measured rates to estimate from ({rates.name} is missing: `python bench/precision.py` writes it)."
    record = json.loads(rates.read_text())
    if record["config"]["model_name"] != cfg.model_name:
        return f"No measured rates for `{cfg.model_name}` to estimate from (`bench/precision.py` measured `{record['config']['model_name']}`)."
    tokens = {split: sum(tokenized[split]["length"]) for split in ("train", "validation", "test")}
    estimate = {}
    for name, variant in chosen.items():
        measured = record["variants"].get(name, {}).get(resolve_precision(cfg.precision))
        if measured is None:
            continue
        if on_cached_features(cfg, variant):
            estimate[name] = (0.0, sum(tokens.values()) / measured["eval_tokens_per_s"])
        else:
            passes = tokens["validation"] * cfg.evals_per_run + tokens["test"]
            estimate[name] = (
                tokens["train"] * cfg.epochs / measured["train_tokens_per_s"],
                passes / measured["eval_tokens_per_s"],
            )
    return estimate | {"_measured_on": f"{record['device']['name']}, {record['device']['cores']} cores, {record['created'][:10]}"}


def expected_minutes(estimate: dict | str, chosen: dict) -> str:
    """Markdown: `estimate_seconds`' answer as a table, said before the long cell runs."""
    if isinstance(estimate, str):
        return estimate
    lines = ["| variant | training | evaluation | in all |", "|---|---|---|---|"]
    for name, variant in chosen.items():
        if name not in estimate:
            lines.append(f"| {variant.label} | not measured | | |")
            continue
        train_s, eval_s = estimate[name]
        lines.append(f"| {variant.label} | {train_s / 60:.0f} min | {eval_s / 60:.0f} min | {(train_s + eval_s) / 60:.0f} min |")
    total = sum(sum(v) for k, v in estimate.items() if k in chosen)
    return "\n".join([f"**Before you run the next cell**: about {total / 60:.0f} min on a CPU like the one the rates were "
                      f"measured on ({estimate['_measured_on']}); another CPU differs.", "", *lines])  # fmt: skip


def compare_with_estimate(estimate: dict | str, records: list[dict]) -> str:
    """One line: how long the variants took, against what `estimate_seconds` said before."""
    took = sum(r["train_seconds"] + r["eval_seconds"] for r in records)  # head-only's frozen passes are inside these
    if isinstance(estimate, str):
        return f"Training and evaluation took {took / 60:.0f} min."
    expected = sum(sum(v) for k, v in estimate.items() if k in {r["variant"] for r in records})
    return (f"Training and evaluation took {took / 60:.0f} min against the {expected / 60:.0f} min estimated "
            f"({took / expected - 1:+.0%}; CPUs of one kind differ, and one CPU's speed drifts between runs).")  # fmt: skip


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
    new = f"{head}{start}\n{relink(body, Path(readme).parent)}\n{end}{rest.split(end, 1)[1]}"
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
