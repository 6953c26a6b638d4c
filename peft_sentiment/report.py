"""Tables and plots drawn from the records (`records`), for the notebook and the README."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from peft_sentiment.metrics import expected_calibration_error, reliability
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


def plot_comparison(records: list[dict]):
    """Accuracy (with 95% interval) next to training time and peak memory, one bar per variant."""
    import matplotlib.pyplot as plt

    names = [VARIANT_LABELS.get(r["variant"], r["variant"]) for r in records]
    acc = [r["metrics"]["accuracy"] for r in records]
    err = [
        [a - r["metrics"]["accuracy_ci95"][0] for a, r in zip(acc, records, strict=True)],
        [r["metrics"]["accuracy_ci95"][1] - a for a, r in zip(acc, records, strict=False)],
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    axes[0].bar(names, acc, yerr=err, capsize=4, color="tab:blue")
    axes[0].set(title="Test accuracy (95% CI)", ylim=(0, 1))
    axes[1].bar(names, [r["train_seconds"] for r in records], color="tab:orange")
    axes[1].set(title="Training time", ylabel="seconds")
    axes[2].bar(names, [r["peak_memory_bytes"]["train"] / 1e6 for r in records], color="tab:green")
    kind = "GPU allocated" if records and records[0]["device"]["type"] == "cuda" else "process RSS"
    axes[2].set(title=f"Peak training memory ({kind})", ylabel="MB")
    fig.suptitle(f"profile {records[0]['profile']} on {records[0]['device']['name']}" if records else "no records")
    fig.tight_layout()
    return fig


def plot_token_lengths(n_tokens, max_length: int):
    """Histogram of review lengths in tokens, with the truncation limit marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(n_tokens, bins=60, color="tab:blue")
    ax.axvline(max_length, color="tab:red", linestyle="--", label=f"max_length = {max_length}")
    ax.set(xlabel="tokens per review", ylabel="reviews", title="Review lengths (train)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_learning_curves(records: list[dict]):
    """Training loss and validation accuracy against steps, one line per variant."""
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.5))
    for r in records:
        label = VARIANT_LABELS.get(r["variant"], r["variant"])
        losses = [(e["step"], e["loss"]) for e in r["log_history"] if "loss" in e]
        accs = [(e["step"], e["eval_accuracy"]) for e in r["log_history"] if "eval_accuracy" in e]
        if losses:
            loss_ax.plot(*zip(*losses, strict=True), label=label)
        if accs:
            acc_ax.plot(*zip(*accs, strict=True), marker="o", label=label)
    loss_ax.set(title="Training loss", xlabel="step")
    acc_ax.set(title="Validation accuracy", xlabel="step", ylim=(0, 1))
    loss_ax.legend()
    fig.tight_layout()
    return fig


def summarize_results(records: list[dict]) -> str:
    """Conclusions drawn from the records themselves, so they stay true whatever a run measured."""
    by_variant = {r["variant"]: r for r in records}
    lines = []
    best = max(records, key=lambda r: r["metrics"]["accuracy"])
    lines.append(
        f"- Best test accuracy: {VARIANT_LABELS[best['variant']]} at {best['metrics']['accuracy']:.1%} "
        f"on {best['metrics']['test_reviews']:,} reviews (profile `{best['profile']}`, {best['device']['name']})."
    )
    for r in records:
        low, high = r["metrics"]["accuracy_ci95"]
        lines.append(
            f"- {VARIANT_LABELS[r['variant']]}: {r['metrics']['accuracy']:.1%} (95% CI {low:.1%}-{high:.1%}), "
            f"{r['params']['trainable']:,} trainable parameters, {r['train_seconds']:.0f} s of training."
        )
    if "lora" in by_variant and "nf4_lora" in by_variant:
        lora, nf4 = by_variant["lora"], by_variant["nf4_lora"]
        gap = nf4["metrics"]["accuracy"] - lora["metrics"]["accuracy"]
        lines.append(
            f"- NF4 LoRA vs LoRA: {gap:+.1%} accuracy, model weights {nf4['model_bytes'] / lora['model_bytes']:.0%} of the fp32 "
            f"model's bytes, training time x{nf4['train_seconds'] / lora['train_seconds']:.2f}."
        )
        overlap = not (
            nf4["metrics"]["accuracy_ci95"][1] < lora["metrics"]["accuracy_ci95"][0]
            or lora["metrics"]["accuracy_ci95"][1] < nf4["metrics"]["accuracy_ci95"][0]
        )
        lines.append(
            "  Their 95% intervals overlap: on this test set the two are not distinguishable."
            if overlap
            else "  Their 95% intervals do not overlap: the difference is larger than test-set noise."
        )
    return "\n".join(lines)


def plot_accuracy_vs_cost(records: list[dict], baselines: list[dict] = ()):
    """Test accuracy with its 95% interval against training time and against peak training memory."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for r in [*records, *baselines]:
        label = VARIANT_LABELS.get(r["variant"], r["variant"].replace("tfidf_logreg", "TF-IDF + LR"))
        acc = r["metrics"]["accuracy"]
        low, high = r["metrics"]["accuracy_ci95"]
        for ax, x in zip(axes, (r["train_seconds"], r["peak_memory_bytes"]["train"] / 1e6), strict=True):
            ax.errorbar(x, acc, yerr=[[acc - low], [high - acc]], fmt="o", capsize=4, label=label)
            ax.annotate(label, (x, acc), textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes[0].set(xscale="log", xlabel="training time (s, log scale)", ylabel="test accuracy (95% CI)")
    axes[1].set(xlabel="peak training memory (MB)")
    device = records[0]["device"]["name"] if records else ""
    fig.suptitle(f"Accuracy vs cost, profile {records[0]['profile'] if records else '?'} on {device}", fontsize=10)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


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
        f"max length {cfg['max_length']}; {first['device']['name']} ({first['device'].get('cores', first['device'].get('count'))} "
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


def plot_analysis(records: list[dict], length_bins: int = 5):
    """Confusion matrices, ROC curves, accuracy by review length, and reliability diagrams with ECE."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    n = len(records)
    fig = plt.figure(figsize=(4 * max(n, 3), 8))
    grid = fig.add_gridspec(2, max(n, 3))
    for i, r in enumerate(records):  # top row: one confusion matrix per variant
        labels, p, _ = recorded_test_split(r)
        predicted = (p > 0.5).astype(int)
        matrix = np.array([[((labels == true) & (predicted == guess)).sum() for guess in (0, 1)] for true in (0, 1)])
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(matrix, cmap="Blues")
        for (a, b), count in np.ndenumerate(matrix):
            ax.text(b, a, f"{count}", ha="center", va="center", color="black")
        ax.set_xticks([0, 1], ["neg", "pos"])
        ax.set_yticks([0, 1], ["neg", "pos"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{VARIANT_LABELS.get(r['variant'], r['variant'])}: confusion")
    roc, by_length, calibration = (fig.add_subplot(grid[1, k]) for k in range(3))
    all_tokens = np.concatenate([recorded_test_split(r)[2] for r in records])
    edges = np.unique(np.quantile(all_tokens, np.linspace(0, 1, length_bins + 1)))
    for r in records:
        labels, p, n_tokens = recorded_test_split(r)
        name = VARIANT_LABELS.get(r["variant"], r["variant"])
        fpr, tpr, _ = roc_curve(labels, p)
        roc.plot(fpr, tpr, label=f"{name} (AUC {r['metrics']['roc_auc']:.3f})")
        which = np.clip(np.digitize(n_tokens, edges[1:-1]), 0, len(edges) - 2)
        correct = (p > 0.5).astype(int) == labels
        filled = [b for b in range(len(edges) - 1) if (which == b).any()]
        centres = [np.median(n_tokens[which == b]) for b in filled]
        by_length.plot(centres, [correct[which == b].mean() for b in filled], marker="o", label=name)
        rel = reliability(labels, p)
        used = rel["count"] > 0
        calibration.plot(
            rel["confidence"][used],
            rel["accuracy"][used],
            marker="o",
            label=f"{name} (ECE {expected_calibration_error(labels, p):.3f})",
        )
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    max_length = records[0]["config"]["max_length"]
    by_length.axvline(max_length, color="red", linestyle="--", label=f"max_length {max_length}")
    by_length.set(
        xlabel="review length in tokens (bin median)",
        ylabel="accuracy",
        title=f"accuracy by length ({len(edges) - 1} equal-count bins)",
    )
    calibration.plot([0.5, 1], [0.5, 1], color="grey", linestyle=":", label="perfect calibration")
    calibration.set(xlabel="confidence (probability of the predicted label)", ylabel="accuracy", title="reliability")
    for ax in (roc, by_length, calibration):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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
    new = f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"
    Path(readme).write_text(new)
    return new


# Config fields that do not change what a run learns (where it writes, how often it validates), or
# that a run's label names anyway (the learning rate).
NOT_RECIPE = {"profile", "data_dir", "work_dir", "records_dir", "adapter_dir_f32", "adapter_dir_nf4", "evals_per_run",
              "checkpoint_every", "lr_head_only", "lr_lora"}  # fmt: skip


def recipe_differences(config: dict, reference: dict, variant: str) -> dict:
    """The settings in which `config` trains `variant` differently from `reference` (a profile's config)."""
    unused = ("lora_", "nf4_") if variant == "head_only" else ("head_",)  # settings the variant never reads
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
    columns = [f"<= {times[v]:,.0f} s ({VARIANT_LABELS.get(v, v)}'s time)" for v in variants]
    columns += [f"<= {memories[v] / 1e9:.1f} GB ({VARIANT_LABELS.get(v, v)}'s memory)" for v in variants]
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


def plot_validation_curves(curves: list[dict], baseline_accuracy: float | None = None, hardware: str = ""):
    """Validation accuracy against training time (every pass) and against peak memory (each run's end).

    One colour per variant, a shade per learning rate (darker = larger); profile runs are dashed.
    """
    import matplotlib.pyplot as plt

    colormaps = {"head_only": "Blues", "lora": "Oranges", "nf4_lora": "Greens"}
    fig, (time_ax, mem_ax) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for variant in dict.fromkeys(c["variant"] for c in curves):
        runs = [c for c in curves if c["variant"] == variant]
        shades = plt.get_cmap(colormaps.get(variant, "Greys"))(np.linspace(0.45, 0.95, len(runs)))
        for c, colour in zip(sorted(runs, key=lambda c: c["learning_rate"]), shades, strict=True):
            t, acc, mem = zip(*c["points"], strict=True)
            style = "--" if "profile run" in c["label"] else "-"
            time_ax.plot(t, acc, style, marker="o", color=colour, label=c["label"])
            mem_ax.plot(mem[-1] / 1e9, acc[-1], marker="o", color=colour, linestyle="none")
    for ax in (time_ax, mem_ax):
        if baseline_accuracy is not None:
            ax.axhline(
                baseline_accuracy, color="grey", linestyle=":", label="TF-IDF + LR (same validation)" if ax is time_ax else None
            )
    time_ax.set(xlabel="training time so far (s; validation passes excluded)", ylabel="validation accuracy")
    mem_ax.set(xlabel="peak training memory of the run (GB)", title="each run's final accuracy")
    time_ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle(f"Accuracy vs training cost{', ' + hardware if hardware else ''}", fontsize=10)
    fig.tight_layout()
    return fig
