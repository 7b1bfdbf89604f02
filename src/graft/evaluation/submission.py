"""Kaggle-style submission CSVs from predicted probabilities, optionally shaped by a sample file.

Without a sample, a ``probs`` submission is ``id,<class>,<class>,...`` in the model's class order,
a ``label`` submission is ``id,label``, and a multi-label model's ``labels`` submission is
``id,labels`` (the classes at or above their thresholds, separated by spaces, most probable
first; empty for none of them); rows follow the images. With a competition's
``sample_submission.csv`` its header fixes the columns (their names and order, classes the model
never saw included, at probability 0) and its ids fix the order of the rows. A row's id is the
image's file name without its suffix (``test/0a1b.jpg`` -> ``0a1b``), or with it when that is how
the sample writes its ids. NumPy and the ``csv`` module only: no torch, no pandas.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.inference.decision import Decision
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import atomic_write_text, read_csv_rows
from graft.infrastructure.text import plural

SUBMISSION_FORMATS = ("probs", "label", "labels")


@dataclass
class SampleSubmission:
    """The parts of a sample submission that matter: its header and its ids, in order."""

    path: Path
    header: list[str]
    """The id column's name, then the other columns' names."""
    ids: list[str]


@dataclass
class SubmissionResult:
    """What :func:`write_submission` wrote."""

    path: Path
    format: str
    """``probs``, ``label`` or ``labels``."""
    columns: list[str]
    rows: int
    """One per predicted image."""
    missing: int = 0
    """Ids of the sample that no image had (their rows are absent)."""
    extra: int = 0
    """Images whose id the sample does not list (their rows come last)."""
    notes: list[str] = field(default_factory=list)


def read_sample_submission(path: str | Path) -> SampleSubmission:
    """Read a sample submission's header and first column with the ``csv`` module.

    Raises:
        GraftError: A missing, unreadable or empty file, a header of fewer than two columns, an
            empty or repeated column name, or a repeated id.
    """
    path = Path(path)
    name = path.name
    rows = read_csv_rows(path, "sample submission")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise GraftError(
            f"sample submission {name} needs an id column and at least one other; its header is {rows[0]}"
        )
    if "" in header:
        raise GraftError(
            f"sample submission {name} has a column without a name (column {header.index('') + 1})"
        )
    repeated = _first_repeat(header)
    if repeated is not None:
        raise GraftError(f"sample submission {name} has two columns named {repeated!r}")
    ids = [r[0].strip() for r in rows[1:]]
    if "" in ids:
        raise GraftError(f"sample submission {name} has a row without an id (row {ids.index('') + 2})")
    repeated = _first_repeat(ids)
    if repeated is not None:
        raise GraftError(f"sample submission {name} lists the id {repeated!r} twice")
    return SampleSubmission(path, header, ids)


def write_submission(
    path: str | Path,
    paths: Sequence[str | Path],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    format: str | None = None,
    sample: str | Path | SampleSubmission | None = None,
    decision: Decision | None = None,
) -> SubmissionResult:
    """Write a submission CSV atomically.

    Args:
        path: The CSV to write (replaced whole, or left untouched on an error).
        paths: The predicted images, one per row of ``probs`` (e.g. from ``predict_probs``); each
            row's id is the file name without its suffix, or with it where the sample lists it so.
        probs: Class probabilities, shape (images, classes), columns in ``classes`` order.
        classes: The model's classes.
        format: ``probs`` (a probability column per class), ``label`` (the answered class:
            the most likely, or the one a binary threshold picks) or, for a multi-label
            ``decision``, ``labels`` (every class at or above its threshold, space separated).
            Default: ``label`` (``labels`` for multi-label) when the sample has two columns and
            the second is not one of ``classes`` (CIFAR-10's ``id,label``, Planet's
            ``image_name,tags``), else ``probs``; without a sample, ``labels`` for multi-label,
            else ``probs``.
        sample: A sample submission (its path, or :func:`read_sample_submission`'s result):
            ``probs`` takes its columns, in its order (a class the model lacks gets 0, with a
            note; a model class the sample lacks is an error); ``label`` takes its two column
            names. Rows come in the sample's id order; an image whose id the sample lacks gets
            its row after those (with a ``UserWarning``), and ids of the sample that no image has
            get none (with a ``UserWarning`` too).
        decision: How probabilities become answers (default: the top class of a softmax).

    Raises:
        GraftError: A bad format or sample, a model class missing from the sample, two images
            with one id, or a failed write.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape != (len(paths), len(classes)):
        raise GraftError(
            f"probabilities of shape {probs.shape} do not fit {plural(len(paths), 'image')} x "
            f"{plural(len(classes), 'class', 'classes')}"
        )
    if isinstance(sample, str | Path):
        sample = read_sample_submission(sample)
    classes = list(classes)
    decision = decision or Decision()
    format, columns, notes = submission_columns(classes, format, sample, multi_label=decision.multi_label)
    index = {c: j for j, c in enumerate(classes)}

    ids, order, missing, extra = _row_order(paths, sample)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    if format == "label":
        best = decision.predicted(probs)  # the predictions' first label: the top class, or the threshold's
        writer.writerows([ids[i], classes[best[i]]] for i in order)
    elif format == "labels":
        answers = decision.answers(probs)
        writer.writerows([ids[i], " ".join(classes[j] for j in answers[i])] for i in order)
    else:
        take = [index.get(c, -1) for c in columns[1:]]
        for i in order:
            row = probs[i].tolist()
            writer.writerow([ids[i], *(f"{row[j]:.6g}" if j >= 0 else "0" for j in take)])
    try:
        atomic_write_text(path, buf.getvalue())
    except OSError as e:
        raise GraftError(f"cannot write submission {path}: {e.strerror or e}") from None
    return SubmissionResult(Path(path), format, columns, len(ids), missing, extra, notes)


def _row_order(
    paths: Sequence[str | Path], sample: SampleSubmission | None
) -> tuple[list[str], list[int], int, int]:
    """Each image's id, the order of the rows (the sample's, then images it does not list), and
    how many of the sample's ids were not predicted and how many images it does not list."""
    if sample is None:
        ids = _unique_ids([Path(p).stem for p in paths], paths)
        return ids, list(range(len(ids))), 0, 0
    name = sample.path.name
    wanted = set(sample.ids)
    ids = _unique_ids([_sample_id(Path(p), wanted) for p in paths], paths)
    source = {key: i for i, key in enumerate(ids) if key in wanted}
    # The sample's ids in its order, then any image it does not list, in the images' order.
    order = [source[key] for key in sample.ids if key in source]
    order += [i for i, key in enumerate(ids) if key not in source]
    missing, extra = len(sample.ids) - len(source), len(ids) - len(source)
    if missing:
        absent = [key for key in sample.ids if key not in source]
        warnings.warn(
            f"{plural(len(absent), 'id')} of {name} not predicted ({_examples(absent)}): the "
            f"submission has rows for the {len(ids):,} predicted images only",
            UserWarning,
            stacklevel=3,
        )
    if extra:
        strays = [key for key in ids if key not in source]
        if source:
            what = f"{plural(len(strays), 'predicted image')} {_has(strays)} no id in"
            where = "their rows come after the sample's"
        else:  # the wrong sample, or the wrong folder
            what, where = f"none of the {len(ids):,} predicted images has an id in", "rows in image order"
        warnings.warn(f"{what} {name} ({_examples(strays)}): {where}", UserWarning, stacklevel=3)
    return ids, order, missing, extra


def submission_columns(
    classes: Sequence[str],
    format: str | None = None,
    sample: SampleSubmission | None = None,
    *,
    multi_label: bool = False,
) -> tuple[str, list[str], list[str]]:
    """The format, the header and the notes of a submission, as :func:`write_submission` decides
    them; a command can call it before it predicts, to fail in a second rather than after an hour.

    Raises:
        GraftError: An unknown format, ``label`` for a multi-label model or ``labels`` for a
            single-label one, a label(s) format with a sample of more than two columns, or a
            model class missing from a probs sample's header.
    """
    format = _checked_format(format, multi_label)
    classes = list(classes)
    answer = "labels" if multi_label else "label"
    if format is None:
        two = sample is not None and len(sample.header) == 2 and sample.header[1] not in classes
        format = answer if two or (sample is None and multi_label) else "probs"
    if sample is None:
        return format, (["id", *classes] if format == "probs" else ["id", format]), []
    name, columns = sample.path.name, list(sample.header)
    if format != "probs":
        if len(columns) != 2:
            raise GraftError(
                f"a {format} submission has two columns (id, {format}), but {name} has {len(columns)}: "
                "use the probs format"
            )
        return format, columns, []
    lacking = [c for c in classes if c not in set(columns[1:])]
    if lacking:
        hint = "; for an id,label sample use the label format" if len(columns) == 2 else ""
        raise GraftError(
            f"{plural(len(lacking), 'model class', 'model classes')} {_is(lacking)} not a column "
            f"of {name} ({_examples(lacking)}){hint}"
        )
    unknown = [c for c in columns[1:] if c not in set(classes)]
    notes = []
    if unknown:
        notes.append(
            f"{plural(len(unknown), 'column')} of {name} {_is(unknown)} not "
            f"{'a class' if len(unknown) == 1 else 'classes'} of the model: probability 0 "
            f"({_examples(unknown)})"
        )
    return format, columns, notes


def _checked_format(format: str | None, multi_label: bool) -> str | None:
    if format is not None and format not in SUBMISSION_FORMATS:
        raise GraftError(f"submission format must be one of {', '.join(SUBMISSION_FORMATS)}, got {format!r}")
    if format == "label" and multi_label:
        raise GraftError("a multi-label model answers any number of classes: use the labels or probs format")
    if format == "labels" and not multi_label:
        raise GraftError("the labels format is for multi-label models: use the label or probs format")
    return format


def _sample_id(path: Path, wanted: set[str]) -> str:
    """The id of ``path`` as the sample writes ids: the stem, or the whole name if the sample has it."""
    return path.name if path.stem not in wanted and path.name in wanted else path.stem


def _unique_ids(ids: list[str], paths: Sequence[str | Path]) -> list[str]:
    """``ids``, unless two images share one (``a.jpg`` and ``a.png``, or two folders): an error."""
    repeated = _first_repeat(ids)
    if repeated is not None:
        clash = [str(p) for p, key in zip(paths, ids, strict=True) if key == repeated][:2]
        raise GraftError(
            f"two images have the id {repeated!r} ({', '.join(clash)}): a submission has one row per id"
        )
    return ids


def _first_repeat(values: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _is(items: Sequence) -> str:
    return "is" if len(items) == 1 else "are"


def _has(items: Sequence) -> str:
    return "has" if len(items) == 1 else "have"


def _examples(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return f"e.g. {shown}" if len(items) > n else shown
