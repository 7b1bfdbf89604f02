"""Nothing a dataset scan leaves out goes unsaid (issue 18, item 4).

Unreadable folders, classes whose every image is undecodable, classes missing from val, extreme
imbalance, symlink loops, files beside the class folders and class names equal but for case: each
is warned about or counted in the notes, and a class with no usable training image is an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from graft.data._audit import IMBALANCE_RATIO, imbalance_note
from graft.data.dataset import ImageData, load_class_folder
from graft.infrastructure.errors import GraftError, SkippedFileWarning
from tests.conftest import make_image_folder, write_image

SIZE = (12, 10)


def _junk(folder: Path, n: int) -> None:
    """``n`` files with an image extension and bytes no decoder accepts."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"junk_{i}.jpg").write_bytes(b"not a jpeg at all")


def _load(*args, **kwargs) -> tuple[ImageData, list[str]]:
    """ImageData.from_folder, and the text of every warning it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ImageData.from_folder(*args, **kwargs)
    return data, [str(w.message) for w in caught]


def _counts(data: ImageData, split: str) -> dict[str, int]:
    out = dict.fromkeys(data.classes, 0)
    for s in data.splits[split]:
        out[data.classes[s.label]] += 1
    return out


# --- 1. folders the user cannot read -----------------------------------------------------------

# Run as a child process: as root (where chmod 000 blocks nothing) the child drops to nobody, so
# the folder really cannot be read; as any other user chmod alone does it.
_CHILD = """
import json, sys, warnings
from graft.data.dataset import ImageData
from graft.infrastructure.errors import GraftError
kwargs = json.loads(sys.argv[2])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        data = ImageData.from_folder(sys.argv[1], **kwargs)
        out = {"classes": data.classes, "notes": data.notes,
               "val": sorted(data.classes[s.label] for s in data.splits["val"])}
    except GraftError as e:
        out = {"error": str(e)}
out["warnings"] = [str(w.message) for w in caught]
print(json.dumps(out))
"""


@pytest.fixture(name="shared_tmp")
def _shared_tmp() -> Iterator[Path]:
    """A temporary folder an unprivileged user can enter (pytest's own is root-only when root)."""
    path = Path(tempfile.mkdtemp(prefix="graft-drops-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    subprocess.run(["rm", "-rf", str(path)], check=False)


def _load_unprivileged(root: Path, **kwargs) -> dict:
    """Load ``root`` in a child process that cannot read what is chmod 000 (root drops to nobody)."""
    drop = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(root), json.dumps(kwargs)],
            capture_output=True, text=True, env=env, cwd="/", timeout=120, **drop,
        )  # fmt: skip
    except PermissionError as e:  # a container without CAP_SETUID
        pytest.skip(f"cannot run a child process as an unprivileged user here: {e}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _two_splits(root: Path, classes: dict[str, int]) -> Path:
    make_image_folder(root / "train", classes, size=SIZE, seed=1)
    make_image_folder(root / "val", {c: 2 for c in classes}, size=SIZE, seed=2)
    return root


def test_an_unreadable_val_class_folder_is_warned_and_noted(shared_tmp: Path) -> None:
    root = _two_splits(shared_tmp / "data", {"cat": 4, "dog": 4})
    (root / "val" / "dog").chmod(0)
    (root / "val" / "cat" / "cat_1.png").chmod(0)  # an unreadable file: skipped with a warning
    out = _load_unprivileged(root)
    assert out["val"] == ["cat"]
    unreadable = f"skipping {root / 'val' / 'cat' / 'cat_1.png'}: unreadable image (PermissionError"
    assert any(w.startswith(unreadable) for w in out["warnings"])
    folder = root / "val" / "dog"
    assert (
        f"skipping {folder}/: cannot read the folder (Permission denied); its images are left out"
        in (out["warnings"])
    )
    gap = (
        "class 'dog' has no images in val: val scores leave it out "
        "(val/dog/: cannot read the folder (Permission denied))"
    )
    assert gap in out["warnings"] and gap in out["notes"]
    assert (
        "1 folder could not be read; its images are left out (e.g. val/dog/: Permission denied)"
        in (out["notes"])
    )


def test_an_unreadable_train_class_folder_is_an_error(shared_tmp: Path) -> None:
    root = _two_splits(shared_tmp / "data", {"cat": 4, "cow": 4, "dog": 4})
    (root / "train" / "dog").chmod(0)
    out = _load_unprivileged(root)
    assert out["error"] == (
        "no usable training images in train/dog/: cannot read the folder (Permission denied); "
        "fix or remove its files"
    )


def test_an_unreadable_subfolder_beside_a_labels_file_is_noted(shared_tmp: Path) -> None:
    root = shared_tmp / "data"
    rows = ["id,label"]
    for i in range(6):
        write_image(root / "images" / f"{i}.png", (200, 30 * i, 0), SIZE, seed=i)
        rows.append(f"{i},{'ab'[i % 2]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "private").mkdir()
    (root / "private").chmod(0)
    out = _load_unprivileged(root, labels="labels.csv")  # was a PermissionError traceback
    assert out["classes"] == ["a", "b"]
    assert (
        "1 folder could not be read; its images are left out (e.g. private/: Permission denied)"
        in (out["notes"])
    )


# --- 2. classes whose every image fails to decode ------------------------------------------------


def test_a_val_class_with_only_undecodable_images_is_a_warning(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "train", {"cat": 4, "dog": 4}, size=SIZE, seed=1).parent
    make_image_folder(root / "val", {"cat": 2}, size=SIZE, seed=2)
    _junk(root / "val" / "dog", 3)
    data, warned = _load(root)
    assert _counts(data, "val") == {"cat": 2, "dog": 0}
    gap = (
        "class 'dog' has no images in val: val scores leave it out "
        "(val/dog/: 3 image files, all skipped: 3 not an image)"
    )
    assert gap in warned and gap in data.notes


def test_a_test_class_with_only_undecodable_images_is_a_warning(tmp_path: Path) -> None:
    root = _two_splits(tmp_path, {"cat": 4, "dog": 4})
    make_image_folder(root / "test", {"cat": 2}, size=SIZE, seed=3)
    _junk(root / "test" / "dog", 2)
    data, warned = _load(root)
    assert _counts(data, "test") == {"cat": 2, "dog": 0}
    assert (
        "class 'dog' has no images in test: test scores leave it out "
        "(test/dog/: 2 image files, all skipped: 2 not an image)"
    ) in warned


def test_a_test_folder_with_only_undecodable_images_is_a_warning(tmp_path: Path) -> None:
    root = _two_splits(tmp_path, {"cat": 4, "dog": 4})
    _junk(root / "test" / "cat", 1)
    _junk(root / "test" / "dog", 2)
    data, warned = _load(root)  # was: "test/ has no images; no test split"
    assert data.splits["test"] == []
    assert (
        "2 of 2 classes have no images in test: test scores leave them out "
        "(e.g. cat: test/cat/: 1 image file, all skipped: 1 not an image; "
        "dog: test/dog/: 2 image files, all skipped: 2 not an image)"
    ) in warned


def test_a_train_class_with_only_undecodable_images_is_an_error(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"cat": 4, "dog": 4}, size=SIZE)
    _junk(tmp_path / "cow", 4)
    with pytest.warns(SkippedFileWarning), pytest.raises(GraftError) as e:
        ImageData.from_folder(tmp_path)
    assert str(e.value) == (
        "no usable training images in cow/: 4 image files, all skipped: 4 not an image; "
        "fix or remove its files"
    )


def test_a_label_with_only_undecodable_images_is_an_error(tmp_path: Path) -> None:
    rows = ["id,label"]
    for i in range(8):
        write_image(tmp_path / f"{i}.png", (200, 30 * i, 0), SIZE, seed=i)
        rows.append(f"{i}.png,{'ab'[i % 2]}")
    _junk(tmp_path, 3)
    rows += [f"junk_{i}.jpg,cow" for i in range(3)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(SkippedFileWarning), pytest.raises(GraftError) as e:
        ImageData.from_folder(tmp_path, labels="labels.csv")
    assert str(e.value) == (
        "no usable training images in 'cow': 3 image files, all skipped: 3 not an image; "
        "fix or remove its files"
    )


def test_an_evaluation_class_with_only_undecodable_images_is_a_warning(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"cat": 3}, size=SIZE)
    _junk(tmp_path / "dog", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, skipped = load_class_folder(tmp_path, ["cat", "dog"])
    gap = (
        f"class 'dog' has no usable images in {tmp_path / 'dog'}: 2 image files, all skipped: 2 not an image"
    )
    assert gap in [str(w.message) for w in caught]
    assert len(samples) == 3 and len(skipped) == 2


def test_an_empty_class_folder_is_still_only_a_note(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"cat": 4, "dog": 4}, size=SIZE)
    (tmp_path / "empty").mkdir()
    data, _ = _load(tmp_path)  # nothing was lost: there was never an image to train on
    assert data.classes == ["cat", "dog"]
    assert "1 class folder has no usable images; ignored: empty" in data.notes


# --- 3. imbalance, and classes with no val images ------------------------------------------------


def test_extreme_imbalance_and_a_class_without_val_images_are_warned(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"cat": 60, "dog": 2}, size=SIZE)
    data, warned = _load(tmp_path)
    assert _counts(data, "val")["dog"] == 0
    imbalance = (
        "classes are imbalanced: 'cat' has 48 training images, 'dog' 2 (24:1); "
        "accuracy can look high while small classes are missed: check per-class recall"
    )
    gap = "class 'dog' has no images in val: val scores leave it out (2 images in all, none held out)"
    for text in (imbalance, gap):
        assert text in warned and text in data.notes


def test_a_class_missing_from_the_val_folder_is_warned(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "train", {"cat": 6, "dog": 6, "fox": 6}, size=SIZE, seed=1)
    make_image_folder(tmp_path / "val", {"cat": 2}, size=SIZE, seed=2)
    data, warned = _load(tmp_path)
    gap = (
        "2 of 3 classes have no images in val: val scores leave them out "
        "(e.g. dog: no val/dog/ folder; fox: no val/fox/ folder)"
    )
    assert gap in warned and gap in data.notes
    assert not any("imbalanced" in w for w in warned)


def test_the_imbalance_threshold() -> None:
    assert imbalance_note({"a": IMBALANCE_RATIO * 3 - 1, "b": 3}) is None
    assert imbalance_note({"a": IMBALANCE_RATIO * 3, "b": 3, "c": 10}) == (
        f"classes are imbalanced: 'a' has {IMBALANCE_RATIO * 3} training images, "
        f"'b' 3 ({IMBALANCE_RATIO}:1); "
        "accuracy can look high while small classes are missed: check per-class recall"
    )


# --- 4. symlink loops, a file named like a class folder, stray images ---------------------------


def test_file_symlink_loops_and_broken_symlinks_are_warned_and_noted(tmp_path: Path) -> None:
    root = _two_splits(tmp_path, {"cat": 4, "dog": 4})
    cat = root / "train" / "cat"
    os.symlink("b.jpg", cat / "a.jpg")
    os.symlink("a.jpg", cat / "b.jpg")
    os.symlink("gone.png", cat / "dangling.png")
    data, warned = _load(root)
    assert _counts(data, "train") == {"cat": 4, "dog": 4}
    for name, to in (("a.jpg", "b.jpg"), ("b.jpg", "a.jpg")):
        loop = f"skipping {cat / name}: symlink loop (it points to {cat / to}, which never leads to a file)"
        assert loop in warned
    assert f"skipping {cat / 'dangling.png'}: broken symlink to gone.png, which does not exist" in warned
    assert "2 symlink loops in the class folders not followed (e.g. train/cat/a.jpg -> train/cat/b.jpg)" in (
        data.notes
    )
    assert (
        "1 broken symlink or special file ignored "
        "(e.g. train/cat/dangling.png: broken symlink to gone.png, which does not exist)"
    ) in data.notes


def test_a_symlink_loop_beside_a_labels_file_is_warned(tmp_path: Path) -> None:
    rows = ["id,label"]
    for i in range(6):
        write_image(tmp_path / "images" / f"{i}.png", (200, 30 * i, 0), SIZE, seed=i)
        rows.append(f"{i},{'ab'[i % 2]}")
    os.symlink("y.png", tmp_path / "images" / "x.png")
    os.symlink("x.png", tmp_path / "images" / "y.png")
    (tmp_path / "labels.csv").write_text("\n".join([*rows, "x,a"]) + "\n")
    data, warned = _load(tmp_path, labels="labels.csv")
    assert len(data.splits["train"]) + len(data.splits["val"]) == 6
    link = tmp_path / "images" / "x.png"
    assert (
        f"skipping {link}: symlink loop (it points to {link.parent / 'y.png'}, which never leads to a file)"
        in (warned)
    )
    assert any(
        n.startswith("2 broken symlinks or special files ignored (e.g. images/x.png: symlink loop")
        for n in data.notes
    )


def test_files_beside_the_class_folders_are_noted(tmp_path: Path) -> None:
    root = _two_splits(tmp_path, {"cat": 4, "dog": 4})
    (root / "train" / "cow").write_bytes(b"a file named like a class folder")
    write_image(root / "train" / "stray.png", (0, 0, 0), SIZE)
    write_image(root / "val" / "lost.png", (0, 0, 0), SIZE, seed=5)
    data, _ = _load(root)
    assert data.classes == ["cat", "dog"]
    assert (
        "2 files (1 image) directly in train/, outside the class folders, ignored: cow, stray.png"
        in data.notes
    )
    assert "1 file (1 image) directly in val/, outside the class folders, ignored: lost.png" in data.notes


def test_files_beside_the_class_folders_of_a_single_folder_are_noted(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pets", {"cat": 5, "dog": 5}, size=SIZE)
    (root / "cow").write_bytes(b"a file named like a class folder")
    data, _ = _load(root)
    assert "1 file directly in pets/, outside the class folders, ignored: cow" in data.notes


# --- 5. class names that differ only in case -----------------------------------------------------


def test_class_folders_that_differ_only_in_case_are_warned(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"Cat": 5, "cat": 5, "dog": 5}, size=SIZE)
    data, warned = _load(tmp_path)
    assert data.classes == ["Cat", "cat", "dog"]
    clash = "class names that differ only in case are separate classes: 'Cat' and 'cat'; rename to merge them"
    assert clash in warned and clash in data.notes


def test_labels_that_differ_only_in_case_are_warned(tmp_path: Path) -> None:
    rows = ["id,label"]
    for i in range(9):
        write_image(tmp_path / f"{i}.png", (200, 25 * i, 0), SIZE, seed=i)
        rows.append(f"{i},{['Cat', 'cat', 'dog'][i % 3]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    _, warned = _load(tmp_path, labels="labels.csv")
    assert any("differ only in case are separate classes: 'Cat' and 'cat'" in w for w in warned)


def test_a_val_folder_that_differs_only_in_case_names_the_train_class(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "train", {"Cat": 4, "dog": 4}, size=SIZE, seed=1)
    make_image_folder(tmp_path / "val", {"cat": 2, "dog": 2}, size=SIZE, seed=2)
    with pytest.raises(
        GraftError,
        match=r"class folder 'cat' in .* is not a class in train/; it differs only in case from 'Cat'",
    ):
        ImageData.from_folder(tmp_path)


def _quiet(load: Callable[[], ImageData]) -> ImageData:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load()


def test_a_clean_balanced_dataset_warns_nothing(tmp_path: Path) -> None:
    _two_splits(tmp_path, {"cat": 5, "dog": 5})
    data = _quiet(lambda: ImageData.from_folder(tmp_path))
    assert not [n for n in data.notes if "directly in" in n or "differ only in case" in n]
