"""The HTML of ``report.html``: its small building blocks and the sections drawn from a run's
predictions alone (an :class:`Interpretation` and its PNGs). :mod:`graft.workflows.report` puts
them together with the sections that read the run itself (summary, training curves).
"""

from __future__ import annotations

import base64
import html
import math
from typing import TYPE_CHECKING

import numpy as np

from graft.evaluation.calibration import coverage_curve, expected_calibration_error, uncalibrated
from graft.evaluation.curves import average_precision, roc_auc
from graft.evaluation.interpret import Interpretation
from graft.infrastructure.text import plural

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.figure import Figure

# Tables with one row and column per class stay readable up to about this many classes.
MAX_TABLE_CLASSES = 30
# The coverages of the Confidence section's table: the accuracy when answering that share.
COVERAGES = (1.0, 0.9, 0.8, 0.5)


def esc(value: object) -> str:
    """``value`` as text safe inside HTML."""
    return html.escape(str(value))


def img(data: bytes, alt: str) -> str:
    """A PNG embedded in the page (the report is one self-contained file)."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def table(header: list[str], rows: list[list[object]], table_id: str = "", left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned (labels), the rest right-aligned."""
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th{' class=l' if i < left else ''}>{esc(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=l' if i < left else ''}>{esc(c)}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(value: object) -> str:
    """A score with 4 decimals, ``-`` when undefined (NaN); anything else as text."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def section(key: str, title: str, body: str) -> str:
    """A titled section that the navigation bar links to by ``key``."""
    return f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>'


def num(x: object) -> float:
    """A history cell as a float (rows read back from history.csv hold strings; NaN: missing)."""
    return float(x) if x not in ("", None) else math.nan


def _confusion(interp: Interpretation, pngs: dict, _k: int) -> str:
    classes = interp.classes
    body = '<p class="muted">rows: true class; columns: predicted class</p>'
    if len(classes) <= MAX_TABLE_CLASSES:
        counts = interp.confusion()
        norm = interp.confusion(normalize=True)
        body += "<h3>Counts</h3>" + table(
            ["true \\ predicted", *classes],
            [[c, *map(int, row)] for c, row in zip(classes, counts, strict=True)],
            "confusion-counts",
        )
        body += "<h3>Row-normalised</h3>" + table(
            ["true \\ predicted", *classes],
            [[c, *(f"{v:.2f}" for v in row)] for c, row in zip(classes, norm, strict=True)],
            "confusion-normalized",
        )
    else:
        body += f'<p class="muted">{len(classes)} classes: see the plots, or graft evaluate --json</p>'
    body += img(pngs["confusion"], "confusion matrix (counts)")
    body += img(pngs["confusion_normalized"], "confusion matrix (row-normalised)")
    return body


def _roc_pr(interp: Interpretation, pngs: dict, _k: int) -> str:
    """Two classes: the positive class's curves. More: each class against the rest, as a table
    (one curve per class would not be legible for many classes)."""
    if "roc_pr" in pngs:
        result = interp.result
        positive = interp.classes[interp.decision.positive]
        return (
            f'<p class="muted">positive class: {esc(positive)}; the red dot is the decision threshold</p>'
            + img(pngs["roc_pr"], "ROC and PR curves")
            + table(
                ["positive class", "ROC AUC", "average precision"],
                [[positive, fmt(result.roc_auc), fmt(result.average_precision)]],
                "roc-pr-table",
            )
        )
    probs, labels = interp.probs, interp.labels
    rows = [
        [c, fmt(roc_auc(probs[:, i], labels == i)), fmt(average_precision(probs[:, i], labels == i))]
        for i, c in enumerate(interp.classes[:MAX_TABLE_CLASSES])
    ]
    return '<p class="muted">each class against the rest (its probability ranks the images)</p>' + table(
        ["class", "ROC AUC", "average precision"], rows, "roc-pr-table"
    )


def _pr_curves(interp: Interpretation, pngs: dict, _k: int) -> str:
    if "pr_curves" not in pngs:
        return "<p>no images</p>"
    return (
        f'<p class="muted">mean average precision {fmt(interp.result.mean_ap)}; AP ranks the '
        "probabilities, so it does not depend on the thresholds</p>"
        + img(pngs["pr_curves"], "per-class PR curves")
    )


def _per_class(interp: Interpretation, _pngs: dict, _k: int) -> str:
    result = interp.result
    if interp.multi_label:
        header = ["class", "precision", "recall", "F1", "AP", "support", "answered", "threshold"]
        rows = [
            [
                r["class"],
                *(f"{r[k]:.3f}" for k in ("precision", "recall", "f1")),
                _ap_text(r["ap"]),
                r["support"],
                r["predicted"],
                f"{r['threshold']:.3f}",
            ]
            for r in result.per_class
        ]
        body = (
            f"<p>exact match {fmt(result.accuracy)}, micro F1 {fmt(result.micro_f1)}, macro F1 "
            f"{fmt(result.macro_f1)}, loss {fmt(result.loss)}, {plural(result.n, 'image')}; "
            f"{result.no_label} answered no label, {result.none_true} have none of the classes</p>"
        )
        return body + table(header, rows, "per-class-table")
    rows = [
        [r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
        for r in result.per_class
    ]
    body = (
        f"<p>accuracy {fmt(result.accuracy)}, balanced accuracy {fmt(result.balanced_accuracy)}, "
        f"macro F1 {fmt(result.macro_f1)}, loss {fmt(result.loss)}, {plural(result.n, 'image')}</p>"
    )
    return body + table(["class", "precision", "recall", "F1", "support"], rows, "per-class-table")


def _confused(interp: Interpretation, _pngs: dict, _k: int) -> str:
    pairs = interp.most_confused(10)
    if not pairs:
        return "<p>no mistakes</p>"
    if interp.multi_label:
        note = '<p class="muted">missed: the image has the label, not answered; extra: answered, not true</p>'
        return note + table(
            ["class", "mistake", "images"], [list(p) for p in pairs], "confused-pairs", left=2
        )
    return table(["true class", "predicted as", "images"], [list(p) for p in pairs], "confused-pairs", left=2)


def _top_losses(interp: Interpretation, pngs: dict, k: int) -> str:
    if "top_losses" not in pngs:
        return "<p>no images</p>"
    if interp.multi_label:
        note = "captions: true labels, answered labels, loss (mean binary cross-entropy over the classes)"
        header = ["image", "true", "answered", "worst class", "its probability", "loss"]
        rows = [
            [r["path"].name, r["true"], r["pred"], r["worst"], f"{r['prob']:.3f}", f"{r['loss']:.3f}"]
            for r in interp.top_losses(k)
        ]
        left = 4
    else:
        note = "captions: true / predicted, probability of the prediction, loss"
        header = ["image", "true", "predicted", "probability", "loss"]
        rows = [
            [r["path"].name, r["true"], r["pred"], f"{r['prob']:.3f}", f"{r['loss']:.3f}"]
            for r in interp.top_losses(k)
        ]
        left = 3
    return (
        f'<p class="muted">{note}</p>'
        + img(pngs["top_losses"], "top losses")
        + table(header, rows, "top-losses-table", left=left)
    )


def _predictions(interp: Interpretation, pngs: dict, _k: int) -> str:
    if "predictions" not in pngs:
        return "<p>no images</p>"
    wrong = "some label wrong" if interp.multi_label else "wrong"
    return (
        f'<p class="muted">a random sample; <span class="right">green: right</span>, '
        f'<span class="wrong">red: {wrong}</span></p>' + img(pngs["predictions"], "sample predictions")
    )


def _confidence_data(interp: Interpretation) -> dict:
    """The numbers behind the Confidence section (single-label, at least one image).

    The answers are the decision's (a binary threshold included); their confidence is the
    calibrated probability of the answered class. An image without an out-of-distribution score
    (NaN) is never rejected, so it ranks first by that score."""
    after, labels, t = interp.probs, interp.labels, interp.decision.temperature
    before = uncalibrated(after, t)
    rows = np.arange(len(labels))
    answered = interp.preds
    correct = answered == labels
    curves = {"calibrated confidence": coverage_curve(after[rows, answered], correct)}
    data = {"before": before, "after": after, "correct": correct, "curves": curves}
    if interp.scores is not None:
        scores = np.asarray(interp.scores, dtype=np.float64)
        curves["out-of-distribution score"] = coverage_curve(
            np.where(np.isnan(scores), np.inf, -scores), correct
        )
        reject = interp.decision.reject
        if reject is not None:
            data["rejected"] = reject.rejected(scores)
    return data


def confidence_figures(interp: Interpretation) -> dict[str, Figure | None]:
    """The Confidence section's figures by PNG name (None: no images to draw)."""
    from graft.evaluation.plots import plot_coverage, plot_reliability

    if len(interp.labels) == 0:
        return {"reliability": None, "coverage": None}
    data = _confidence_data(interp)
    marks = None
    if "rejected" in data:
        marks = {f'"{interp.decision.reject.label}" threshold': 1.0 - float(data["rejected"].mean())}
    return {
        "reliability": plot_reliability(data["before"], data["after"], interp.labels),
        "coverage": plot_coverage(data["curves"], marks),
    }


def _confidence(interp: Interpretation, pngs: dict, _k: int) -> str:
    if "reliability" not in pngs:
        return "<p>no images</p>"
    data, labels, decision = _confidence_data(interp), interp.labels, interp.decision
    t = decision.temperature
    note = f"temperature T = {t:.4f}: the calibrated probabilities are softmax(logits / T)"
    if t == 1.0:
        note = "no temperature stored (T = 1): the probabilities are the model's own"
    if interp.source.endswith("(val)"):  # what the run chose on val, measured on val again
        note += "; T and the unknown threshold were chosen on these val images, so they flatter it"
    rows = [
        [
            name,
            f"{temp:g}",
            fmt(expected_calibration_error(p, labels)),
            fmt(_mean_top(p)),
            fmt(_nll(p, labels)),
        ]
        for name, temp, p in (("uncalibrated", 1.0, data["before"]), ("calibrated", t, data["after"]))
    ]
    body = (
        f'<p class="muted">{esc(note)}. ECE (expected calibration error): the gap between confidence '
        f"and accuracy over 15 confidence bins; 0 is perfectly calibrated. Accuracy (top class) "
        f"{fmt(_mean_top_right(data['after'], labels))}.</p>"
        + table(["probabilities", "temperature", "ECE", "mean confidence", "loss"], rows, "calibration-table")
        + img(pngs["reliability"], "reliability diagram")
        + '<p class="muted">answering only the most trusted images first: how accurate the answers '
        "stay as more are answered</p>" + img(pngs["coverage"], "accuracy vs coverage")
    )
    return body + _coverage_table(data["curves"]) + _unknown(interp, data)


def _coverage_table(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """The accuracy when answering the :data:`COVERAGES` shares of the images, per ranking."""
    n = len(next(iter(curves.values()))[0])
    # The smallest number of images that reaches the coverage (the epsilon: 0.9 * 10 is 9.000…01).
    at = [max(1, math.ceil(c * n - 1e-9)) - 1 for c in COVERAGES]
    rows = [
        [f"{c:.0%}", *(fmt(float(acc[i])) for _, acc in curves.values())]
        for c, i in zip(COVERAGES, at, strict=True)
    ]
    return table(["coverage", *(f"ranked by {name}" for name in curves)], rows, "coverage-table")


def _unknown(interp: Interpretation, data: dict) -> str:
    """The stored "unknown" rule applied to these images."""
    reject = interp.decision.reject
    if reject is None:
        return ""
    if "rejected" not in data:
        why = f'the "{reject.label}" rule needs out-of-distribution scores, which these predictions lack'
        return f'<p class="muted">{esc(why)}</p>'
    rejected, correct = data["rejected"], data["correct"]
    kept = correct[~rejected]
    facts = [
        [
            "threshold",
            f"cosine distance > {reject.threshold:.4f}"
            + (f" ({reject.chosen_by})" if reject.chosen_by else ""),
        ],
        [
            f'answered "{reject.label}"',
            f"{rejected.mean():.1%} ({int(rejected.sum())} of {plural(len(rejected), 'image')})",
        ],
        ["accuracy of the rest", fmt(float(kept.mean())) if len(kept) else "-"],
        ["accuracy of all", fmt(float(correct.mean()))],
    ]
    title = esc(f'Answered "{reject.label}"')
    return f"<h3>{title}</h3>" + table(["", ""], facts, "unknown-table", left=2)


def _mean_top(probs: np.ndarray) -> float:
    return float(probs.max(axis=1).mean())


def _mean_top_right(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p(true class)`` (the loss the report shows elsewhere)."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def _ap_text(ap: float | None) -> str:
    return "-" if ap is None else f"{ap:.3f}"


# The body of each section drawn from the predictions alone, by section id: (interp, pngs, k).
BODIES = {
    "confusion": _confusion,
    "roc-pr": _roc_pr,
    "confidence": _confidence,
    "pr-curves": _pr_curves,
    "per-class": _per_class,
    "confused": _confused,
    "top-losses": _top_losses,
    "predictions": _predictions,
}
