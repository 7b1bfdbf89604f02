"""ImageData layouts, splits, records and errors on generated image folders."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from graft.data import ImageData, load_class_folder
from graft.data._split import stratified_split
from graft.infrastructure.errors import GraftError


def _paths(samples) -> set[Path]:
    return {s.path for s in samples}


def _assert_disjoint(data: ImageData) -> None:
    seen: set[Path] = set()
    for samples in data.splits.values():
        paths = _paths(samples)
        assert len(paths) == len(samples) and not (seen & paths)
        seen |= paths


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- layout "split" ------------------------------------------------------------------------------


def test_split_layout(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes={"infected": 10, "NotInfected": 10, "maybe": 5})
    data = ImageData.from_folder(tmp_path, valid_split=0.2, test_split=0.2)
    assert data.layout == "split"
    assert data.classes == ["NotInfected", "infected", "maybe"]  # plain sorted(): upper case first
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 15, "val": 5, "test": 5}
    _assert_disjoint(data)
    for s in data.splits["train"]:
        assert s.path.parent.name == data.classes[s.label]


def test_split_is_seeded_and_stratified(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes={"a": 50, "b": 30, "c": 20}, size=(8, 8))
    one = ImageData.from_folder(tmp_path, seed=1)
    again = ImageData.from_folder(tmp_path, seed=1)
    other = ImageData.from_folder(tmp_path, seed=2)
    assert one.splits == again.splits
    assert _paths(one.splits["val"]) != _paths(other.splits["val"])
    per_class = [sum(s.label == k for s in one.splits["val"]) for k in range(3)]
    assert per_class == [10, 6, 4]


def test_adding_a_class_keeps_other_classes_split(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes={"a": 10, "b": 10}, size=(8, 8))
    before = ImageData.from_folder(tmp_path, valid_split=0.3)
    make_image_folder(tmp_path, classes={"zz": 10}, size=(8, 8), seed=1)  # not copies of a/'s images
    after = ImageData.from_folder(tmp_path, valid_split=0.3)
    assert _paths(before.splits["val"]) <= _paths(after.splits["val"])


def test_largest_remainder_hits_global_count() -> None:
    groups = {c: [f"{c}{i}" for i in range(n)] for c, n in {"a": 7, "b": 7, "c": 7, "d": 1, "e": 2}.items()}
    for frac in [0.1, 0.2, 0.25, 0.33, 0.5]:
        parts, _ = stratified_split(groups, {"val": frac}, seed=0)
        n_val = sum(len(v) for v in parts["val"].values())
        assert n_val == round(24 * frac)
        assert all(parts["train"][c] for c in groups)  # every class keeps a train image
        assert parts["val"]["d"] == []


def test_tiny_classes_stay_in_train_with_one_note(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes={"big": 10, "one": 1, "solo": 1}, size=(8, 8))
    data = ImageData.from_folder(tmp_path, valid_split=0.3, test_split=0.2)
    one = data.classes.index("one")
    assert [s.label for s in data.splits["train"]].count(one) == 1
    assert len([n for n in data.notes if "too few images for the val split" in n]) == 1
    assert sum(len(v) for v in data.splits.values()) == 12


def test_valid_split_zero_has_an_empty_val_split_and_says_so(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes={"a": 4, "b": 3}, size=(8, 8))
    data = ImageData.from_folder(tmp_path, valid_split=0)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 7, "val": 0}
    assert data.notes == ["no val split (valid_split 0): training keeps its last epoch"]


# --- layout "folders" ----------------------------------------------------------------------------


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_folders_layout(tmp_path: Path, make_image_folder, val_name: str) -> None:
    make_image_folder(tmp_path / "train", classes={"ants": 6, "bees": 5})
    make_image_folder(tmp_path / val_name, classes={"ants": 2, "bees": 3}, seed=1)
    data = ImageData.from_folder(tmp_path)
    assert data.layout == "folders" and data.classes == ["ants", "bees"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 11, "val": 5}


def test_folders_without_val_and_with_labeled_test(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "train", classes={"a": 10, "b": 10}, size=(8, 8))
    make_image_folder(tmp_path / "test", classes={"a": 3, "b": 2}, size=(8, 8), seed=3)
    data = ImageData.from_folder(tmp_path, valid_split=0.2)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 16, "val": 4, "test": 5}
    assert all(s.label is not None for s in data.splits["test"])


def test_folders_flat_test_is_unlabeled(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "train", classes={"a": 4, "b": 4}, size=(8, 8))
    make_image_folder(tmp_path / "val", classes={"a": 1, "b": 1}, size=(8, 8), seed=1)
    _flat(tmp_path / "test", ["0.png", "1.png", "2.png"])
    data = ImageData.from_folder(tmp_path)
    assert [s.label for s in data.splits["test"]] == [None, None, None]
    assert "(unlabeled)" in data.summary()
    assert data.notes == []


def test_folders_beside_train_val_test_are_noted(tmp_path: Path, make_image_folder) -> None:
    """graft organize writes train_valid/ beside train/ and valid/: not read, but said."""
    make_image_folder(tmp_path / "train", classes={"a": 4, "b": 4}, size=(8, 8))
    make_image_folder(tmp_path / "valid", classes={"a": 1, "b": 1}, size=(8, 8), seed=1)
    make_image_folder(tmp_path / "train_valid", classes={"a": 5, "b": 5}, size=(8, 8))
    make_image_folder(tmp_path / "validation", classes={"a": 1}, size=(8, 8), seed=2)  # valid/ wins
    (tmp_path / ".cache").mkdir()  # hidden: not mentioned
    data = ImageData.from_folder(tmp_path)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 8, "val": 2}
    assert data.notes == ["not read, beside train/ and valid/: train_valid/, validation/"]


def test_val_class_not_in_train_is_an_error(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "train", classes={"a": 2, "b": 2}, size=(8, 8))
    make_image_folder(tmp_path / "val", classes={"a": 1, "wasp": 1}, size=(8, 8))
    with pytest.raises(GraftError, match="wasp"):
        ImageData.from_folder(tmp_path)


# --- layout "csv" --------------------------------------------------------------------------------


def _flat(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(folder / name)


def test_csv_ids_with_and_without_extension(tmp_path: Path) -> None:
    _flat(tmp_path / "train", [f"{i}.png" for i in range(10)])
    _csv(
        tmp_path / "labels.csv",
        "id,label\n" + "".join(f"{i},{'cat' if i < 5 else 'dog'}\n" for i in range(10)),
    )
    _csv(
        tmp_path / "ext.csv",
        "file,kind\n" + "".join(f"{i}.png,{'cat' if i < 5 else 'dog'}\n" for i in range(10)),
    )
    plain = ImageData.from_folder(tmp_path, labels="labels.csv")
    ext = ImageData.from_folder(tmp_path, labels=tmp_path / "ext.csv")
    assert plain.layout == "csv" and plain.classes == ["cat", "dog"]
    assert plain.splits == ext.splits
    assert sum(map(len, plain.splits.values())) == 10
    assert plain.splits["val"] and "test" not in plain.splits


def test_csv_rows_without_images_and_duplicates(tmp_path: Path) -> None:
    _flat(tmp_path / "imgs", [f"{i:03d}.jpg" for i in range(8)])
    rows = [f"{i:03d},{'a' if i % 2 else 'b'}" for i in range(20)]  # 12 ids have no image
    rows += ["000,b", "001,b"]  # an exact duplicate, then a conflicting label (first kept)
    _csv(tmp_path / "labels.csv", "ID,Label\n" + "\n".join(rows) + "\n")
    data = ImageData.from_folder(tmp_path, labels="labels.csv", valid_split=0.25)
    assert sum(map(len, data.splits.values())) == 8
    assert any(n.startswith("12 rows of labels.csv have no image") for n in data.notes)
    assert any("duplicate" in n for n in data.notes)
    assert any("different label" in n and "'001'" in n for n in data.notes)
    one = next(s for s in data.splits["train"] + data.splits["val"] if s.path.stem == "001")
    assert data.classes[one.label] == "a"


def test_csv_picks_best_folder_and_unlabeled_test(tmp_path: Path) -> None:
    _flat(tmp_path / "train", [f"t{i}.jpg" for i in range(6)])
    _flat(tmp_path / "test", [f"u{i}.jpg" for i in range(4)])
    _flat(tmp_path / "other", ["t0.jpg", "t5.jpg"])
    _csv(tmp_path / "labels.csv", "id,breed\n" + "".join(f"t{i},{'x' if i < 3 else 'y'}\n" for i in range(6)))
    data = ImageData.from_folder(tmp_path, labels="labels.csv", valid_split=0.34)
    assert {s.path.parent.name for s in data.splits["train"]} == {"train"}
    assert [s.label for s in data.splits["test"]] == [None] * 4
    forced = ImageData.from_folder(tmp_path, labels="labels.csv", images="other")
    assert [s.path for s in forced.splits["train"]] == [
        tmp_path / "other" / "t0.jpg",
        tmp_path / "other" / "t5.jpg",
    ]
    assert forced.splits["val"] == []  # each class has a single image, so val stays empty
    with pytest.raises(GraftError, match="inside the dataset folder"):
        ImageData.from_folder(tmp_path / "other", labels=tmp_path / "labels.csv", images=tmp_path / "train")


def test_csv_test_split_fraction_replaces_unlabeled_test(tmp_path: Path) -> None:
    _flat(tmp_path / "train", [f"t{i}.jpg" for i in range(10)])
    _flat(tmp_path / "test", ["u.jpg"])
    _csv(tmp_path / "l.csv", "id,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)))
    data = ImageData.from_folder(tmp_path, labels="l.csv", valid_split=0.2, test_split=0.2)
    assert len(data.splits["test"]) == 2 and all(s.label is not None for s in data.splits["test"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("id\nt0\n", "id and a label column"),
        ("", "empty"),
        ("id,label\nnope,x\n", "no id in l.csv matches"),
        ("t0,a\nt1,b\n", "header"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, match: str) -> None:
    _flat(tmp_path / "train", ["t0.jpg", "t1.jpg"])
    _csv(tmp_path / "l.csv", text)
    with pytest.raises(GraftError, match=match):
        ImageData.from_folder(tmp_path, labels="l.csv")


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GraftError, match="not found"):
        ImageData.from_folder(tmp_path, labels="missing.csv")


# --- bad files and errors ------------------------------------------------------------------------


def test_undecodable_file_skipped_with_warning(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes={"a": 4, "b": 4}, size=(8, 8))
    bad = tmp_path / "a" / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    (tmp_path / "a" / "readme.txt").write_text("ignored")
    (tmp_path / "b" / ".hidden.png").write_bytes(b"ignored too")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.warns(UserWarning) as record:
        data = ImageData.from_folder(tmp_path)
    assert [str(w.message) for w in record] == [f"skipping {bad}: not a recognised image format"]
    assert data.skipped == [(bad, "not a recognised image format")]
    assert sum(map(len, data.splits.values())) == 8
    assert "skipped: 1" in data.summary()


def test_clean_folder_emits_no_warnings(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, size=(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageData.from_folder(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"valid_split": 1.0}, "valid_split"),
        ({"valid_split": -0.1}, "valid_split"),
        ({"test_split": 1.5}, "test_split"),
        ({"valid_split": 0.6, "test_split": 0.4}, "below 1"),
        ({"valid_split": float("nan")}, "valid_split"),
    ],
)
def test_bad_fractions(tmp_path: Path, make_image_folder, kwargs: dict, match: str) -> None:
    make_image_folder(tmp_path, size=(8, 8))
    with pytest.raises(GraftError, match=match):
        ImageData.from_folder(tmp_path, **kwargs)


def test_root_errors(tmp_path: Path, make_image_folder) -> None:
    with pytest.raises(GraftError, match="does not exist"):
        ImageData.from_folder(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(GraftError, match="not a folder"):
        ImageData.from_folder(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraftError, match="no images"):
        ImageData.from_folder(tmp_path / "empty")
    make_image_folder(tmp_path / "single", classes={"only": 3}, size=(8, 8))
    with pytest.raises(GraftError, match="only one class"):
        ImageData.from_folder(tmp_path / "single")
    _flat(tmp_path / "flat", ["a.png", "b.png"])
    with pytest.raises(GraftError, match="no class folders"):
        ImageData.from_folder(tmp_path / "flat")


# --- records, summary, class folders -------------------------------------------------------------


def test_record_round_trip_on_a_copy(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "orig" / "train", classes={"a": 5, "b": 5}, size=(8, 8))
    _flat(tmp_path / "orig" / "test", ["x.png"])
    data = ImageData.from_folder(tmp_path / "orig")
    record = json.loads(json.dumps(data.to_record()))
    assert record["root"] == str(tmp_path / "orig") and record["splits"]["test"] == [["test/x.png", None]]
    assert record["splits"]["train"][0][0].startswith("train/")
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    again = ImageData.from_record(tmp_path / "copy", record)
    assert again.classes == data.classes and again.layout == data.layout
    for name, samples in data.splits.items():
        moved = [(s.path.relative_to(tmp_path / "orig"), s.label) for s in samples]
        assert moved == [(s.path.relative_to(tmp_path / "copy"), s.label) for s in again.splits[name]]


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "a/../../x.png", "C:/x.png", ""])
def test_record_path_escape_refused(tmp_path: Path, bad: str) -> None:
    record = {"layout": "split", "classes": ["a"], "splits": {"train": [[bad, "a"]], "val": []}}
    with pytest.raises(GraftError, match="relative path inside"):
        ImageData.from_record(tmp_path, record)


def test_record_missing_files(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, size=(8, 8))
    record = ImageData.from_folder(tmp_path).to_record()
    (tmp_path / "cat" / "cat_0.png").unlink()
    (tmp_path / "dog" / "dog_0.png").unlink()
    with pytest.raises(GraftError, match=r"^2 files .* missing .* e\.g\. cat/cat_0\.png"):
        ImageData.from_record(tmp_path, record)


def test_summary_table(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes={"alpha": 5, "b": 5}, size=(8, 8))
    lines = ImageData.from_folder(tmp_path).summary().splitlines()
    assert lines[1].split() == ["class", "train", "val"]
    assert lines[2].split() == ["alpha", "4", "1"]
    assert lines[4].split() == ["total", "8", "2"]
    assert lines[2].index("4") == lines[3].index("4")  # aligned columns


def test_summary_many_classes(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes={f"c{i:02d}": 1 + (i == 7) for i in range(35)}, size=(4, 4))
    text = ImageData.from_folder(tmp_path).summary()
    assert "... 5 more classes" in text
    assert text.splitlines()[2].startswith("c07")  # the largest class first


def test_load_class_folder(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "new", classes={"dog": 2, "cat": 3}, size=(8, 8))
    samples, skipped = load_class_folder(tmp_path / "new", ["bird", "cat", "dog"])
    assert skipped == [] and len(samples) == 5
    assert sorted({s.label for s in samples}) == [1, 2]
    make_image_folder(tmp_path / "new", classes={"wolf": 1}, size=(8, 8))
    with pytest.raises(GraftError, match=r"'wolf'.*bird, cat, dog"):
        load_class_folder(tmp_path / "new", ["bird", "cat", "dog"])
    _flat(tmp_path / "flat", ["a.png"])
    with pytest.raises(GraftError, match="has no class folders"):
        load_class_folder(tmp_path / "flat", ["cat"])


def test_one_small_class_is_counted_in_the_singular(tmp_path: Path, make_image_folder) -> None:
    """Issue 18, item 6: "1 classes have too few images"."""
    make_image_folder(tmp_path, classes={"big": 10, "other": 10, "one": 1}, size=(8, 8))
    with pytest.warns(UserWarning):  # 'one' has no val image, and is warned about
        data = ImageData.from_folder(tmp_path, valid_split=0.3)
    small = [n for n in data.notes if "too few images for the val split" in n]
    assert len(small) == 1 and small[0].startswith("1 class has too few images for the val split"), small
