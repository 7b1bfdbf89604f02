"""Reading back the sample entries of a dataset record (``ImageData.to_record()``), which a run
folder stores and anyone may edit: every entry is checked before a file is touched."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from graft.infrastructure.errors import GraftError


def record_entry(root: Path, row: object, index: dict[str, int]) -> tuple[Path, int | tuple[int, ...] | None]:
    """The file and label of one ``[relative path, class name | [class names] | None]`` entry.

    Raises:
        GraftError: A malformed entry, a path that leaves ``root``, or a class not in ``index``.
    """
    if not isinstance(row, list | tuple) or len(row) != 2:
        raise GraftError(f"not a graft dataset record: bad sample entry {row!r}")
    rel, cname = row
    parts = PurePosixPath(str(rel)).parts
    escapes = (
        not parts
        or PurePosixPath(str(rel)).is_absolute()
        or PureWindowsPath(str(rel)).is_absolute()
        or str(rel).startswith("\\")
        or ".." in parts
        or PureWindowsPath(str(rel)).drive
    )
    if escapes:
        raise GraftError(f"record path {rel!r} is not a relative path inside the dataset folder")
    names = cname if isinstance(cname, list) else [] if cname is None else [cname]
    for name in names:
        if not isinstance(name, str) or name not in index:
            raise GraftError(f"record sample {rel!r} has class {name!r}, which is not in its class list")
    path = root.joinpath(*parts)
    if isinstance(cname, list):  # multi-label: the sorted class indices
        return path, tuple(sorted(index[n] for n in names))
    return path, None if cname is None else index[cname]
