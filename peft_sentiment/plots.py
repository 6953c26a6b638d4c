"""Figures drawn from the records and measurements: lengths, learning curves, accuracy against cost, the memory split,
NF4's levels, where the variants disagree, errors, ROC, calibration."""

from __future__ import annotations

import numpy as np

from peft_sentiment.metrics import (
    class_probabilities,
    expected_calibration_error,
    paired_difference,
    predicted_labels,
    reliability,
)
from peft_sentiment.recording import recorded_test_split, training_memory_bytes
from peft_sentiment.variants import compared_pairs, label_of


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


def reviews_seen(record: dict, step: float) -> float:
    """Training reviews seen after `step` optimizer steps (batch size times steps; head-only counts feature vectors)."""
    return step * record["config"]["train_batch_size"]


def smooth(values, window: int = 3) -> np.ndarray:
    """A centred moving average (the ends averaged over what they have): logged losses jump batch to batch."""
    values, half = np.asarray(values, dtype=float), window // 2
    return np.array([values[max(0, i - half) : i + half + 1].mean() for i in range(len(values))])


def plot_learning_curves(records: list[dict]):
    """Training loss (smoothed) and validation accuracy against the training reviews seen, one colour per variant.

    A log axis: head-only's epochs over cached features see many reviews cheaply, LoRA sees each once or twice.
    """
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, r in enumerate(records):
        label, colour, history = label_of(r["variant"]), f"C{i}", r["log_history"]
        losses = [(reviews_seen(r, e["step"]), e["loss"]) for e in history if "loss" in e and e.get("step")]
        accs = [(reviews_seen(r, e["step"]), e["eval_accuracy"]) for e in history if "eval_accuracy" in e]
        if losses:
            seen, loss = zip(*losses, strict=True)
            loss_ax.plot(seen, smooth(loss), color=colour, label=label)
        if accs:
            acc_ax.plot(*zip(*accs, strict=True), marker="o", color=colour, label=label)
    loss_ax.set(title="Training loss (moving average of 3 logs)", xlabel="training reviews seen", xscale="log")
    acc_ax.set(title="Validation accuracy", xlabel="training reviews seen", xscale="log", ylim=(0.4, 1))
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_cost(records: list[dict], baselines: list[dict] = ()):
    """Test accuracy with its 95% interval against training time and against each variant's peak training memory,
    measured alone (its weights plus what its training added: `recording.training_memory_bytes`)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    points = [(label_of(r["variant"]), r, "o") for r in records] + [("TF-IDF + LR", b, "s") for b in baselines]
    for i, (label, r, marker) in enumerate(points):
        acc = r["metrics"]["accuracy"]
        low, high = r["metrics"]["accuracy_ci95"]
        memory = training_memory_bytes(r)
        for ax, x in zip(axes, (r["train_seconds"], None if memory is None else memory / 1e6), strict=True):
            if x is None:
                continue
            colour = "grey" if marker == "s" else f"C{i}"
            ax.errorbar(x, acc, yerr=[[acc - low], [high - acc]], fmt=marker, color=colour, capsize=4)
            ax.annotate(label, (x, acc), textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes[0].set(xscale="log", xlabel="training time (s, log scale)", ylabel="test accuracy (95% CI)")
    axes[1].set(xscale="log", xlabel="peak training memory, each alone (MB, log scale)")
    device = records[0]["device"]["name"] if records else ""
    fig.suptitle(f"Accuracy against cost: profile {records[0]['profile'] if records else '?'} on {device}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_memory_split(rows: list[dict]):
    """`train.memory_split`'s rows as bars: weights and saved activations (stacked), and the step time, per model with
    gradient checkpointing off and on."""
    import matplotlib.pyplot as plt

    names = [f"{r['variant']}\ncheckpointing {'on' if r['checkpointing'] else 'off'}" for r in rows]
    weights = np.array([r["weights_bytes"] for r in rows]) / 1e6
    saved = np.array([r["saved_bytes"] for r in rows]) / 1e6
    fig, (mem_ax, time_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    mem_ax.bar(names, weights, label="weights", color="C0")
    mem_ax.bar(names, saved, bottom=weights, label="activations saved for backward", color="C1")
    mem_ax.set(ylabel="MB", title="Memory of one training step")
    mem_ax.legend(fontsize=8)
    time_ax.bar(names, [r["step_seconds"] for r in rows], color="C2")
    time_ax.set(ylabel="seconds", title="Time of one training step")
    for ax in (mem_ax, time_ax):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def plot_nf4_levels(weight, blocksize: int = 64):
    """One layer's weights, each divided by its block's largest magnitude (what NF4 stores), over NF4's 16 levels."""
    import bitsandbytes.functional as F
    import matplotlib.pyplot as plt

    blocks = weight.detach().float().flatten()
    blocks = blocks[: len(blocks) // blocksize * blocksize].reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).numpy()
    scaled = (blocks.numpy() / absmax).flatten()
    levels = F.get_4bit_type("nf4", device="cpu").float().numpy()
    rounded = levels[np.abs(scaled[:, None] - levels[None, :]).argmin(axis=1)].reshape(absmax.shape[0], -1) * absmax
    error = float(np.linalg.norm(rounded - blocks.numpy()) / np.linalg.norm(blocks.numpy()))  # in the weights' units
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.hist(scaled, bins=200, color="C0", alpha=0.7)
    for level in levels:
        ax.axvline(level, color="C3", linewidth=0.8)
    ax.set(xlabel="weight / its block's absmax", ylabel="weights",
           title=f"NF4's 16 levels (red) over one layer's {scaled.size:,} weights: relative rounding error {error:.1%}")  # fmt: skip
    fig.tight_layout()
    return fig


def plot_disagreements(records: list[dict]):
    """For each variant and the one it is compared with, the test reviews only one of the two gets right, with the
    exact McNemar p-value: the only reviews that tell two classifiers apart."""
    import matplotlib.pyplot as plt

    pairs = compared_pairs(records)
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.7 * max(len(pairs), 1)))
    for i, (a, b) in enumerate(pairs):
        d = paired_difference(a["test_labels"], a["predictions"], b["predictions"])
        ax.barh(i, d["only_a"], color="C0")
        ax.barh(i, -d["only_b"], color="C1")
        ax.annotate(f"p = {d['p_value']:.2g}", (max(d["only_a"], 1), i), xytext=(4, -3), textcoords="offset points", fontsize=8)
        ax.annotate(f"{d['only_b']}", (-d["only_b"], i), xytext=(-4, -3), textcoords="offset points", fontsize=8, ha="right")
    ax.set_yticks(range(len(pairs)), [f"{label_of(a['variant'])}\nvs {label_of(b['variant'])}" for a, b in pairs])
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(xlabel="test reviews only the second gets right (left) | only the first (right)",
           title="Where the variants disagree (exact McNemar test)")  # fmt: skip
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
