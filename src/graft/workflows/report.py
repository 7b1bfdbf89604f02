"""``report.html``: one self-contained page (images embedded) that shows what a run learned.

Sections: run summary, training curves, confusion matrix, per-class metrics, most-confused pairs,
top losses and a grid of sample predictions (plus the lr-find plot when the run used ``--lr auto``).
Every plot is also written as a PNG beside the page.
"""

from __future__ import annotations

import base64
import html
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from graft.evaluation.interpret import Interpretation
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import atomic_write_text, cannot_write
from graft.infrastructure.text import plural

if TYPE_CHECKING:
    from graft.learner.learner import Learner

REPORT_FILE = "report.html"
# Tables with one row and column per class stay readable up to about this many classes.
MAX_TABLE_CLASSES = 30

SECTIONS = {
    "summary": "Run summary",
    "curves": "Training curves",
    "confusion": "Confusion matrix",
    "per-class": "Per-class precision, recall and F1",
    "confused": "Most-confused classes",
    "top-losses": "Top losses",
    "predictions": "Sample predictions",
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


def _esc(value: object) -> str:
    return html.escape(str(value))


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(header: list[str], rows: list[list[object]], table_id: str = "", left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned (labels), the rest right-aligned."""
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th{' class=l' if i < left else ''}>{_esc(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=l' if i < left else ''}>{_esc(c)}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


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
    from graft.evaluation.plots import plot_history

    if top_losses < 1 or samples < 1:
        raise GraftError("the report needs at least 1 top-loss image and 1 sample image")
    if out is None and learn.run_dir is None:
        raise GraftError("write_report needs out=FOLDER (this learner has no run folder)")
    out = Path(out or learn.run_dir)
    interp = interp if interp is not None else learn.interpret()
    figures = {
        "curves": plot_history(learn.history) if learn.history else None,
        "confusion": interp.plot_confusion(),
        "confusion_normalized": interp.plot_confusion(normalize=True),
        "top_losses": interp.plot_top_losses(top_losses) if len(interp.paths) else None,
        "predictions": interp.plot_predictions(samples) if len(interp.paths) else None,
    }
    try:  # a read-only folder or a full disk is one line, not a traceback from the middle
        pngs = _write_pngs(learn, figures, out)
    except OSError as e:
        raise cannot_write(out, e, "the report was not written") from None
    parts = [
        _summary(learn, interp),
        _curves(learn, pngs),
        _confusion(interp, pngs),
        _per_class(interp),
        _confused(interp),
        _top_losses(interp, pngs, top_losses),
        _predictions(interp, pngs),
    ]
    if "lr_find" in pngs:
        parts.append(_section("lr-find", "Learning-rate finder", _img(pngs["lr_find"], "lr-find plot")))
    nav = "".join(f'<a href="#{k}">{_esc(v)}</a>' for k, v in SECTIONS.items())
    title = f"graft report: {learn.spec.arch} on {Path(str(learn.config.data)).name or 'data'}"
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"
        f'<p class="muted">evaluated on {_esc(interp.source)}</p><nav>{nav}</nav>'
        + "".join(parts)
        + "</body></html>\n"
    )
    path = out / REPORT_FILE
    try:
        atomic_write_text(path, page)
    except OSError as e:
        raise cannot_write(path, e) from None
    return path


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


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_esc(title)}</h2>{body}</section>'


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
        ["accuracy", f"{_fmt(result.accuracy)} (loss {_fmt(result.loss)})"],
    ]
    facts += [[k, _fmt(v)] for k, v in m.items()]
    body = _table(["", ""], facts, "summary-facts", left=2)
    body += _split_counts(learn)
    body += "<details><summary>full configuration</summary>"
    body += _table(["option", "value"], [[k, v] for k, v in cfg.to_dict().items()], "config", left=2)
    body += "</details>"
    return _section("summary", SECTIONS["summary"], body)


def _split_counts(learn: Learner) -> str:
    """Images per class and split, from the split record saved with the run."""
    splits = (learn.split or {}).get("splits") or {}
    if not splits:
        return ""
    counts = {name: Counter(label for _, label in rows) for name, rows in splits.items()}
    names = list(splits)
    rows = [[c, *(counts[n][c] for n in names)] for c in learn.classes[:MAX_TABLE_CLASSES]]
    if len(learn.classes) > MAX_TABLE_CLASSES:
        more = plural(len(learn.classes) - MAX_TABLE_CLASSES, "more class", "more classes")
        rows.append([f"… {more}", *([""] * len(names))])
    rows.append(["total", *(len(splits[n]) for n in names)])
    return "<h3>Images per split</h3>" + _table(["class", *names], rows, "split-counts")


def _curves(learn: Learner, pngs: dict[str, bytes]) -> str:
    if "curves" not in pngs:
        return _section("curves", SECTIONS["curves"], '<p class="muted">this run has no training history</p>')
    phases = list(dict.fromkeys(str(r["phase"]) for r in learn.history))
    rows = [
        [
            r["epoch"],
            r["phase"],
            *(_fmt(_num(r[k])) for k in ("train_loss", "train_acc", "val_loss", "val_acc")),
            f"{_num(r['lr']):.2e}",
            f"{_num(r['seconds']):.1f}",
        ]
        for r in learn.history
    ]
    body = (
        _img(pngs["curves"], "training curves")
        + f'<p class="muted">shaded: phases ({", ".join(phases)}); frozen = body frozen, head trained</p>'
        + "<details><summary>per-epoch table</summary>"
        + _table(
            ["epoch", "phase", "train loss", "train acc", "val loss", "val acc", "lr", "seconds"],
            rows,
            "history",
            left=2,
        )
        + "</details>"
    )
    return _section("curves", SECTIONS["curves"], body)


def _num(x: object) -> float:
    return float(x) if x not in ("", None) else math.nan


def _confusion(interp: Interpretation, pngs: dict[str, bytes]) -> str:
    classes = interp.classes
    body = '<p class="muted">rows: true class; columns: predicted class</p>'
    if len(classes) <= MAX_TABLE_CLASSES:
        counts = interp.confusion()
        norm = interp.confusion(normalize=True)
        body += "<h3>Counts</h3>" + _table(
            ["true \\ predicted", *classes],
            [[c, *map(int, row)] for c, row in zip(classes, counts, strict=True)],
            "confusion-counts",
        )
        body += "<h3>Row-normalised</h3>" + _table(
            ["true \\ predicted", *classes],
            [[c, *(f"{v:.2f}" for v in row)] for c, row in zip(classes, norm, strict=True)],
            "confusion-normalized",
        )
    else:
        body += f'<p class="muted">{len(classes)} classes: see the plots, or graft evaluate --json</p>'
    body += _img(pngs["confusion"], "confusion matrix (counts)")
    body += _img(pngs["confusion_normalized"], "confusion matrix (row-normalised)")
    return _section("confusion", SECTIONS["confusion"], body)


def _per_class(interp: Interpretation) -> str:
    result = interp.result
    rows = [
        [r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
        for r in result.per_class
    ]
    body = f"<p>accuracy {_fmt(result.accuracy)}, loss {_fmt(result.loss)}, {plural(result.n, 'image')}</p>"
    body += _table(["class", "precision", "recall", "F1", "support"], rows, "per-class-table")
    return _section("per-class", SECTIONS["per-class"], body)


def _confused(interp: Interpretation) -> str:
    pairs = interp.most_confused(10)
    body = (
        _table(["true class", "predicted as", "images"], [list(p) for p in pairs], "confused-pairs", left=2)
        if pairs
        else "<p>no mistakes</p>"
    )
    return _section("confused", SECTIONS["confused"], body)


def _top_losses(interp: Interpretation, pngs: dict[str, bytes], k: int) -> str:
    if "top_losses" not in pngs:
        return _section("top-losses", SECTIONS["top-losses"], "<p>no images</p>")
    rows = [
        [r["path"].name, r["true"], r["pred"], f"{r['prob']:.3f}", f"{r['loss']:.3f}"]
        for r in interp.top_losses(k)
    ]
    body = (
        '<p class="muted">captions: true / predicted, probability of the prediction, loss</p>'
        + _img(pngs["top_losses"], "top losses")
        + _table(["image", "true", "predicted", "probability", "loss"], rows, "top-losses-table", left=3)
    )
    return _section("top-losses", SECTIONS["top-losses"], body)


def _predictions(interp: Interpretation, pngs: dict[str, bytes]) -> str:
    if "predictions" not in pngs:
        return _section("predictions", SECTIONS["predictions"], "<p>no images</p>")
    body = (
        '<p class="muted">a random sample; <span class="right">green: right</span>, '
        '<span class="wrong">red: wrong</span></p>' + _img(pngs["predictions"], "sample predictions")
    )
    return _section("predictions", SECTIONS["predictions"], body)
