"""Figures of a run: training curves, confusion matrix, ROC and precision-recall curves,
reliability and coverage curves, image grids, lr-find and compare plots.

Built on matplotlib's object API (``Figure`` without pyplot), so no GUI backend, global state or
display is involved: these work in threads, servers and headless CI alike.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from graft.evaluation.calibration import expected_calibration_error, reliability_bins
from graft.evaluation.curves import average_precision, precision_recall_curve, roc_auc, roc_curve
from graft.infrastructure.fileio import atomic_write

PHASE_COLORS = {"frozen": "#dbe9f6", "unfrozen": "#fde8d0", "full": "#e3f1dc"}
# Validation scores beside accuracy in history.csv when the run recorded them (in [0, 1], so
# they share the accuracy panel): the names the training side writes, and their legend labels.
EXTRA_VAL_METRICS = {
    "val_bal_acc": "val balanced acc",
    "val_macro_f1": "val macro F1",
    "val_micro_f1": "val micro F1",
    "val_map": "val mAP",
}


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure encoded as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> bytes:
    """Write the figure to ``path`` atomically as PNG; returns the bytes written."""
    data = png_bytes(fig, dpi)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return data


def _value(x: object) -> float:
    """A history cell as a float: rows read back from history.csv hold strings, '' when missing."""
    return float(x) if x not in ("", None) else math.nan


def plot_history(history: Sequence[dict]) -> Figure:
    """Loss and accuracy per epoch for train and val, with each phase's epochs shaded and named.

    The validation scores of :data:`EXTRA_VAL_METRICS` a run recorded are drawn beside accuracy."""
    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [int(r["epoch"]) for r in history]
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        lines = {f"{split}_{key}": (split, style) for split, style in (("train", "o-"), ("val", "s-"))}
        if key == "acc":
            lines |= {name: (label, "^--") for name, label in EXTRA_VAL_METRICS.items()}
        for column, (label, style) in lines.items():
            values = [_value(r.get(column)) for r in history]
            if not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, style, label=label, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        _shade_phases(ax, history)
        ax.legend(loc="best", fontsize=8)
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: math.ceil(len(epochs) / 20)])
    fig.tight_layout()
    return fig


def _shade_phases(ax, history: Sequence[dict]) -> None:
    start = 0
    while start < len(history):
        phase = history[start]["phase"]
        end = start
        while end + 1 < len(history) and history[end + 1]["phase"] == phase:
            end += 1
        lo, hi = int(history[start]["epoch"]) - 0.5, int(history[end]["epoch"]) + 0.5
        ax.axvspan(lo, hi, color=PHASE_COLORS.get(phase, "#eeeeee"), alpha=0.8, zorder=0)
        ax.text(
            (lo + hi) / 2,
            0.02,
            phase,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color="#555555",
        )
        start = end + 1


def plot_confusion(cm: np.ndarray, classes: Sequence[str], normalize: bool = False) -> Figure:
    """Confusion matrix heatmap (rows: true class). ``normalize`` divides each row by its total."""
    n = len(classes)
    values = cm.astype(float)
    if normalize:
        totals = values.sum(1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    side = min(max(4.0, 0.45 * n + 2), 30.0)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n)
    font = 9 if n <= 20 else max(3, int(180 / n))
    ax.set_xticks(ticks, labels=classes, rotation=90 if n > 6 else 0, fontsize=font)
    ax.set_yticks(ticks, labels=classes, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else " (counts)"))
    if n <= 30:  # numbers in the cells stay legible up to about this many classes
        threshold = (1 if normalize else values.max()) / 2
        for i in range(n):
            for j in range(n):
                text = f"{values[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if values[i, j] > threshold else "black",
                )
    fig.tight_layout()
    return fig


def plot_roc_pr(
    scores: np.ndarray, positive_mask: np.ndarray, positive: str = "positive", threshold: float | None = None
) -> Figure:
    """ROC and precision-recall curves of one class's scores, with ROC AUC and AP in the legends.

    Args:
        scores: The probability of the positive class for each image.
        positive_mask: Whether each image is of the positive class.
        positive: Its name, for the titles.
        threshold: The decision threshold, marked on both curves where it falls (None: not drawn).
    """
    fig = Figure(figsize=(10, 4.2))
    ax_roc, ax_pr = fig.subplots(1, 2)
    fpr, tpr, roc_t = roc_curve(scores, positive_mask)
    ax_roc.plot(fpr, tpr, "-", label=f"ROC AUC {roc_auc(scores, positive_mask):.3f}")
    ax_roc.plot([0, 1], [0, 1], ":", color="#888888", label="chance")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title=f"ROC: {positive}")
    precision, recall, pr_t = precision_recall_curve(scores, positive_mask)
    ap = average_precision(scores, positive_mask)
    ax_pr.plot(recall, precision, "-", drawstyle="steps-pre", label=f"AP {ap:.3f}")
    base = float(np.mean(positive_mask)) if len(positive_mask) else math.nan
    ax_pr.axhline(base, ls=":", color="#888888", label=f"chance ({base:.2f})")
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"precision-recall: {positive}")
    if threshold is not None:  # the operating point: the lowest crossed score still >= threshold
        for ax, xs, ys, ts in ((ax_roc, fpr, tpr, roc_t), (ax_pr, recall, precision, pr_t)):
            at = np.flatnonzero(ts >= threshold)
            if len(at):
                ax.plot(xs[at[-1]], ys[at[-1]], "o", color="#cf222e", label=f"threshold {threshold:.3f}")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_pr_curves(
    probs: np.ndarray, targets: np.ndarray, classes: Sequence[str], max_curves: int = 12
) -> Figure:
    """A precision-recall curve per class with its AP in the legend (classes without a positive
    image are left out). With more than ``max_curves`` classes, the lowest-AP ones are drawn: they
    are the ones to look at, and more lines would not be legible."""
    targets = np.asarray(targets, dtype=bool)
    aps = {
        c: average_precision(probs[:, c], targets[:, c]) for c in range(len(classes)) if targets[:, c].any()
    }
    drawn = sorted(aps, key=lambda c: aps[c])[:max_curves] if len(aps) > max_curves else list(aps)
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    for c in drawn:
        precision, recall, _ = precision_recall_curve(probs[:, c], targets[:, c])
        ax.plot(recall, precision, "-", drawstyle="steps-pre", label=f"{classes[c]} (AP {aps[c]:.3f})")
    title = "precision-recall per class"
    if len(drawn) < len(aps):
        title += f" (the {len(drawn)} lowest AP of {len(aps)})"
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_reliability(before: np.ndarray, after: np.ndarray, labels: np.ndarray, bins: int = 15) -> Figure:
    """Reliability diagram: per confidence bin, the accuracy against the mean confidence, before
    and after calibration, with each one's expected calibration error in the legend. A
    calibrated model's points lie on the diagonal.

    Args:
        before: ``(n, classes)`` probabilities before calibration.
        after: The same images' probabilities after it.
        labels: ``(n,)`` true class indices.
        bins: Equal-width confidence bins over [0, 1].
    """
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="#888888", label="perfectly calibrated")
    for probs, name, style in ((before, "before", "s--"), (after, "after", "o-")):
        groups = reliability_bins(probs, labels, bins)
        ece = expected_calibration_error(probs, labels, bins)
        x, y = [g["confidence"] for g in groups], [g["accuracy"] for g in groups]
        (line,) = ax.plot(x, y, style, markersize=3, label=f"{name} calibration (ECE {ece:.3f})")
        # A bin of a few images is noise: the marker's area tells how much each point weighs.
        counts = np.array([g["count"] for g in groups], dtype=np.float64)
        sizes = 6 + 160 * counts / max(1.0, counts.max(initial=0.0))
        ax.scatter(x, y, s=sizes, color=line.get_color(), alpha=0.45, marker=style[0])
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.set_title(f"reliability ({bins} equal-width bins; marker area: images in the bin)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_coverage(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], marks: dict[str, float] | None = None
) -> Figure:
    """Accuracy against coverage (selective classification), one line per way of ranking the
    images (:func:`graft.evaluation.calibration.coverage_curve`).

    Args:
        curves: Name -> ``(coverage, accuracy)``.
        marks: Name -> a coverage to mark with a vertical line (e.g. the share of images kept
            by a rejection threshold).
    """
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for name, (coverage, accuracy) in curves.items():
        ax.plot(coverage, accuracy, "-", label=name)
    colors = ("#cf222e", "#8250df", "#bf8700")
    for i, (name, x) in enumerate((marks or {}).items()):
        ax.axvline(x, ls="--", color=colors[i % len(colors)], label=f"{name} ({x:.0%} kept)")
    ax.set(xlabel="coverage (share of images answered)", ylabel="accuracy of the answered")
    ax.set_title("accuracy vs coverage (most trusted answered first)")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    if curves or marks:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_image_grid(items: Sequence[tuple[Image.Image, str, str]], cols: int = 4) -> Figure:
    """A grid of images, each with a caption and a caption colour (e.g. green right, red wrong)."""
    cols = max(1, min(cols, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    fig = Figure(figsize=(3.0 * cols, 3.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (image, caption, color) in zip(axes, items, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8, color=color)
    fig.tight_layout()
    return fig


def plot_compare(curves: dict[str, Sequence[float]], title: str) -> Figure:
    """Validation accuracy per epoch, one line per named run (e.g. pretrained and scratch)."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, "o-", label=name)
    longest = max((len(v) for v in curves.values()), default=0)
    ax.set_xticks(range(1, longest + 1))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
