"""Reading a labels CSV and matching its ids to image files (the ``csv`` layout)."""

from __future__ import annotations

from pathlib import Path

from graft.data._audit import Unlisted, audit_entries
from graft.data._scan import Scan, lost_reason
from graft.data.images import IMAGE_EXTENSIONS, list_images
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import read_csv_rows
from graft.infrastructure.text import plural

# Labels that mean "no label": pandas reads these as NaN (its default na_values) and writes NaN
# as "" (or "nan" after .astype(str)), so a CSV saved from a DataFrame with gaps holds them.
NA_LABELS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
     "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip


def read_labels_csv(path: Path) -> tuple[dict[str, str], str, list[str]]:
    """Parse a labels CSV with a header row.

    The id column is the one named ``id`` (case-insensitive), else the first; the label column is
    the one named ``label``, else the first other column. Rows without an id, or whose label is
    empty or a missing-value marker (:data:`NA_LABELS`: ``nan``, ``NA``, ``None``, ...), are
    ignored with a note.

    Returns:
        (id -> label in file order, the id column's header text, notes).
    """
    name = path.name
    rows = read_csv_rows(path, "labels file", empty_hint="; it needs a header row such as 'id,label'")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise GraftError(f"labels file {path} needs an id and a label column; its header is {rows[0]}")
    lower = [h.lower() for h in header]
    id_col = lower.index("id") if "id" in lower else 0
    label_col = (
        lower.index("label") if "label" in lower else next(i for i in range(len(header)) if i != id_col)
    )

    mapping: dict[str, str] = {}
    duplicates = no_id = 0
    no_label: dict[str, int] = {}  # the NA-like label -> its rows
    conflicts: list[tuple[str, str, str]] = []
    for row in rows[1:]:
        cells = [row[i].strip() if i < len(row) else "" for i in (id_col, label_col)]
        if not cells[0]:
            no_id += 1
            continue
        if cells[1] in NA_LABELS:
            no_label[cells[1]] = no_label.get(cells[1], 0) + 1
            continue
        key, label = cells
        if key not in mapping:
            mapping[key] = label
        elif mapping[key] == label:
            duplicates += 1
        else:
            conflicts.append((key, mapping[key], label))
    if not mapping:
        why = f" ({sum(no_label.values()):,} rows have an empty or NA-like label)" if no_label else ""
        raise GraftError(f"labels file {path} has no rows with both an id and a label{why}")
    notes = []
    if duplicates:
        notes.append(f"{duplicates:,} duplicate {'row' if duplicates == 1 else 'rows'} of {name} ignored")
    if conflicts:
        key, first, other = conflicts[0]
        notes.append(
            f"{len(conflicts):,} rows of {name} repeat an id with a different label; kept the first "
            f"(e.g. {key!r}: {first!r}, not {other!r})"
        )
    if no_label:
        n = sum(no_label.values())
        seen = ", ".join(repr(v) for v in sorted(no_label, key=lambda v: (-no_label[v], v))[:3])
        rows_have = f"{n:,} rows of {name} have" if n > 1 else f"1 row of {name} has"
        notes.append(f"{rows_have} no label (empty or a missing-value marker: {seen}); ignored")
    if no_id:
        rows_lack = f"{no_id:,} rows of {name} lack" if no_id > 1 else f"1 row of {name} lacks"
        notes.append(f"{rows_lack} an id; ignored")
    return mapping, header[id_col], notes


def match_ids(ids: list[str], folder: Path) -> dict[str, Path]:
    """id -> image file in ``folder`` (not recursive).

    An id with an image suffix matches that exact file name; any other id matches a file stem
    (``"0042"`` -> ``0042.png``). If several files share a stem, the first by name wins.
    """
    by_name: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    for p in list_images(folder):
        by_name[p.name] = p
        by_stem.setdefault(p.stem, p)
    found = {}
    for key in ids:
        hit = by_name.get(key) if Path(key).suffix.lower() in IMAGE_EXTENSIONS else by_stem.get(key)
        if hit is not None:
            found[key] = hit
    return found


def find_image_folder(
    ids: list[str], root: Path, unreadable: list[tuple[Path, str]] | None = None
) -> tuple[Path, dict[str, Path]]:
    """The folder (root or one direct subfolder) whose images match the most ids, and its matches.

    Args:
        ids: The labels file's ids.
        root: The dataset folder.
        unreadable: When given, gets (folder, reason) for each candidate folder that cannot be read.
    """
    try:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise GraftError(f"cannot read folder {root}: {e.strerror or e}") from None
    best: tuple[Path, dict[str, Path]] = (root, {})
    for folder in [root, *subs]:
        try:
            found = match_ids(ids, folder)
        except OSError as e:
            if unreadable is not None:
                unreadable.append((folder, e.strerror or type(e).__name__))
            continue
        if len(found) > len(best[1]):  # strict: ties keep the earlier candidate (root first)
            best = (folder, found)
    return best


def locate_images(
    ids: list[str], root: Path, images: Path | None, scan: Scan
) -> tuple[Path, dict[str, Path]]:
    """The images folder (``images``, or the best match under ``root``) and id -> file in it.

    Folders that cannot be read, and symlinks in the images folder that lead nowhere, are warned
    about and counted in ``scan``. An explicit ``images`` folder that cannot be read is a GraftError.
    """
    found = Unlisted()
    if images is None:
        folder, matches = find_image_folder(ids, root, found.unreadable)
    else:
        try:
            folder, matches = images, match_ids(ids, images)
        except OSError as e:
            raise GraftError(f"cannot read images folder {images}: {e.strerror or e}") from None
    audit_entries(folder, found)
    scan.add_unlisted(found)
    return folder, matches


def group_labeled(found: dict[str, Path], mapping: dict[str, str], scan: Scan) -> tuple[dict, dict]:
    """Label -> its usable files, and label -> why it has none when every file of it was skipped.

    Args:
        found: id -> matched file.
        mapping: id -> label.
        scan: Checks the files (warning about each bad one) and records the skips.
    """
    skipped = len(scan.skipped)
    good = set(scan.good(sorted(set(found.values()))))
    bad = dict(scan.skipped[skipped:])
    groups: dict[str, list[Path]] = {}
    for key, path in found.items():
        if path in good:  # `good` loses each path once used: ids "a" and "a.jpg" must not both take a.jpg
            good.discard(path)
            groups.setdefault(mapping[key], []).append(path)
    lost = {}
    for label in sorted({mapping[k] for k in found} - groups.keys()):
        files = sorted({p for k, p in found.items() if mapping[k] == label and p in bad})
        why = lost_reason(Path(), [(p, bad[p]) for p in files], Unlisted())
        if why:
            lost[repr(label)] = why
    return groups, lost


def match_rows(
    ids: list[str], id_header: str, labels: Path, root: Path, images: Path | None, scan: Scan
) -> tuple[Path, dict[str, Path]]:
    """The images folder of a labels CSV and id -> image file, with a note on rows without an
    image and on images without a row.

    Raises:
        GraftError: No id matches an image, or the header row looks like data.
    """
    folder, found = locate_images(ids, root, images, scan)
    if not found:
        where = folder if images is not None else f"{root} or its subfolders"
        raise GraftError(f"no id in {labels.name} matches an image in {where} (first id: {ids[0]!r})")
    if id_header.lower() != "id" and match_ids([id_header], folder):
        raise GraftError(
            f"the first row of {labels.name} looks like data: a header row (e.g. 'id,label') is needed"
        )
    if len(found) < len(ids):
        # An id only ever matches a file name in `folder`: "../x.jpg" or "/abs/x.jpg" land here.
        lost = [key for key in ids if key not in found]
        rows = f"{len(lost):,} rows of {labels.name} have" if len(lost) > 1 else f"1 row of {labels.name} has"
        scan.notes.append(f"{rows} no image in {folder.name}/ (e.g. {lost[0]!r}); ignored")
    unlisted = len(list_images(folder)) - len(set(found.values()))
    if unlisted > 0:
        have = "has" if unlisted == 1 else "have"
        scan.notes.append(
            f"{plural(unlisted, 'image')} in {folder.name}/ {have} no labeled row in {labels.name}; ignored"
        )
    return folder, found
