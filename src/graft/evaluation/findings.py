"""What ``graft doctor`` found about a dataset: one :class:`Finding` per image and problem, in the
columns of ``doctor.csv`` (``path,issue,score,suggested_action,suggested_label``, then context)."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

# The kinds of finding, in the order the page and the summary show them, with their headings.
ISSUES = {
    "label_error": "Likely label errors",
    "conflict": "Copies with different labels",
    "leak": "Copies across splits (leakage)",
    "duplicate": "Duplicates within a split",
    "outlier": "Outliers (far from every other image)",
    "unreadable": "Unreadable files",
    "blank": "Near-blank images",
    "tiny": "Tiny images",
    "aspect": "Extreme aspect ratios",
}

CSV_COLUMNS = (
    "path",
    "issue",
    "score",
    "suggested_action",
    "suggested_label",
    "label",
    "split",
    "other",
    "detail",
)


@dataclass
class Finding:
    """One image with one problem.

    Attributes:
        path: The image file.
        issue: A key of :data:`ISSUES`.
        score: How sure or how severe, higher first; comparable within one issue only.
        action: What ``--apply`` would do: ``relabel`` (move to the class folder
            ``suggested_label``), ``quarantine`` (move to ``_quarantine/``), ``review`` or ``keep``
            (leave it).
        suggested_label: The class to move it to, for ``relabel``.
        label: Its class now (None: unlabeled).
        split: Its split (``train``, ``val``, ``test``).
        other: The image it is a copy of, for ``conflict``, ``leak`` and ``duplicate``.
        detail: One line saying why.
    """

    path: Path
    issue: str
    score: float
    action: str = "review"
    suggested_label: str | None = None
    label: str | None = None
    split: str | None = None
    other: Path | None = None
    detail: str = ""


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Grouped by issue (in :data:`ISSUES` order), highest score first, then by path."""
    order = {k: i for i, k in enumerate(ISSUES)}
    return sorted(findings, key=lambda f: (order.get(f.issue, len(order)), -f.score, str(f.path)))


def findings_csv(findings: list[Finding], root: Path) -> str:
    """``doctor.csv``'s text: paths relative to ``root``, findings in :func:`sort_findings` order."""

    def rel(p: Path | None) -> str:
        return "" if p is None else Path(os.path.relpath(p, root)).as_posix()

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for f in sort_findings(findings):
        writer.writerow(
            [
                rel(f.path),
                f.issue,
                f"{f.score:.4f}",
                f.action,
                f.suggested_label or "",
                f.label or "",
                f.split or "",
                rel(f.other),
                f.detail,
            ]
        )
    return out.getvalue()
