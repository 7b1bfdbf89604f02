"""graft organize (the library function): Kaggle-style data written out as ImageFolder trees."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import pytest

from graft.data import ImageData
from graft.data.organize import RECORD_FILE, class_name_problem, organize
from graft.infrastructure.errors import GraftError, SkippedFileWarning
from tests.conftest import PALETTE, make_image_folder, shared_dataset, write_image

# 8 + 6 + 5 + 1 images: "solo" has a single image, which must stay in train.
CLASSES = {"cat": 8, "dog": 6, "fox": 5, "solo": 1}


def kaggle(root: Path, classes: dict[str, int] = CLASSES, test: int = 4) -> Path:
    """``root/train/<id>.png`` (flat), ``root/labels.csv`` (``id,breed``), ``root/test/<id>.png``."""
    rows = ["id,breed"]
    for k, (name, n) in enumerate(classes.items()):
        for i in range(n):
            key = f"{name[0]}{k}{i:03d}"
            write_image(root / "train" / f"{key}.png", PALETTE[k], (16, 12), seed=k * 100 + i)
            rows.append(f"{key},{name}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    for i in range(test):
        write_image(root / "test" / f"t{i:03d}.png", PALETTE[i % 4], (16, 12), seed=9000 + i)
    return root


def files(folder: Path) -> dict[str, set[str]]:
    """Class folder -> file names in it (a flat folder's files under "")."""
    out: dict[str, set[str]] = {}
    for p in folder.rglob("*"):
        if p.is_file() or p.is_symlink():
            out.setdefault(p.parent.relative_to(folder).as_posix().replace(".", ""), set()).add(p.name)
    return out


def leftovers(parent: Path) -> list[str]:
    """Hidden temporary folders organize would have left beside OUT."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and "organize" in p.name)


def test_a_labels_csv_becomes_train_valid_train_valid_and_test(tmp_path: Path) -> None:
    data = kaggle(tmp_path / "data")
    out = tmp_path / "out"
    result = organize(data, out, labels=data / "labels.csv", valid_split=0.25, seed=3)

    assert sorted(p.name for p in out.iterdir()) == ["organize.json", "test", "train", "train_valid", "valid"]
    train, valid, both = files(out / "train"), files(out / "valid"), files(out / "train_valid")
    assert set(train) == {"cat", "dog", "fox", "solo"}  # every class has train images
    assert train["solo"] == {"s3000.png"} and "solo" not in valid  # the singleton stays in train
    for c in both:
        assert both[c] == train[c] | valid.get(c, set()) and not train[c] & valid.get(c, set())
    assert files(out / "test") == {"": {f"t{i:03d}.png" for i in range(4)}}  # flat, names kept
    assert result.counts == {"train": 15, "valid": 5, "train_valid": 20, "test": 4}
    assert result.class_counts == {"train": 4, "valid": 3, "train_valid": 4, "test": 0}
    assert result.placed == {"hardlink": 44}
    assert (out / "train_valid" / "cat" / "c0000.png").samefile(data / "train" / "c0000.png")

    # The split is graft's own: the same as graft train DATA --labels ... --valid-split 0.25 --seed 3.
    same = ImageData.from_folder(data, labels="labels.csv", valid_split=0.25, seed=3)
    assert {(same.classes[s.label], s.path.name) for s in same.splits["val"]} == {
        (c, n) for c, names in valid.items() for n in names
    }

    record = json.loads((out / RECORD_FILE).read_text())
    assert record["source"] == {
        "data": str(data),
        "layout": "csv",
        "labels": str(data / "labels.csv"),
        "test": str(data / "test"),
    }
    assert (record["seed"], record["valid_split"]) == (3, 0.25)
    assert record["counts"] == result.counts and record["link"] == {
        "requested": "auto",
        "placed": result.placed,
    }
    assert record["classes"]["solo"] == {"train": 1, "train_valid": 1}
    assert any("too few images for the val split" in n for n in result.notes)

    assert result.summary().splitlines() == [
        "4 classes from a 'csv' dataset",
        "  train        15 images  4 classes",
        "  valid         5 images  3 classes",
        "  train_valid  20 images  4 classes",
        "  test          4 images  unlabeled",
        "placed 44 files: 44 as hard links",
        "skipped: 0 files",
    ]
    assert leftovers(tmp_path) == []


def test_graft_reads_the_output_as_folders_and_train_valid_as_class_folders(tmp_path: Path) -> None:
    data = kaggle(tmp_path / "data")
    out = tmp_path / "out"
    organize(data, out, labels="labels.csv", valid_split=0.25)
    whole = ImageData.from_folder(out)
    assert whole.layout == "folders"
    assert {k: len(v) for k, v in whole.splits.items()} == {"train": 15, "val": 5, "test": 4}
    assert all(s.label is None for s in whole.splits["test"])  # unlabeled: for graft predict
    assert "not read, beside train/, valid/ and test/: train_valid/" in whole.notes
    final = ImageData.from_folder(out / "train_valid", valid_split=0)
    assert final.layout == "split" and final.classes == whole.classes
    assert {k: len(v) for k, v in final.splits.items()} == {"train": 20, "val": 0}
    assert "no val split (valid_split 0): training keeps its last epoch" in final.notes


@pytest.mark.parametrize("link", ["symlink", "copy"])
def test_symlinks_and_copies(tmp_path: Path, link: str) -> None:
    data = kaggle(tmp_path / "data")
    out = tmp_path / "out"
    result = organize(data, out, labels="labels.csv", link=link)
    placed = out / "train_valid" / "cat" / "c0000.png"
    assert placed.is_symlink() == (link == "symlink")
    assert placed.read_bytes() == (data / "train" / "c0000.png").read_bytes()
    if link == "symlink":
        assert os.readlink(placed) == str(data / "train" / "c0000.png")  # absolute: OUT may move
    else:
        assert not placed.samefile(data / "train" / "c0000.png")
    assert result.placed == {link: sum(result.counts.values())}


def test_auto_falls_back_to_symlinks_when_hard_links_fail(tmp_path: Path, monkeypatch) -> None:
    data = kaggle(tmp_path / "data")
    calls = []

    def cross_device(src, dst, **kw):
        calls.append(src)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    result = organize(data, tmp_path / "out", labels="labels.csv")
    assert len(calls) == 1  # tried once, then symbolic links for every file
    assert result.placed == {"symlink": 44}
    assert any(
        n.startswith("hard links are not possible here (Invalid cross-device link)") for n in result.notes
    )
    assert (tmp_path / "out" / "test" / "t000.png").is_symlink()


def test_an_explicit_link_mode_that_fails_is_an_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    data = kaggle(tmp_path / "data")

    def refuse(src, dst, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    final = (
        r"cannot hard-link .*/data/train/c\d+\.png to .*/out/train/cat/c\d+\.png: Invalid cross-device link"
    )
    with pytest.raises(GraftError, match=final + "; try --link auto or --link copy"):
        organize(data, tmp_path / "out", labels="labels.csv", link="hardlink")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_previous_output(tmp_path: Path, monkeypatch) -> None:
    data = kaggle(tmp_path / "data")
    out = tmp_path / "out"
    organize(data, out, labels="labels.csv")
    before = files(out)
    copied = []

    def copy_until_full(src, dst, **kw):
        if len(copied) == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(dst)
        return shutil.copyfile(src, dst)

    monkeypatch.setattr(shutil, "copy2", copy_until_full)
    with pytest.raises(GraftError, match="No space left on device"):
        organize(data, out, labels="labels.csv", link="copy", overwrite=True, valid_split=0.5)
    assert files(out) == before and leftovers(tmp_path) == []


def test_out_must_be_new_empty_or_an_earlier_output(tmp_path: Path) -> None:
    data = kaggle(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    organize(data, out, labels="labels.csv")  # an empty folder is fine
    with pytest.raises(GraftError, match="exists and is not empty; pass --overwrite"):
        organize(data, out, labels="labels.csv")
    stale = out / "train" / "cat" / "stale.png"
    stale.write_bytes(b"x")
    result = organize(data, out, labels="labels.csv", valid_split=0.5, overwrite=True)
    assert not stale.exists() and result.counts["valid"] == 10
    assert json.loads((out / RECORD_FILE).read_text())["valid_split"] == 0.5

    mine = tmp_path / "mine"
    (mine / "keep.txt").parent.mkdir()
    (mine / "keep.txt").write_text("precious")
    with pytest.raises(GraftError, match="not a folder graft organize wrote"):
        organize(data, mine, labels="labels.csv", overwrite=True)
    assert (mine / "keep.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(GraftError, match="exists and is not a folder"):
        organize(data, tmp_path / "file", labels="labels.csv")
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(GraftError, match="is a symbolic link: give the folder it points to"):
        organize(data, tmp_path / "link", labels="labels.csv", overwrite=True)
    assert leftovers(tmp_path) == []


def test_out_may_not_overlap_the_data(tmp_path: Path) -> None:
    data = kaggle(tmp_path / "data")
    with pytest.raises(GraftError, match="would replace the data"):
        organize(data / "train", tmp_path, labels=data / "labels.csv")
    classes = make_image_folder(tmp_path / "classes", {"a": 3, "b": 3}, size=(8, 8))
    with pytest.raises(GraftError, match=r"inside the dataset folder .* read it as data next time"):
        organize(classes, classes / "organized")
    # Inside a Kaggle folder (as d2l does) is fine: only the flat image folder is read.
    organize(data, data / "organized", labels="labels.csv")
    assert ImageData.from_folder(data, labels="labels.csv").splits["train"]


def test_class_folders_and_an_explicit_test_folder(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 5, "b": 4}, size=(8, 8))
    (data / "a" / "deeper").mkdir()
    shutil.copyfile(data / "a" / "a_1.png", data / "a" / "deeper" / "a_0.png")  # clashes with a/a_0.png
    extra = make_image_folder(tmp_path / "unlabeled", {"x": 2}, size=(8, 8)) / "x"
    result = organize(data, tmp_path / "out", valid_split=0.2, test=extra)
    assert result.layout == "split" and result.counts == {
        "train": 8,
        "valid": 2,
        "train_valid": 10,
        "test": 2,
    }
    names = files(tmp_path / "out" / "train_valid")
    assert names["a"] == {"a_0.png", "a_0-2.png", "a_1.png", "a_2.png", "a_3.png", "a_4.png"}
    assert any(
        n.startswith("1 file renamed where another file of its class had the same name") for n in result.notes
    )
    assert files(tmp_path / "out" / "test") == {"": {"x_0.png", "x_1.png"}}
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraftError, match=r"test folder .* has no images"):
        organize(data, tmp_path / "out2", test=tmp_path / "empty")


def test_valid_split_zero_writes_no_valid_folder(tmp_path: Path) -> None:
    data = kaggle(tmp_path / "data", test=0)
    result = organize(data, tmp_path / "out", labels="labels.csv", valid_split=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["organize.json", "train", "train_valid"]
    assert result.counts == {"train": 20, "train_valid": 20}
    assert "no valid/ folder: valid_split is 0" in result.notes


def test_a_train_tiny_folder_finds_test_tiny(tmp_path: Path) -> None:
    """CIFAR-10's Kaggle files: train_tiny/ + trainLabels.csv, and the unlabeled test_tiny/."""
    data = kaggle(tmp_path / "data", test=0)
    (data / "train").rename(data / "train_tiny")
    make_image_folder(tmp_path / "t", {"test_tiny": 1}, size=(8, 8))
    shutil.move(tmp_path / "t" / "test_tiny", data / "test_tiny")
    result = organize(data, tmp_path / "out", labels="labels.csv")
    assert "  test          1 image   unlabeled" in result.summary().splitlines()
    record = json.loads((tmp_path / "out" / RECORD_FILE).read_text())
    assert record["source"]["test"] == str(data / "test_tiny")


def test_bad_files_are_skipped_with_the_usual_warnings(tmp_path: Path) -> None:
    data = kaggle(tmp_path / "data")
    (data / "train" / "c0001.png").write_bytes(b"")  # empty, and labeled cat
    (data / "test" / "t009.png").write_bytes(b"not a png")
    with pytest.warns(SkippedFileWarning) as caught:
        result = organize(data, tmp_path / "out", labels="labels.csv")
    caught = [w for w in caught if issubclass(w.category, SkippedFileWarning)]  # not the split warnings
    assert sorted(Path(str(w.message).split(":")[0].split()[-1]).name for w in caught) == [
        "c0001.png",
        "t009.png",
    ]
    assert [p.name for p, _ in result.skipped] == ["c0001.png", "t009.png"]
    assert result.counts["train_valid"] == 19 and result.counts["test"] == 4
    assert "skipped: 2 files (1 empty, 1 not an image)" in result.summary()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "not a folder name"),
        (".", "not a folder name"),
        (".hidden", "hidden folder"),
        ("tab\there", "control character"),
        ("x" * 256, "longer than 255 bytes"),
        ("   ", "empty"),
    ],
)
def test_class_names_that_cannot_be_folder_names(name: str, why: str) -> None:
    assert why in class_name_problem(name)


@pytest.mark.parametrize(
    "name", ["golden_retriever", "black-and-tan coonhound", "Ça va", "1", "a.b", "é" * 127]
)
def test_class_names_that_can(name: str) -> None:
    assert class_name_problem(name) is None


def test_a_label_with_a_slash_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    data = kaggle(tmp_path / "data", test=0)
    text = (data / "labels.csv").read_text().replace(",dog", ",dogs/wolves")
    (data / "labels.csv").write_text(text)
    with pytest.raises(GraftError, match=r"class 'dogs/wolves' in labels.csv cannot be a folder name: .*'/'"):
        organize(data, tmp_path / "out", labels="labels.csv")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_bad_arguments(tmp_path: Path) -> None:
    data = kaggle(tmp_path / "data", test=0)
    with pytest.raises(GraftError, match="link must be one of auto, hardlink, symlink, copy"):
        organize(data, tmp_path / "out", labels="labels.csv", link="reflink")
    with pytest.raises(GraftError, match=r"test folder .* does not exist"):
        organize(data, tmp_path / "out", labels="labels.csv", test=tmp_path / "nope")
    with pytest.raises(GraftError, match="valid_split must be in"):
        organize(data, tmp_path / "out", labels="labels.csv", valid_split=1.5)


def test_dog_tiny(tmp_path: Path) -> None:
    """The real Kaggle dog-breed subset: 300 labeled images of 110 breeds, 300 unlabeled test images."""
    data = shared_dataset("dog_tiny")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFileWarning)
        result = organize(data, tmp_path / "dog", labels="labels.csv", valid_split=0.1)
    seconds = time.perf_counter() - start
    out = tmp_path / "dog"
    train, valid, both = files(out / "train"), files(out / "valid"), files(out / "train_valid")
    assert len(result.classes) == 110 and set(train) == set(both) == set(result.classes)
    assert sum(map(len, both.values())) == 300 == result.counts["train_valid"]
    assert result.counts["train"] + result.counts["valid"] == 300 and result.counts["valid"] == 30
    for c in both:
        assert both[c] == train[c] | valid.get(c, set())
    assert len(files(out / "test")[""]) == 300 == result.counts["test"]
    assert result.skipped == []
    assert seconds < 30, seconds
