"""Figures drawn from the records: accuracy against cost, learning curves, errors, ROC, calibration."""

from __future__ import annotations

import numpy as np

from peft_sentiment.metrics import class_probabilities, expected_calibration_error, predicted_labels, reliability
from peft_sentiment.recording import recorded_test_split
from peft_sentiment.variants import label_of


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
    """Training loss and validation accuracy against the fraction of each run, one line per variant.

    Fractions, not steps: head-only takes many cheap steps (epochs over cached features), LoRA few costly ones.
    """
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.5))
    for r in records:
        label = label_of(r["variant"])
        history = r["log_history"]
        last = max((e["step"] for e in history if "step" in e), default=1) or 1
        losses = [(e["step"] / last, e["loss"]) for e in history if "loss" in e]
        accs = [(e["step"] / last, e["eval_accuracy"]) for e in history if "eval_accuracy" in e]
        if losses:
            loss_ax.plot(*zip(*losses, strict=True), label=label)
        if accs:
            acc_ax.plot(*zip(*accs, strict=True), marker="o", label=label)
    loss_ax.set(title="Training loss", xlabel="fraction of the run", xlim=(0, 1.02))
    acc_ax.set(title="Validation accuracy", xlabel="fraction of the run", xlim=(0, 1.02), ylim=(0.4, 1))
    loss_ax.legend()
    fig.tight_layout()
    return fig


def plot_accuracy_vs_cost(records: list[dict], baselines: list[dict] = ()):
    """Test accuracy with its 95% interval against training time and against peak training memory.

    A baseline is a point on the time axis and a line on the memory axis: its process's memory is not its own.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for r in records:
        label = label_of(r["variant"])
        acc = r["metrics"]["accuracy"]
        low, high = r["metrics"]["accuracy_ci95"]
        for ax, x in zip(axes, (r["train_seconds"], r["peak_memory_bytes"]["train"] / 1e6), strict=True):
            ax.errorbar(x, acc, yerr=[[acc - low], [high - acc]], fmt="o", capsize=4, label=label)
            ax.annotate(label, (x, acc), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for b in baselines:
        label = f"TF-IDF + LR ({b['metrics']['accuracy']:.1%})"
        acc = b["metrics"]["accuracy"]
        axes[0].errorbar(b["train_seconds"], acc, fmt="s", color="grey", label=label)
        axes[1].axhline(acc, color="grey", linestyle=":", label=label)
    axes[0].set(xscale="log", xlabel="training time (s, log scale)", ylabel="test accuracy (95% CI)")
    axes[1].set(xlabel="peak training memory (MB)")
    device = records[0]["device"]["name"] if records else ""
    fig.suptitle(f"Accuracy vs cost, profile {records[0]['profile'] if records else '?'} on {device}", fontsize=10)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_analysis(records: list[dict], length_bins: int = 5):
    """Confusion matrices, ROC curves (two classes only: ROC ranks by one score), accuracy by length, reliability with ECE."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    fig = plt.figure(figsize=(4 * max(len(records), 3), 8))
    grid = fig.add_gridspec(2, max(len(records), 3))
    for i, r in enumerate(records):  # top row: one confusion matrix per variant
        labels, p, _ = recorded_test_split(r)
        ax = fig.add_subplot(grid[0, i])
        ConfusionMatrixDisplay.from_predictions(
            labels, predicted_labels(p), labels=range(len(r["labels"])), display_labels=r["labels"], cmap="Blues",
            colorbar=False, ax=ax,
        )  # fmt: skip
        ax.set_title(f"{label_of(r['variant'])}: confusion")
    roc, by_length, calibration = (fig.add_subplot(grid[1, k]) for k in range(3))
    all_tokens = np.concatenate([recorded_test_split(r)[2] for r in records])
    edges = np.unique(np.quantile(all_tokens, np.linspace(0, 1, length_bins + 1)))
    for r in records:
        labels, p, n_tokens = recorded_test_split(r)
        name = label_of(r["variant"])
        if class_probabilities(p).shape[1] == 2:
            RocCurveDisplay.from_predictions(labels, class_probabilities(p)[:, 1], name=name, ax=roc)
        by_length.plot(*accuracy_by_length(labels, p, n_tokens, edges), marker="o", label=name)
        # scikit-learn's CalibrationDisplay bins P(class 1) over [0, 1]; ECE bins the predicted class's confidence
        rel = reliability(labels, p)
        used = rel["count"] > 0
        ece = expected_calibration_error(labels, p)
        calibration.plot(rel["confidence"][used], rel["accuracy"][used], marker="o", label=f"{name} (ECE {ece:.3f})")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance" if roc.lines else "more than two classes: no ROC")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    max_length = records[0]["config"]["max_length"]
    by_length.axvline(max_length, color="red", linestyle="--", label=f"max_length {max_length}")
    by_length.set(xlabel="text length in tokens (bin median)", ylabel="accuracy",
                  title=f"accuracy by length ({len(edges) - 1} equal-count bins)")  # fmt: skip
    floor = 1 / len(records[0]["labels"])  # the least confidence an argmax can have
    calibration.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="perfect calibration")
    calibration.set(xlabel="confidence (probability of the predicted label)", ylabel="accuracy", title="reliability")
    for ax in (roc, by_length, calibration):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_by_length(labels, probabilities, n_tokens, edges) -> tuple[list, list]:
    """Per length bin (`edges`) that holds reviews: the median length and the accuracy."""
    which = np.clip(np.digitize(n_tokens, edges[1:-1]), 0, len(edges) - 2)
    correct = predicted_labels(probabilities) == labels
    filled = [b for b in range(len(edges) - 1) if (which == b).any()]
    return [np.median(n_tokens[which == b]) for b in filled], [correct[which == b].mean() for b in filled]
