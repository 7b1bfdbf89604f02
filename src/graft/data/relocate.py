"""``graft doctor --apply`` and ``--undo``: move the files a reviewed ``doctor.csv`` marks, and back.

Each row's ``suggested_action`` says what to do with its ``path`` (relative to the dataset folder):
``relabel`` moves the file into the sibling class folder ``suggested_label``, ``quarantine`` moves
it to ``_quarantine/<its path>`` (which dataset listings skip), ``keep``, ``review`` or nothing
leaves it alone. Files are only renamed (``os.rename``: atomic, on one file system), never copied,
deleted or overwritten.

Each change is announced in an undo log (JSON lines), and its line is on disk before the change
is made, so whatever stops a run (an error, a kill -9) the log covers everything moved so far::

    {"graft": "doctor-undo", "version": 1, "root": "/abs/DATA"}
    {"mkdir": "_quarantine"}
    {"from": "train/cat/x.jpg", "to": "_quarantine/train/cat/x.jpg"}

:func:`undo_actions` walks it backwards, then renames it to ``<log name>.undone``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from graft.data._scan import VAL_NAMES, child, subdirs
from graft.data.images import QUARANTINE_DIR as QUARANTINE_DIR  # re-exported
from graft.data.organize import class_name_problem
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import inside, read_csv_rows

ACTIONS = ("keep", "review", "relabel", "quarantine")
LOG_KIND = "doctor-undo"
LOG_VERSION = 1
UNDONE_SUFFIX = ".undone"
_LEAVE = ("", "keep", "review")  # the actions that leave the file where it is
_SPLITS = ("train", *VAL_NAMES, "test")
_COLUMNS = ("path", "suggested_action", "suggested_label")
_HINT = "relabel it in its labels CSV; doctor only moves files between class folders"


@dataclass
class Move:
    """One file to move: ``source`` to ``target`` (``stem~1.ext``, ``~2``, ... if a file is there
    when it moves) for ``action`` ``relabel`` or ``quarantine``."""

    source: Path
    target: Path
    action: str


@dataclass
class ApplyResult:
    """What :func:`apply_actions` did.

    Attributes:
        moved: (where a file was, where it is now) for each file moved, in order.
        log: The undo log.
        left: Rows of the CSV that moved nothing (keep, review, no action, repeats).
    """

    moved: list[tuple[Path, Path]]
    log: Path
    left: int


@dataclass
class UndoResult:
    """What :func:`undo_actions` did.

    Attributes:
        restored: (where a file was, where it is back) for each file moved back.
        problems: One line per move that could not be undone (its files were left alone).
    """

    restored: list[tuple[Path, Path]]
    problems: list[str]


def read_actions(csv_path: str | Path, root: str | Path) -> list[Move]:
    """The moves a reviewed ``doctor.csv`` asks for, every row checked before anything moves.

    Args:
        csv_path: The CSV; its ``path``, ``suggested_action`` and ``suggested_label`` columns are
            found by header name, the others ignored.
        root: The dataset folder the paths are relative to.

    Returns:
        One Move per file to relabel or quarantine, in CSV order.

    Raises:
        GraftError: Naming the row (the header is row 1; blank rows are not counted): an unknown
            action; a path missing, not a file, outside ``root`` or in ``_quarantine/`` already;
            a path twice with different actions; a relabel without a valid class name, to the
            file's own class, or of a file not in a class folder (directly in ``root``, in a split
            folder, or in a flat folder that a labels CSV names).
    """
    return _plan(Path(csv_path), _root(root))[0]


def apply_actions(csv_path: str | Path, root: str | Path, log: str | Path | None = None) -> ApplyResult:
    """Move the files a reviewed ``doctor.csv`` marks, logging each move for :func:`undo_actions`.

    Args:
        csv_path: The CSV (see :func:`read_actions`).
        root: The dataset folder.
        log: The undo log to write; by default ``<csv stem>-undo-<UTC time>.jsonl`` beside the CSV.
            An existing log is never overwritten: ``-1``, ``-2``, ... is added to the name.

    Raises:
        GraftError: A bad row, or a target under a file or on another file system (nothing moved);
            or a failed move (the message names the undo log, which covers the moves before it).
    """
    root, csv_path = _root(root), Path(csv_path)
    moves, left = _plan(csv_path, root)
    for move in moves:
        _check_target(move, root)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path, fd = _create_log(
        Path(log) if log else csv_path.with_name(f"{csv_path.stem}-undo-{stamp}.jsonl"), root
    )
    moved: list[tuple[Path, Path]] = []
    try:
        for move in moves:
            moved.append(_move(move, root, fd))
    except OSError as e:
        done = f"{len(moved)} of {len(moves)} files were moved; undo log {path} puts them back"
        raise GraftError(f"cannot move {_rel(move.source, root)}: {e.strerror or e}; {done}") from None
    finally:
        os.close(fd)
    return ApplyResult(moved, path, left)


def undo_actions(log: str | Path) -> UndoResult:
    """Put back the files an :func:`apply_actions` run moved, newest first, and remove the folders it
    made (when empty); then rename the log to ``<log name>.undone``.

    A move whose file is at its old place already (the run stopped before it) is skipped; one whose
    file is at neither place, or at both, is a problem, left alone. After a problem the log keeps
    its name, so that undoing again once it is fixed retries what is still moved.

    Raises:
        GraftError: A missing, unreadable, malformed or foreign log, or one undone already.
    """
    log = Path(log)
    root, records = _read_log(log)
    restored: list[tuple[Path, Path]] = []
    problems: list[str] = []
    for record in reversed(records):
        if "from" in record:
            _move_back(root, record["from"], record["to"], restored, problems)
    for record in reversed(records):
        if "mkdir" in record:
            with contextlib.suppress(OSError):  # gone already, or holds what this run did not put there
                os.rmdir(root / record["mkdir"])
    undone = log.with_name(log.name + UNDONE_SUFFIX)
    if not problems and os.path.lexists(undone):
        problems.append(f"the log is not renamed: {undone.name} exists")
    elif not problems:
        try:
            os.rename(log, undone)
        except OSError as e:
            problems.append(f"cannot rename the log to {undone.name}: {e.strerror or e}")
    return UndoResult(restored, problems)


def _root(root: str | Path) -> Path:
    """The dataset folder as an absolute path (symlinks kept); GraftError if it is not a folder."""
    path = Path(os.path.abspath(Path(root).expanduser()))
    if not path.is_dir():
        raise GraftError(f"dataset folder {path} does not exist")
    return path


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with ``/``."""
    return Path(os.path.relpath(path, root)).as_posix()


def _plan(csv_path: Path, root: Path) -> tuple[list[Move], int]:
    """The moves of every row (all checked first), and the number of rows that move nothing."""
    rows = read_csv_rows(csv_path, "actions file", empty_hint="; it needs doctor.csv's header row")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise GraftError(
            f"actions file {csv_path} has no {', '.join(missing)} column; its header is {rows[0]}"
        )
    cols = [header.index(c) for c in _COLUMNS]
    layout = _Layout(root, csv_path)
    seen: dict[Path, tuple[int, str]] = {}
    moves: list[Move] = []
    for number, row in enumerate(rows[1:], start=2):
        given, action, label = (row[i].strip() if i < len(row) else "" for i in cols)
        action, where = action.lower(), f"{csv_path.name} row {number}"
        if action not in ACTIONS and action != "":
            raise GraftError(f"{where}: unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        if not given:
            raise GraftError(f"{where}: the path is empty")
        source = Path(os.path.normpath(root / given))
        if action in _LEAVE:  # a row that leaves the file agrees with any other row of it
            continue
        doing = f"relabel to {label!r}" if action == "relabel" else action
        first, done = seen.setdefault(source, (number, doing))
        if done != doing:
            raise GraftError(
                f"{where}: {given} is also on row {first}, with another action ({done}, not {doing})"
            )
        if first != number:
            continue
        try:
            moves.append(layout.move(source, given, action, label))
        except GraftError as e:
            raise GraftError(f"{where}: {e}") from None
    return moves, len(rows) - 1 - len(moves)


class _Layout:
    """Checks a row's file against the dataset's layout, reading each labels CSV once."""

    def __init__(self, root: Path, csv_path: Path) -> None:
        self.root = root
        self.csv_path = Path(os.path.abspath(csv_path))
        self._ids: dict[Path, frozenset[str]] = {}

    def move(self, source: Path, given: str, action: str, label: str) -> Move:
        """The Move for ``source`` (``given`` in the CSV); GraftError saying what is wrong."""
        if source == self.root or not inside(source, self.root):
            raise GraftError(f"{given} is not inside the dataset folder {self.root}")
        rel = _rel(source, self.root)
        if QUARANTINE_DIR in PurePosixPath(rel).parts:
            raise GraftError(f"{rel} is in {QUARANTINE_DIR}/ already")
        if not os.path.lexists(source):
            raise GraftError(f"{rel} does not exist")
        if not source.is_file():
            raise GraftError(f"{rel} is not a file")
        if action == "quarantine":
            return Move(source, self.root / QUARANTINE_DIR / rel, action)
        return Move(source, self._relabel_target(source, rel, label), action)

    def _relabel_target(self, source: Path, rel: str, label: str) -> Path:
        """``source``'s place in the class folder ``label`` beside its own."""
        if not label:
            raise GraftError(f"relabel of {rel} needs a suggested_label (the class folder to move it to)")
        problem = "graft skips that folder" if label == QUARANTINE_DIR else class_name_problem(label)
        if problem:
            raise GraftError(f"cannot relabel {rel} to {label!r}: {problem}")
        why = self._not_a_class_folder(source)
        if why:
            raise GraftError(f"cannot relabel {rel}: {why}; {_HINT}")
        if label == source.parent.name:
            raise GraftError(f"{rel} is in the class folder {label}/ already")
        group = source.parent.parent
        if label.lower() in _SPLITS and not self._is_split(group) and not (group / label).is_dir():
            raise GraftError(
                f"cannot relabel {rel} to {label!r}: a new class folder so named reads as a split"
            )
        return group / label / source.name

    def _is_split(self, folder: Path) -> bool:
        """True for a split folder (train/, val/, test/, ...) beside a train/ folder, below root."""
        return (
            folder != self.root
            and inside(folder, self.root)
            and folder.name.lower() in _SPLITS
            and child(folder.parent, "train") is not None
        )

    def _not_a_class_folder(self, source: Path) -> str | None:
        """Why ``source``'s folder is not a class folder (relabelling must not move it), or None."""
        parent, group = source.parent, source.parent.parent
        if parent == self.root:
            return "it is directly in the dataset folder, not in a class folder"
        if self._is_split(parent):
            return f"{_rel(parent, self.root)}/ is a split folder, not a class folder"
        for folder in dict.fromkeys([self.root, group]):
            for labels in sorted(folder.glob("*.csv")):
                if labels not in self._ids:
                    self._ids[labels] = frozenset() if labels == self.csv_path else _csv_ids(labels)
                if {source.name, source.stem} & self._ids[labels]:
                    return f"it is in a flat folder of images labelled by {labels.name}"
        classes = [d for d in subdirs(group) if d.name.lower() not in _SPLITS]
        if classes == [parent] and not self._is_split(group):
            return f"{_rel(parent, self.root)}/ is the only folder of images beside it, not a class folder"
        return None


def _csv_ids(path: Path) -> frozenset[str]:
    """The ids of a labels CSV (the column ``id``, else the first) as the ``csv`` layout reads them;
    none for a file that is not one (unreadable, one column, or a ``doctor.csv``)."""
    try:
        rows = read_csv_rows(path, "labels file")
    except GraftError:
        return frozenset()
    header = [h.strip().lower() for h in rows[0]]
    if len(header) < 2 or "suggested_action" in header:
        return frozenset()
    col = header.index("id") if "id" in header else 0
    return frozenset(row[col].strip() for row in rows[1:] if col < len(row))


def _check_target(move: Move, root: Path) -> None:
    """GraftError, before anything moves, when a target's folder cannot be made (a file is in the
    way) or is on another file system (a move there would be a copy)."""
    folder = move.target.parent
    while not os.path.lexists(folder) and folder != root:
        folder = folder.parent
    rel, where = _rel(move.source, root), _rel(folder, root)
    if not folder.is_dir():
        raise GraftError(f"cannot move {rel}: {where} is a file, not a folder")
    if os.stat(folder).st_dev != os.lstat(move.source).st_dev:
        raise GraftError(f"cannot move {rel}: {where}/ is on another file system; doctor only renames files")


def _create_log(path: Path, root: Path) -> tuple[Path, int]:
    """Create ``path`` (``<stem>-1<suffix>``, ``-2``, ... if it or its ``.undone`` exists) and write
    the header; the log and a file descriptor open for appending."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_BINARY", 0)
    n, name = 0, path
    while os.path.lexists(name) or os.path.lexists(name.with_name(name.name + UNDONE_SUFFIX)):
        n, name = n + 1, path.with_name(f"{path.stem}-{n + 1}{path.suffix}")
    fd = -1
    try:
        fd = os.open(name, flags, 0o666)  # O_EXCL: a log made meanwhile is not overwritten either
        _log(fd, {"graft": LOG_KIND, "version": LOG_VERSION, "root": str(root)})
    except OSError as e:
        if fd >= 0:
            os.close(fd)
        raise GraftError(f"cannot write undo log {name}: {e.strerror or e}; nothing was moved") from None
    with contextlib.suppress(OSError):  # make the log's entry in its folder durable too (POSIX)
        folder = os.open(name.parent, os.O_RDONLY)
        os.fsync(folder)
        os.close(folder)
    return name, fd


def _log(fd: int, record: dict[str, object]) -> None:
    """Append ``record`` to the log as one JSON line (ASCII: any file name survives), and fsync it."""
    data = (json.dumps(record) + "\n").encode("ascii")
    while data:
        data = data[os.write(fd, data) :]
    os.fsync(fd)


def _move(move: Move, root: Path, fd: int) -> tuple[Path, Path]:
    """Make the target's missing folders and rename the file to a free name, logging each first."""
    missing, folder = [], move.target.parent
    while not os.path.lexists(folder) and folder != root:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        _log(fd, {"mkdir": _rel(folder, root)})
        os.mkdir(folder)
    target, n = move.target, 0
    while os.path.lexists(target):
        n += 1
        target = move.target.with_name(f"{move.target.stem}~{n}{move.target.suffix}")
    _log(fd, {"from": _rel(move.source, root), "to": _rel(target, root)})
    os.rename(move.source, target)
    return move.source, target


def _read_log(log: Path) -> tuple[Path, list[dict[str, str]]]:
    """The dataset folder and the records (after the header) of an undo log."""
    undone = log.with_name(log.name + UNDONE_SUFFIX)
    if log.name.endswith(UNDONE_SUFFIX) or (not os.path.lexists(log) and os.path.lexists(undone)):
        raise GraftError(f"undo log {log} was undone already (the log is renamed to *{UNDONE_SUFFIX} then)")
    try:
        text = log.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraftError(f"undo log {log} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GraftError(f"cannot read undo log {log}: {e}") from None
    # A last line without its newline was cut off mid-write: the change it announced never began.
    lines = text.split("\n")[:-1]
    header = _json(lines[0]) if lines else None
    if not isinstance(header, dict) or header.get("graft") != LOG_KIND:
        raise GraftError(f"{log} is not a graft doctor undo log")
    if header.get("version") != LOG_VERSION:
        raise GraftError(f"undo log {log} is of version {header.get('version')!r}, not {LOG_VERSION}")
    root = header.get("root")
    if not isinstance(root, str) or not os.path.isabs(root):
        raise GraftError(f"undo log {log} is malformed: its first line names no dataset folder")
    if not os.path.isdir(root):
        raise GraftError(f"dataset folder {root} of undo log {log} does not exist")
    records = []
    for number, line in enumerate(lines[1:], start=2):
        record = _json(line)
        if not isinstance(record, dict) or set(record) not in ({"mkdir"}, {"from", "to"}):
            raise GraftError(f"undo log {log} is malformed at line {number}: {line[:100]!r}")
        if not all(map(_relative, record.values())):
            raise GraftError(f"undo log {log} is malformed at line {number}: a path outside the dataset")
        records.append(record)
    return Path(root), records


def _json(line: str) -> object:
    """``line`` parsed, or None if it is not JSON."""
    try:
        return json.loads(line)
    except ValueError:
        return None


def _relative(value: object) -> bool:
    """True for a relative path that stays inside the folder it is relative to."""
    parts = PurePosixPath(value).parts if isinstance(value, str) and not os.path.isabs(value) else ()
    return bool(parts) and ".." not in parts


def _move_back(root: Path, old: str, new: str, restored: list, problems: list[str]) -> None:
    """Undo one logged move of ``old`` to ``new`` (relative to ``root``) if its file is at ``new``."""
    source, target = root / old, root / new
    at_old, at_new = os.path.lexists(source), os.path.lexists(target)
    if at_new and not at_old:
        try:
            os.rename(target, source)
            restored.append((target, source))
        except OSError as e:
            problems.append(f"cannot move {new} back to {old}: {e.strerror or e}")
    elif at_new:
        problems.append(f"{new} was moved from {old}, and both exist now; left both alone")
    elif not at_old:
        problems.append(f"{new} (moved from {old}) is missing; nothing to put back")
