"""``doctor.html``: one self-contained page (thumbnails embedded) of what ``graft doctor`` found.

The page opens with a summary, a table of contents with counts and the class balance (images per
class and split, with notes on what it means for training); then one section per kind of problem,
in :data:`~graft.evaluation.findings.ISSUES` order, each a grid of small cards: the image (and the
image it is a copy of), where it is, its label and split, the score, what to do and why. No
JavaScript and no external resources: it opens from a mail attachment or an archive as it is.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from graft.data.images import load_image
from graft.evaluation.findings import ISSUES, Finding, sort_findings
from graft.infrastructure.fileio import atomic_write_text, cannot_write

# Longest side of a thumbnail, in pixels.
THUMB_SIZE = 160
# JPEG quality of the thumbnails: small enough for a page of a few hundred, sharp enough to judge.
THUMB_QUALITY = 75
# Threads decoding thumbnails (Pillow releases the GIL while it decodes and resizes).
THUMB_WORKERS = min(16, (os.cpu_count() or 1) + 4)

_CSS = f"""
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1300px;
color:#1f2328;padding:0 1rem}}
h1{{margin-bottom:.2rem}}h2{{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2.2rem}}
table{{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}}
th,td{{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:right}}
th{{background:#f6f8fa}}td.l,th.l{{text-align:left}}tr.total td{{font-weight:600}}
.muted{{color:#656d76}}nav a{{margin-right:.8rem;white-space:nowrap}}ul.summary li{{margin:.15rem 0}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:.6rem}}
.card{{border:1px solid #d0d7de;border-radius:6px;padding:.4rem;font-size:.78rem;overflow:hidden;
background:#fff}}
.card.pair{{grid-column:span 2}}
.pics{{display:flex;gap:.3rem;align-items:center;justify-content:center;min-height:{THUMB_SIZE}px}}
.pics img{{max-width:{THUMB_SIZE}px;max-height:{THUMB_SIZE}px;border:1px solid #eee}}
.ph{{width:{THUMB_SIZE // 2}px;height:{THUMB_SIZE // 2}px;display:flex;align-items:center;
justify-content:center;text-align:center;background:#f6f8fa;border:1px dashed #afb8c1;color:#656d76}}
.path{{font-family:ui-monospace,monospace;word-break:break-all;margin-top:.3rem}}
.act{{font-weight:600}}.act.relabel{{color:#9a6700}}.act.quarantine{{color:#cf222e}}
.act.keep{{color:#1a7f37}}.detail{{color:#656d76}}
"""


def _esc(value: object) -> str:
    """``value`` as text safe inside HTML, attribute values (quoted with ``"``) included."""
    return html.escape(str(value), quote=True)


def thumbnail_uri(path: Path, size: int = THUMB_SIZE) -> str | None:
    """A small JPEG of an image, as a ``data:`` URI to embed in a page.

    Args:
        path: The image file.
        size: The thumbnail fits in ``size`` x ``size`` pixels (aspect ratio kept; never enlarged).

    Returns:
        ``data:image/jpeg;base64,...`` of the image upright (EXIF orientation applied), or None
        when it cannot be decoded (a missing, truncated or corrupt file); never raises for a bad
        file.
    """
    try:
        # min_size: big JPEGs are reduced inside the decoder, other formats by an integer factor.
        im = load_image(Path(path), min_size=size)
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=THUMB_QUALITY)
    except Exception:  # any decoder error (OSError, ValueError, SyntaxError, ...): no thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnails(paths: Iterable[Path]) -> dict[Path, str | None]:
    """The thumbnail of each distinct path, built concurrently: path -> data URI (None: undecodable)."""
    unique = list(dict.fromkeys(Path(p) for p in paths))
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(THUMB_WORKERS, len(unique))) as pool:
        return dict(zip(unique, pool.map(thumbnail_uri, unique), strict=True))


def _rel(path: Path | None, root: Path) -> str:
    """``path`` relative to ``root`` with forward slashes (as given when it is on another drive)."""
    if path is None:
        return ""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # Windows: another drive
        return Path(path).as_posix()


def _picture(uri: str | None, alt: str, unreadable: bool = False) -> str:
    """An embedded thumbnail, or a placeholder box when there is none."""
    if uri is None:
        text = "unreadable" if unreadable else "cannot show"
        return f'<div class="ph" title="{_esc(alt)}">{text}</div>'
    return f'<img src="{uri}" alt="{_esc(alt)}" title="{_esc(alt)}" decoding="async">'


def _action(f: Finding) -> str:
    """What to do about a finding, e.g. ``relabel → cat``."""
    text = f.action
    if f.suggested_label:
        text += f" → {f.suggested_label}" if f.action == "relabel" else f" (suggested: {f.suggested_label})"
    return f'<div class="act {_esc(f.action)}">{_esc(text)}</div>'


def _card(f: Finding, root: Path, thumbs: dict[Path, str | None]) -> str:
    """One finding as a card: thumbnail(s), path, label/split, score, action and detail."""
    rel = _rel(f.path, root)
    unreadable = f.issue == "unreadable"
    pics = _picture(None if unreadable else thumbs.get(Path(f.path)), rel, unreadable)
    other = ""
    if f.other is not None:
        other_rel = _rel(f.other, root)
        pics += _picture(thumbs.get(Path(f.other)), other_rel)
        other = f'<div class="other muted">copy of <span class="path">{_esc(other_rel)}</span></div>'
    where = " · ".join(_esc(x) for x in (f.label or "unlabeled", f.split) if x)
    detail = f'<div class="detail">{_esc(f.detail)}</div>' if f.detail else ""
    return (
        f'<div class="card{" pair" if f.other is not None else ""}">'
        f'<div class="pics">{pics}</div>'
        f'<div class="path">{_esc(rel)}</div>'
        f'<div class="where">{where} · score <span class="score">{f.score:.3f}</span></div>'
        f"{_action(f)}{other}{detail}</div>"
    )


def _groups(findings: list[Finding]) -> dict[str, list[Finding]]:
    """Findings by issue, in :data:`ISSUES` order (unknown issues last), highest score first."""
    groups: dict[str, list[Finding]] = {}
    for f in sort_findings(findings):
        groups.setdefault(f.issue, []).append(f)
    return groups


def _balance_table(balance: dict[str, dict[str, int]]) -> str:
    """Images per class (rows) and split (columns), with a total column and a total row."""
    splits = list(balance)
    classes = list(dict.fromkeys(c for counts in balance.values() for c in counts))
    head = "".join(f"<th>{_esc(s)}</th>" for s in ["class", *splits, "total"])
    head = head.replace("<th>", '<th class="l">', 1)
    rows = []
    for c in classes:
        counts = [int(balance[s].get(c, 0)) for s in splits]
        cells = "".join(f"<td>{n}</td>" for n in [*counts, sum(counts)])
        rows.append(f'<tr><td class="l">{_esc(c)}</td>{cells}</tr>')
    totals = [sum(int(n) for n in balance[s].values()) for s in splits]
    cells = "".join(f"<td>{n}</td>" for n in [*totals, sum(totals)])
    rows.append(f'<tr class="total"><td class="l">total</td>{cells}</tr>')
    return f'<table id="balance-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _balance_section(balance: dict[str, dict[str, int]], notes: list[str]) -> str:
    """The class-balance section: the table and the notes under it."""
    body = _balance_table(balance) if balance else '<p class="muted">no labeled images</p>'
    if notes:
        body += '<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"
    return f'<section id="balance"><h2>Class balance</h2>{body}</section>'


def _issue_section(issue: str, group: list[Finding], root: Path, thumbs: dict[Path, str | None]) -> str:
    """One kind of problem: its heading with the count, then a grid of cards."""
    title = ISSUES.get(issue, issue)
    cards = "".join(_card(f, root, thumbs) for f in group)
    return (
        f'<section id="{_esc(_anchor(issue))}" class="issue" data-issue="{_esc(issue)}">'
        f'<h2>{_esc(title)} <span class="muted">({len(group)})</span></h2>'
        f'<div class="grid">{cards}</div></section>'
    )


def _anchor(issue: str) -> str:
    """The id of an issue's section."""
    return "issue-" + issue


def render_page(
    findings: list[Finding],
    root: Path,
    summary: list[str],
    balance: dict[str, dict[str, int]],
    notes: list[str],
    title: str = "graft doctor",
) -> str:
    """The HTML of ``doctor.html``: one self-contained page, thumbnails embedded.

    Args:
        findings: What the doctor found, in any order (each section sorts its own by score).
        root: The dataset folder; paths are shown relative to it.
        summary: Lines shown at the top of the page.
        balance: Images per split and class: split -> class -> count.
        notes: What the balance means for training, shown under its table.
        title: The page's title and heading.

    Returns:
        The page. Every text taken from the data (paths, class names, details) is escaped.
    """
    groups = _groups(findings)
    wanted = [f.path for f in findings if f.issue != "unreadable"]
    wanted += [f.other for f in findings if f.other is not None]
    thumbs = _thumbnails(wanted)
    nav = '<a href="#balance">Class balance</a>' + "".join(
        f'<a href="#{_esc(_anchor(k))}">{_esc(ISSUES.get(k, k))} ({len(g)})</a>' for k, g in groups.items()
    )
    lines = "".join(f"<li>{_esc(line)}</li>" for line in summary)
    sections = "".join(_issue_section(k, g, root, thumbs) for k, g in groups.items())
    if not groups:
        sections = '<p id="no-findings">no problems found</p>'
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"
        f'<p class="muted">{_esc(root)}</p>'
        f'<ul class="summary">{lines}</ul><nav>{nav}</nav>'
        + _balance_section(balance, notes)
        + sections
        + "</body></html>\n"
    )


def write_page(path: Path, html: str) -> None:
    """Write the page to ``path`` atomically (readers never see half a page).

    Args:
        path: Where to write, e.g. ``DATA/doctor.html``; its folder is created.
        html: The page, from :func:`render_page`.

    Raises:
        GraftError: The file cannot be written (a read-only folder, a full disk).
    """
    try:
        atomic_write_text(path, html)
    except OSError as e:
        raise cannot_write(path, e) from None
