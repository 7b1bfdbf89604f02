"""``report.html``: one self-contained page (images embedded) that shows what a run learned.

Sections: run summary, training curves, confusion matrix, ROC and PR curves (two classes; each
class against the rest otherwise), confidence (calibration before and after the temperature,
accuracy against coverage, the "unknown" rule), per-class metrics, most-confused pairs, top losses
and a grid of sample predictions (plus the lr-find plot when the run used ``--lr auto``). A
multi-label run has per-class PR curves, per-class thresholds and missed/extra labels instead of the
confusion matrix, the ROC and the confidence sections. Every plot is also written as a PNG beside
the page.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from graft.evaluation.bootstrap import interval_text
from graft.evaluation.interpret import Interpretation
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import atomic_write_text, cannot_write
from graft.infrastructure.text import plural
from graft.workflows.report_sections import (
    BODIES,
    MAX_TABLE_CLASSES,
    confidence_figures,
    esc,
    fmt,
    img,
    num,
    section,
    table,
)

if TYPE_CHECKING:
    from graft.learner.learner import Learner

REPORT_FILE = "report.html"

SECTIONS = {
    "summary": "Run summary",
    "curves": "Training curves",
    "confusion": "Confusion matrix",
    "roc-pr": "ROC and PR curves",
    "confidence": "Confidence",
    "per-class": "Per-class precision, recall and F1",
    "confused": "Most-confused classes",
    "top-losses": "Top losses",
    "predictions": "Sample predictions",
}
MULTI_LABEL_SECTIONS = {
    "summary": "Run summary",
    "curves": "Training curves",
    "pr-curves": "Per-class PR curves",
    "per-class": "Per-class precision, recall, F1, AP and thresholds",
    "confused": "Missed and extra labels",
    "top-losses": "Top losses",
    "predictions": "Sample predictions",
}
# Validation scores the training side may record beside accuracy (older runs lack them).
EXTRA_HISTORY = {
    "val_bal_acc": "val bal. acc",
    "val_macro_f1": "val macro F1",
    "val_micro_f1": "val micro F1",
    "val_map": "val mAP",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;
color:#1f2328;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #eee}.muted{color:#656d76}nav a{margin-right:.8rem}
.right{color:#1a7f37}.wrong{color:#cf222e}details{margin:.6rem 0}
"""


def report_sections(interp: Interpretation) -> dict[str, str]:
    """The sections of the report of these predictions, in page order: id -> title."""
    return MULTI_LABEL_SECTIONS if interp.multi_label else SECTIONS


def write_report(
    learn: Learner,
    interp: Interpretation | None = None,
    out: str | Path | None = None,
    *,
    top_losses: int = 9,
    samples: int = 12,
) -> Path:
    """Write ``report.html`` and its PNGs for a trained learner.

    Args:
        learn: A trained (or loaded) learner; its history, config, split and metrics are shown.
        interp: Predictions to show; default: :meth:`Learner.interpret` on the learner's own data
            (the labeled test split if there is one, else val).
        out: Folder to write to (default: the run folder, ``learn.run_dir``).
        top_losses: Images in the top-losses grid.
        samples: Images in the sample-predictions grid.

    Returns:
        The path of ``report.html``.
    """
    if top_losses < 1 or samples < 1:
        raise GraftError("the report needs at least 1 top-loss image and 1 sample image")
    if out is None and learn.run_dir is None:
        raise GraftError("write_report needs out=FOLDER (this learner has no run folder)")
    out = Path(out or learn.run_dir)
    interp = interp if interp is not None else learn.interpret()
    try:  # a read-only folder or a full disk is one line, not a traceback from the middle
        pngs = _write_pngs(learn, _figures(learn, interp, top_losses, samples), out)
    except OSError as e:
        raise cannot_write(out, e, "the report was not written") from None
    sections = report_sections(interp)
    parts = [
        section(key, title, _body(key, learn, interp, pngs, top_losses)) for key, title in sections.items()
    ]
    if "lr_find" in pngs:
        parts.append(section("lr-find", "Learning-rate finder", img(pngs["lr_find"], "lr-find plot")))
    nav = "".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in sections.items())
    title = f"graft report: {learn.spec.arch} on {Path(str(learn.config.data)).name or 'data'}"
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"
        f'<p class="muted">evaluated on {esc(interp.source)}</p><nav>{nav}</nav>'
        + "".join(parts)
        + "</body></html>\n"
    )
    path = out / REPORT_FILE
    try:
        atomic_write_text(path, page)
    except OSError as e:
        raise cannot_write(path, e) from None
    return path


def _body(key: str, learn: Learner, interp: Interpretation, pngs: dict[str, bytes], k: int) -> str:
    """The HTML inside section ``key``."""
    if key == "summary":
        return _summary(learn, interp)
    if key == "curves":
        return _curves(learn, pngs)
    return BODIES[key](interp, pngs, k)


def _figures(learn: Learner, interp: Interpretation, top_losses: int, samples: int) -> dict:
    """The report's figures by PNG name (None: not drawn for this run)."""
    from graft.evaluation.plots import plot_history

    images = len(interp.paths) > 0
    figures = {"curves": plot_history(learn.history) if learn.history else None}
    if interp.multi_label:
        figures["pr_curves"] = interp.plot_pr_curves() if images else None
    else:
        figures["confusion"] = interp.plot_confusion()
        figures["confusion_normalized"] = interp.plot_confusion(normalize=True)
        # Two classes only: with more, the section is a table (one class against the rest).
        figures["roc_pr"] = interp.plot_roc_pr() if images and len(interp.classes) == 2 else None
        figures |= confidence_figures(interp)
    figures["top_losses"] = interp.plot_top_losses(top_losses) if images else None
    figures["predictions"] = interp.plot_predictions(samples) if images else None
    return figures


def _write_pngs(learn: Learner, figures: dict, out: Path) -> dict[str, bytes]:
    """Save the figures (and the lr-find plot and CSV of a run trained with lr "auto") as PNGs in
    ``out``; returns each PNG's bytes, for embedding, by name."""
    from graft.evaluation.plots import save_png

    pngs = {name: save_png(fig, out / f"{name}.png") for name, fig in figures.items() if fig is not None}
    finder = getattr(learn, "lr_finder", None)  # set when this session trained with lr "auto"
    if finder is not None:
        pngs["lr_find"] = save_png(finder.plot(), out / "lr_find.png")
        atomic_write_text(out / "lr_find.csv", finder.to_csv())
    elif (out / "lr_find.png").is_file():
        pngs["lr_find"] = (out / "lr_find.png").read_bytes()
    return pngs


def _summary(learn: Learner, interp: Interpretation) -> str:
    cfg, spec, pre, m = learn.resolved_config or learn.config, learn.spec, learn.preprocessing, learn.metrics
    result = interp.result
    facts = [
        [
            "model",
            f"{spec.source}:{spec.arch}" + (f", MLP head {spec.head_hidden}" if spec.head_hidden else ""),
        ],
        ["weights", "pretrained (ImageNet)" if cfg.pretrained else "random init"],
        ["data", f"{cfg.data} (layout {(learn.split or {}).get('layout', '?')})"],
        [
            "classes",
            f"{len(learn.classes)}: "
            + ", ".join(learn.classes[:MAX_TABLE_CLASSES])
            + (" …" if len(learn.classes) > MAX_TABLE_CLASSES else ""),
        ],
        [
            "training",
            f"mode {cfg.mode}, {cfg.freeze_epochs} frozen + {cfg.epochs} epochs, "
            f"{cfg.optimizer} lr {cfg.lr}, {cfg.schedule} schedule, batch {cfg.batch_size}",
        ],
        [
            "input",
            f"{pre.input_size}px {pre.interpolation}, crop {pre.crop_pct}, mean {pre.mean}, std {pre.std}",
        ],
        [
            "evaluated on",
            f"{interp.source}: {plural(result.n, 'image')}"
            + (f", {interp.undecodable} skipped (undecodable)" if interp.undecodable else "")
            + (f", test-time augmentation ({interp.tta} views)" if interp.tta else ""),
        ],
        *_scores(interp),
    ]
    facts += [[k, fmt(v)] for k, v in m.items()]
    body = table(["", ""], facts, "summary-facts", left=2)
    body += _split_counts(learn)
    body += "<details><summary>full configuration</summary>"
    body += table(["option", "value"], [[k, v] for k, v in cfg.to_dict().items()], "config", left=2)
    body += "</details>"
    return body


def _scores(interp: Interpretation) -> list[list[str]]:
    """The summary's rows of scores on the evaluated images."""
    result, decision = interp.result, interp.decision
    chosen = f" ({decision.chosen_by})" if decision.chosen_by else ""
    if interp.multi_label:
        ci = result.intervals
        return [
            [
                "exact match",
                f"{fmt(result.accuracy)}{interval_text(ci.get('accuracy'), True)} "
                f"(loss {fmt(result.loss)}, binary cross-entropy)",
            ],
            [
                "micro F1 / macro F1",
                f"{fmt(result.micro_f1)}{interval_text(ci.get('micro_f1'))} / "
                f"{fmt(result.macro_f1)}{interval_text(ci.get('macro_f1'))}",
            ],
            ["mean average precision", fmt(result.mean_ap) + interval_text(ci.get("map"))],
            [
                "thresholds",
                ("per class, see below" if decision.thresholds else "0.5 for every class") + chosen,
            ],
        ]
    ci = result.intervals
    rows = [
        [
            "accuracy",
            f"{fmt(result.accuracy)}{interval_text(ci.get('accuracy'), True)} (loss {fmt(result.loss)})",
        ],
        ["balanced accuracy", fmt(result.balanced_accuracy) + interval_text(ci.get("balanced_accuracy"))],
        ["macro F1", fmt(result.macro_f1) + interval_text(ci.get("macro_f1"))],
    ]
    if result.roc_auc is not None:
        positive = interp.classes[decision.positive]
        rows.append(["ROC AUC / AP", f"{fmt(result.roc_auc)} / {fmt(result.average_precision)} ({positive})"])
        if decision.thresholds:
            rows.append(
                ["threshold", f"{positive} when its probability ≥ {decision.thresholds[0]:.4f}{chosen}"]
            )
    return rows


def _split_counts(learn: Learner) -> str:
    """Images per class and split, from the split record saved with the run."""
    splits = (learn.split or {}).get("splits") or {}
    if not splits:
        return ""
    counts = {name: Counter(_each_label(rows)) for name, rows in splits.items()}
    names = list(splits)
    rows = [[c, *(counts[n][c] for n in names)] for c in learn.classes[:MAX_TABLE_CLASSES]]
    if len(learn.classes) > MAX_TABLE_CLASSES:
        more = plural(len(learn.classes) - MAX_TABLE_CLASSES, "more class", "more classes")
        rows.append([f"… {more}", *([""] * len(names))])
    rows.append(["total", *(len(splits[n]) for n in names)])
    return "<h3>Images per split</h3>" + table(["class", *names], rows, "split-counts")


def _each_label(rows: list) -> list[str]:
    """Every label of the split's rows: one per row, or a multi-label row's list of them."""
    return [x for _, label in rows for x in (label if isinstance(label, list | tuple) else [label])]


def _curves(learn: Learner, pngs: dict) -> str:
    if "curves" not in pngs:
        return '<p class="muted">this run has no training history</p>'
    phases = list(dict.fromkeys(str(r["phase"]) for r in learn.history))
    extra = [k for k in EXTRA_HISTORY if any(r.get(k) not in ("", None) for r in learn.history)]
    columns = ["train_loss", "train_acc", "val_loss", "val_acc", *extra]
    rows = [
        [
            r["epoch"],
            r["phase"],
            *(fmt(num(r.get(k))) for k in columns),
            f"{num(r.get('lr')):.2e}",
            f"{num(r.get('seconds')):.1f}",
        ]
        for r in learn.history
    ]
    header = ["epoch", "phase", "train loss", "train acc", "val loss", "val acc"]
    header += [EXTRA_HISTORY[k] for k in extra] + ["lr", "seconds"]
    return (
        img(pngs["curves"], "training curves")
        + f'<p class="muted">shaded: phases ({", ".join(phases)}); frozen = body frozen, head trained</p>'
        + "<details><summary>per-epoch table</summary>"
        + table(header, rows, "history", left=2)
        + "</details>"
    )
