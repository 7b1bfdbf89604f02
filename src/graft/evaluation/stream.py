"""Predictions for very large folders: streamed to a CSV chunk by chunk, resumable, shardable.

:func:`predict_to_csv` never holds more than one chunk's probabilities: it appends each chunk's
rows to the CSV and flushes them to disk before it predicts the next, so a killed run keeps its
progress and ``resume=True`` continues it. ``shard=(i, n)`` predicts only the files whose path
hashes to shard ``i``, and :func:`merge_prediction_csvs` joins the shards' CSVs into exactly the
CSV one unsharded run writes. Nothing here imports torch: it serves
:class:`graft.Learner` and :class:`graft.export.onnx_runtime.OnnxClassifier` alike.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from graft.data.selection import expand_paths
from graft.inference.decision import Decision, Reject
from graft.inference.predictions import Prediction, decide
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import atomic_write, cannot_write

#: Images per chunk: a multiple of every inference batch size graft picks (8 to 64).
DEFAULT_CHUNK_SIZE = 512
# Paths that cannot be encoded in UTF-8 (bytes from a foreign file system) round-trip unchanged.
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}
_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


class Predictor(Protocol):
    """What :func:`predict_to_csv` needs of a model: a Learner or an OnnxClassifier (and its
    ``decision``, read where it has one: without, a softmax and the top class)."""

    classes: list[str]

    def predict_probs(self, paths: Sequence[Path]) -> tuple[list[Path], np.ndarray]: ...

    def predict_outputs(self, paths: Sequence[Path]) -> tuple[list[Path], np.ndarray, np.ndarray | None]: ...

    @property
    def scored(self) -> bool: ...


@dataclass
class StreamResult:
    """What one :func:`predict_to_csv` call did."""

    written: int
    """Rows this call appended (or predicted, without a CSV)."""
    resumed: int
    """Rows that were already in the CSV (``resume=True``), and were skipped."""
    other_shards: int
    """Files left to the other shards."""
    undecodable: int
    """Files that could not be decoded (warned about, no row)."""
    seconds: float


def csv_header(classes: Sequence[str], k: int, multi_label: bool = False, scored: bool = False) -> list[str]:
    """The columns of a predictions CSV: ``path,label,prob`` then ``label_j,prob_j`` up to top-k
    (k clamped to 1..number of classes, as :func:`~graft.inference.predictions.decide` does);
    for a multi-label model ``path,labels`` then one probability column per class, named after it.
    A model with the unknown score (``scored``) adds ``unknown_score,answer``: the score, and the
    answer (the unknown label for a rejected image, else the answered class or classes)."""
    extra = ["unknown_score", "answer"] if scored else []
    if multi_label:
        return ["path", "labels", *classes, *extra]
    k = max(1, min(k, len(classes)))
    pairs = (f"{c}_{j}" for j in range(2, k + 1) for c in ("label", "prob"))
    return ["path", "label", "prob", *pairs, *extra]


def model_decision(model: object) -> Decision:
    """The model's :class:`~graft.inference.decision.Decision` (a plain softmax if it has none)."""
    return getattr(model, "decision", None) or Decision()


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)``, 0-based with ``0 <= i < n``.

    Raises:
        GraftError: On anything else, in one line.
    """
    found = _SHARD.fullmatch(text)
    if not found or int(found.group(1)) >= int(found.group(2)):
        raise GraftError(f"--shard takes I/N with 0 <= I < N, e.g. 0/2 and 1/2 (got '{text}')")
    return int(found.group(1)), int(found.group(2))


def shard_of(path: str, n: int) -> int:
    """The shard (of ``n``) that owns a file, from a hash of its path as the CSV writes it: adding
    or removing other files never moves it to another shard."""
    digest = hashlib.blake2b(path.encode(**_ENCODING), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def predict_to_csv(
    model: Predictor,
    paths: str | Path | Sequence[str | Path],
    csv_path: str | Path | None,
    *,
    top_k: int = 1,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    tta: bool | int = False,
    on_chunk: Callable[[list[Prediction], np.ndarray], None] | None = None,
    reject: Reject | None = None,
) -> StreamResult:
    """Predict image files and folders chunk by chunk, appending each chunk's rows to a CSV.

    The CSV is ``path,label,prob`` (+ ``label_j,prob_j`` up to ``top_k``); for a multi-label
    model ``path,labels,<class>,...``: the classes at or above their thresholds, most probable
    first, separated by spaces (empty for none), then every class's probability. Probabilities
    have 6 decimals, rows come in :func:`~graft.data.selection.expand_paths` order. Each chunk is flushed and
    fsync'ed before the next one starts. Undecodable files are warned about and get no row, so a
    resumed run tries them again (and, should one have become readable, appends its row last).

    Args:
        model: A :class:`graft.Learner` or an :class:`~graft.export.onnx_runtime.OnnxClassifier`.
        paths: Image files and/or folders (searched recursively).
        csv_path: The CSV to write; ``None`` writes nothing (``on_chunk`` still sees every chunk).
        top_k: Classes per row (single-label models).
        resume: Continue an existing CSV: skip the files already in it, after cutting off a
            half-written last line. Without it an existing CSV is replaced (from the first chunk on,
            so a run that did not finish leaves a partial CSV for ``resume`` to complete).
        shard: ``(i, n)``: predict only the files of shard ``i`` of ``n`` (see :func:`shard_of`).
        chunk_size: Files per chunk; a multiple of the model's batch size wastes no forward pass.
        tta: Test-time augmentation, for a Learner (see :meth:`graft.Learner.predict_probs`).
        on_chunk: Called with each chunk's predictions and full probabilities, in order.
        reject: When an image is answered "unknown" (the ``answer`` column of a scored model;
            :meth:`graft.Learner.rejection`).

    Raises:
        GraftError: Bad arguments, no images, or (``resume``) a CSV written with other columns,
            by another shard, or that is not a graft predictions CSV.
    """
    if chunk_size < 1:
        raise GraftError(f"the chunk size must be at least 1 (got {chunk_size})")
    if resume and csv_path is None:
        raise GraftError("--resume needs --csv FILE: the CSV to continue")
    start = time.perf_counter()
    decision = model_decision(model)
    scored = bool(getattr(model, "scored", False))
    header = csv_header(model.classes, top_k, decision.multi_label, scored)
    files = expand_paths(paths)
    listed = len(files)
    if shard is not None:
        files = [f for f in files if shard_of(str(f), shard[1]) == shard[0]]
    other_shards = listed - len(files)
    done: set[str] = set()
    if csv_path is not None and resume and Path(csv_path).exists():
        done = _resume_from(Path(csv_path), header, shard)
        files = [f for f in files if str(f) not in done]
    written = undecodable = 0
    out = None if csv_path is None else _open_csv(Path(csv_path), header, append=resume)
    try:
        for begin in range(0, len(files), chunk_size):
            chunk = _still_there(files[begin : begin + chunk_size])
            if not chunk:
                continue
            kept, probs, scores = _outputs(model, chunk, tta)
            preds = decide(probs, kept, model.classes, decision, top_k, scores, reject)
            undecodable += len(chunk) - len(kept)
            if out is not None:
                rows = prediction_rows(preds, probs if decision.multi_label else None, scored)
                _append(out, Path(csv_path), _rows_text(rows), written + len(done))
            written += len(preds)
            if on_chunk is not None:
                on_chunk(preds, probs)
    finally:
        if out is not None:
            with contextlib.suppress(OSError):  # every row was flushed; a failed flush already said so
                out.close()
    return StreamResult(
        written=written,
        resumed=len(done),
        other_shards=other_shards,
        undecodable=undecodable,
        seconds=time.perf_counter() - start,
    )


def _outputs(model: Predictor, chunk: list[Path], tta: bool | int) -> tuple:
    """``(paths, probs, scores)`` of a chunk (scores None for a model without the unknown score)."""
    if not hasattr(model, "predict_outputs"):
        return (*model.predict_probs(chunk), None)
    return model.predict_outputs(chunk, tta=tta) if tta else model.predict_outputs(chunk)


def merge_prediction_csvs(parts: Sequence[str | Path], out: str | Path) -> int:
    """Join predictions CSVs (the shards of one prediction) into ``out``, atomically.

    Rows are sorted by path as :func:`~graft.data.images.list_images` sorts files, which is the
    order an unsharded run over one folder writes. ``out`` may be one of ``parts``.

    Returns:
        The number of rows written.

    Raises:
        GraftError: A part that is missing, is not a graft predictions CSV, has other columns
            than the first part, ends in a half-written line, or repeats a path.
    """
    if not parts:
        raise GraftError("nothing to merge: name the CSVs written by graft predict --shard")
    header: list[str] | None = None
    owner: dict[str, Path] = {}
    rows: list[list[str]] = []
    for part in map(Path, parts):
        if not part.is_file():
            raise GraftError(f"no such file: {part}")
        with open(part, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            raise GraftError(f"{part} ends in a half-written line: complete it with graft predict --resume")
        table = _read_rows(part, data.decode(**_ENCODING))
        if not table or not _is_predictions_header(table[0]):
            raise GraftError(f"{part} is not a predictions CSV written by graft predict")
        if header is None:
            header = table[0]
        elif table[0] != header:
            raise GraftError(
                f"{part} has columns {','.join(table[0])}, but {parts[0]} has {','.join(header)}"
            )
        for row in table[1:]:
            if row[0] in owner:
                raise GraftError(f"{row[0]} is in both {owner[row[0]]} and {part}")
            owner[row[0]] = part
            rows.append(row)
    rows.sort(key=lambda row: Path(row[0]))
    text = _rows_text(rows, header=header)
    try:
        atomic_write(out, lambda tmp: tmp.write_text(text, **_ENCODING))
    except OSError as e:
        raise cannot_write(out, e) from None
    return len(rows)


def _open_csv(path: Path, header: list[str], append: bool) -> io.TextIOWrapper:
    """The CSV opened for appending rows: its header written unless it continues a file that has one.

    Raises:
        GraftError: If it cannot be written (read-only file system, no such folder, disk full).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a" if append else "w", newline="", **_ENCODING)  # noqa: SIM115 (closed by the caller)
    except OSError as e:
        raise cannot_write(path, e) from None
    if f.tell() == 0:
        try:
            _append(f, path, _rows_text([], header=header), 0)
        except GraftError:
            with contextlib.suppress(OSError):
                f.close()
            raise
    return f


def _append(f: io.TextIOWrapper, path: Path, text: str, saved: int) -> None:
    """Write, flush and fsync ``text``; an OSError (a full disk) becomes a GraftError that says how
    many rows the CSV keeps (``saved``) and that ``--resume`` goes on from them."""
    try:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
        kept = f"it keeps {saved} predictions: graft predict --resume continues it" if saved else ""
        raise cannot_write(path, e, kept) from None


def _resume_from(path: Path, header: list[str], shard: tuple[int, int] | None) -> set[str]:
    """The paths already in the CSV at ``path``, after checking its header (and shard) and cutting
    a half-written last line off it."""
    expected = ",".join(header)
    with open(path, "rb") as f:
        first = f.readline().decode(**_ENCODING)
    if not first.endswith("\n"):  # killed while writing the header: start again
        if not expected.startswith(first):
            raise GraftError(f"{path} is not a predictions CSV written by graft predict; not resuming it")
        _truncate_to_last_line(path)
        return set()
    found = first.rstrip("\n")
    if found != expected:
        _refuse_other_columns(path, found.split(","), header)
    _truncate_to_last_line(path)
    with open(path, "rb") as f:
        table = _read_rows(path, f.read().decode(**_ENCODING))
    done = {row[0] for row in table[1:]}
    if shard is not None:
        stray = next((p for p in done if shard_of(p, shard[1]) != shard[0]), None)
        if stray is not None:
            raise GraftError(f"{path} holds {stray}, which is not in shard {shard[0]}/{shard[1]}: wrong CSV?")
    return done


def _refuse_other_columns(path: Path, found: list[str], header: list[str]) -> None:
    """Raise the GraftError that says why a CSV with ``found`` columns cannot be resumed."""
    if not _is_predictions_header(found):
        raise GraftError(f"{path} is not a predictions CSV written by graft predict; not resuming it")
    if found[1] == header[1] == "label":
        k = (len(found) - 1) // 2
        raise GraftError(
            f"{path} holds top-{k} predictions (columns {','.join(found)}), not "
            f"top-{(len(header) - 1) // 2}: resume it with --top-k {k}, or write another CSV"
        )
    raise GraftError(
        f"{path} holds predictions with the columns {','.join(found[:6])}, not "
        f"{','.join(header[:6])}: another model's? write another CSV"
    )


def _truncate_to_last_line(path: Path, block: int = 1 << 16) -> None:
    """Cut the file after its last newline: a kill mid-write can leave half a row at the end."""
    with open(path, "rb+") as f:
        size = end = f.seek(0, os.SEEK_END)
        while end > 0:
            step = min(block, end)
            f.seek(end - step)
            at = f.read(step).rfind(b"\n")
            if at >= 0:
                end = end - step + at + 1
                break
            end -= step
        if end != size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
            warnings.warn(f"{path}: dropped a half-written last line ({size - end} bytes)", stacklevel=3)


def _read_rows(path: Path, text: str) -> list[list[str]]:
    """The rows of a predictions CSV, each checked to have as many fields as its header."""
    try:
        table = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as e:
        raise GraftError(f"{path} is not a readable CSV: {e}") from None
    for line, row in enumerate(table[1:], start=2):
        if len(row) != len(table[0]):
            raise GraftError(f"{path} row {line} has {len(row)} fields, not {len(table[0])}: a damaged CSV")
    return table


def _is_predictions_header(columns: Sequence[str]) -> bool:
    if len(columns) >= 3 and list(columns[:2]) == ["path", "labels"]:  # multi-label
        return True
    columns = list(columns)
    if columns[-2:] == ["unknown_score", "answer"]:  # a model with the unknown score
        columns = columns[:-2]
    k = (len(columns) - 1) // 2
    return len(columns) % 2 == 1 and k >= 1 and columns == csv_header([""] * k, k)


def _still_there(files: Iterable[Path]) -> list[Path]:
    """The files that still exist (one deleted since the folder was listed is warned about)."""
    kept = []
    for f in files:
        if f.is_file():
            kept.append(f)
        else:
            warnings.warn(f"skipped {f}: it no longer exists", stacklevel=3)
    return kept


def prediction_rows(
    preds: Sequence[Prediction], probs: np.ndarray | None = None, scored: bool = False
) -> list[list[str]]:
    """The CSV rows of ``preds``: ``path,label,prob,...`` (``probs`` None), or with each image's
    class probabilities (multi-label) ``path,labels,<prob of each class>``; ``scored`` adds
    ``unknown_score,answer`` (see :func:`csv_header`)."""
    rows = []
    for i, pred in enumerate(preds):
        row = [str(pred.path)]
        if probs is None:
            for label, prob in zip(pred.labels, pred.probs, strict=True):
                row += [label, f"{prob:.6f}"]
        else:
            row += [" ".join(pred.labels), *(f"{p:.6f}" for p in probs[i].tolist())]
        if scored:
            score = "" if pred.score is None else f"{pred.score:.6f}"
            row += [score, pred.unknown or (" ".join(pred.labels) if probs is not None else pred.label)]
        rows.append(row)
    return rows


def _rows_text(rows: Iterable[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """CSV text (``\\n`` line ends): an optional header, then ``rows``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
