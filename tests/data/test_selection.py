"""Which images evaluate and predict work on."""

import pytest

from graft import GraftError, ImageData
from graft.data.selection import eval_samples, expand_paths
from tests.conftest import make_image_folder, write_image

CLASSES = ["cat", "dog"]


def test_an_unlabeled_test_folder_is_left_to_predict(tmp_path):
    make_image_folder(tmp_path / "train", {"cat": 3, "dog": 3}, seed=1)
    make_image_folder(tmp_path / "val", {"cat": 2, "dog": 1}, seed=2)
    for i in range(2):
        write_image(tmp_path / "test" / f"{i}.png", (9, 9, 9), seed=i)
    data = ImageData.from_folder(tmp_path)
    assert len(data.splits["test"]) == 2
    samples, source = eval_samples(data, None, CLASSES)
    assert source.endswith("(val)") and len(samples) == 3
    samples, source = eval_samples(tmp_path, None, CLASSES, data.to_record())
    assert source.endswith("(val)") and len(samples) == 3
    with pytest.raises(GraftError, match="'test' split is unlabeled"):
        eval_samples(data, "test", CLASSES)


def test_a_labeled_test_split_is_the_default(tmp_path):
    make_image_folder(tmp_path, {"cat": 10, "dog": 10})
    data = ImageData.from_folder(tmp_path, valid_split=0.2, test_split=0.2)
    samples, source = eval_samples(tmp_path, None, CLASSES, data.to_record())
    assert source.endswith("(test)")
    assert sorted(s.path for s in samples) == sorted(s.path for s in data.splits["test"])


def test_labels_follow_the_model_class_order(tmp_path):
    make_image_folder(tmp_path / "eval", {"dog": 2, "cat": 1})
    samples, _ = eval_samples(tmp_path / "eval", None, ["dog", "cat", "cow"])
    assert sorted((s.path.parent.name, s.label) for s in samples) == [("cat", 1), ("dog", 0), ("dog", 0)]


def test_expand_paths_files_and_folders(tmp_path):
    make_image_folder(tmp_path / "imgs", {"a": 2, "b": 1})
    single = write_image(tmp_path / "one.png", (1, 2, 3))
    found = expand_paths([single, tmp_path / "imgs"])
    assert found[0] == single and len(found) == 4
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(GraftError, match="not an image file"):
        expand_paths(tmp_path / "notes.txt")
    with pytest.raises(GraftError, match="no such file"):
        expand_paths(tmp_path / "missing")


def test_split_folders_are_found_in_any_case_as_training_finds_them(tmp_path):
    """Issue 19: training read Train/ and Val/ (the scan matches names in any case), but evaluate
    looked only for lower-case train/ and val/ folders."""
    make_image_folder(tmp_path / "Train", {"a": 3, "b": 3}, size=(8, 8), seed=1)
    make_image_folder(tmp_path / "Valid", {"a": 2, "b": 1}, size=(8, 8), seed=2)
    make_image_folder(tmp_path / "TEST", {"a": 1, "b": 2}, size=(8, 8), seed=3)
    data = ImageData.from_folder(tmp_path)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "val": 3, "test": 3}
    val, where = eval_samples(tmp_path, "val", ["a", "b"])
    assert where == str(tmp_path / "Valid") and [s.label for s in val] == [0, 0, 1]
    test, where = eval_samples(tmp_path, None, ["a", "b"])  # the labeled test split by default
    assert where == str(tmp_path / "TEST") and [s.label for s in test] == [0, 1, 1]
