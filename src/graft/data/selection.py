"""Which images a command works on: the labeled split to evaluate, or the files to predict."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from graft.data._scan import VAL_NAMES, child
from graft.data.dataset import ImageData, Sample, load_class_folder
from graft.data.images import is_image_file, list_images
from graft.infrastructure.errors import GraftError


def eval_samples(
    data: str | Path | ImageData | None, split: str | None, classes: list[str], record: dict | None = None
) -> tuple[list[Sample], str]:
    """The labeled samples to evaluate a model on, labelled in the model's class order, and a
    description of them (``root (split)``).

    Args:
        data: An :class:`ImageData`; a folder of class folders; or a dataset root (then
            ``split``, or the test split if there is a labeled one, else val).
        split: ``"test"``, ``"val"`` or ``"train"``.
        classes: The model's classes.
        record: The split the model was trained with (``ImageData.to_record()``): for datasets
            split by fractions, evaluating on its root reuses exactly the files it held out.

    Raises:
        GraftError: No such data or split, an unlabeled split, or classes the model does not know.
    """
    if data is None:
        raise GraftError("no data given to evaluate on")
    if isinstance(data, ImageData):
        name = split or _default_split({k: [s.label for s in v] for k, v in data.splits.items()})
        return _pick_split(data.splits, name, data.classes, classes), f"{data.root} ({name})"
    root = Path(data)
    if not root.is_dir():
        raise GraftError(f"evaluation data not found: {root}")
    own_root = bool(record) and Path(record["root"]).resolve() == root.resolve()
    if split is None and not own_root and child(root, "train") is None:
        samples, _ = load_class_folder(root, classes)
        return samples, str(root)
    if record and (record.get("layout") != "folders" or not _split_folder(root, split)):
        # The saved file list: exactly the images this run held out (and only those need to exist).
        name = split or _default_split({k: [label for _, label in v] for k, v in record["splits"].items()})
        only = {**record, "splits": {name: record["splits"].get(name, [])}}
        splits = ImageData.from_record(root, only).splits
        return _pick_split(splits, name, record["classes"], classes), f"{root} ({name})"
    folder = _split_folder(root, split or ("test" if _split_folder(root, "test") else "val"))
    if folder is None:
        raise GraftError(f"{root} has no {split or 'test or val'} folder")
    samples, _ = load_class_folder(folder, classes)
    return samples, str(folder)


def _default_split(labels: dict[str, list]) -> str:
    """``test`` when the data has a labeled test split, else ``val`` (a Kaggle-style test folder
    has no labels: it is for predict)."""
    test = labels.get("test")
    return "test" if test and all(label is not None for label in test) else "val"


def _pick_split(
    splits: dict[str, list[Sample]], name: str, data_classes: list[str], classes: list[str]
) -> list[Sample]:
    samples = splits.get(name)
    if not samples:
        raise GraftError(
            f"the data has no '{name}' split (it has: {', '.join(k for k, v in splits.items() if v)})"
        )
    if any(s.label is None for s in samples):
        raise GraftError(f"the '{name}' split is unlabeled: use predict, not evaluate")
    if list(data_classes) != list(classes):
        index = {c: i for i, c in enumerate(classes)}

        def each(label: int | tuple[int, ...]) -> tuple[int, ...]:
            return label if isinstance(label, tuple) else (label,)

        unknown = sorted({data_classes[i] for s in samples for i in each(s.label)} - index.keys())
        if unknown:
            raise GraftError(f"classes unknown to the model: {', '.join(unknown[:5])}")
        samples = [
            Sample(
                s.path,
                tuple(sorted(index[data_classes[i]] for i in s.label))
                if isinstance(s.label, tuple)
                else index[data_classes[s.label]],
            )
            for s in samples
        ]
    return samples


def _split_folder(root: Path, split: str | None) -> Path | None:
    """The folder of ``split`` in ``root``, its name matched as the dataset scan matches it
    (any case; ``val``, ``valid`` or ``validation``)."""
    if not split:
        return None
    return child(root, *(VAL_NAMES if split == "val" else (split.lower(),)))


def expand_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files named directly, plus the images inside named folders (recursively, sorted).

    Raises:
        GraftError: If a path does not exist, or nothing at all is found.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += list_images(p, recursive=True)
        elif p.is_file():
            if not is_image_file(p):
                raise GraftError(f"not an image file: {p}")
            found.append(p)
        else:
            raise GraftError(f"no such file or folder: {p}")
    if not found:
        raise GraftError(f"no images found in {', '.join(map(str, paths))}")
    return found
