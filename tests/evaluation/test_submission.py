"""Submission CSVs (write_submission) with and without a sample submission, on made-up probabilities."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from graft.evaluation.submission import read_sample_submission, write_submission
from graft.infrastructure.errors import GraftError
from tests.conftest import shared_dataset

CLASSES = ["ant", "bee", "cat"]
PATHS = [Path("test/b.jpg"), Path("test/a.jpg"), Path("test/c.jpg")]
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]], dtype=np.float32)


def read(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def sample(path: Path, header: str, ids: list[str]) -> Path:
    path.write_text(
        "\n".join([header, *(f"{i}," + ",".join(["0.1"] * header.count(",")) for i in ids)]) + "\n"
    )
    return path


def quiet(**kw):
    """write_submission, failing the test on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return write_submission(**kw)


def test_without_a_sample_columns_are_the_model_classes_and_rows_the_images(tmp_path: Path) -> None:
    out = tmp_path / "sub.csv"
    result = quiet(path=out, paths=PATHS, probs=PROBS, classes=CLASSES)
    assert read(out) == [
        ["id", "ant", "bee", "cat"],
        ["b", "0.7", "0.2", "0.1"],
        ["a", "0.1", "0.8", "0.1"],
        ["c", "0.25", "0.25", "0.5"],
    ]
    assert (result.format, result.rows, result.missing, result.extra, result.notes) == ("probs", 3, 0, 0, [])
    quiet(path=out, paths=PATHS, probs=PROBS, classes=CLASSES, format="label")
    assert read(out) == [["id", "label"], ["b", "ant"], ["a", "bee"], ["c", "cat"]]


def test_a_sample_fixes_columns_and_row_order(tmp_path: Path) -> None:
    """dog_tiny's case: the sample lists more classes than the model knows, in its own order."""
    s = sample(tmp_path / "sample.csv", "id,cat,dingo,bee,ant", ["a", "c", "b"])
    out = tmp_path / "sub.csv"
    result = quiet(path=out, paths=PATHS, probs=PROBS, classes=CLASSES, sample=s)
    assert read(out) == [
        ["id", "cat", "dingo", "bee", "ant"],
        ["a", "0.1", "0", "0.8", "0.1"],
        ["c", "0.5", "0", "0.25", "0.25"],
        ["b", "0.1", "0", "0.2", "0.7"],
    ]
    assert result.format == "probs" and result.columns == ["id", "cat", "dingo", "bee", "ant"]
    assert result.notes == ["1 column of sample.csv is not a class of the model: probability 0 ('dingo')"]


def test_a_model_class_missing_from_the_sample_is_an_error(tmp_path: Path) -> None:
    s = sample(tmp_path / "sample.csv", "id,ant,bee", ["a", "b", "c"])
    out = tmp_path / "sub.csv"
    out.write_text("before")
    with pytest.raises(GraftError, match=r"^1 model class is not a column of sample.csv \('cat'\)$"):
        write_submission(out, PATHS, PROBS, CLASSES, sample=s)
    assert out.read_text() == "before"


def test_a_two_column_sample_gives_a_label_submission_with_its_names(tmp_path: Path) -> None:
    """CIFAR-10's sampleSubmission.csv: id,label."""
    s = sample(tmp_path / "sampleSubmission.csv", "ID,Category", ["c", "a", "b"])
    out = tmp_path / "sub.csv"
    result = quiet(path=out, paths=PATHS, probs=PROBS, classes=CLASSES, sample=s)
    assert result.format == "label"
    assert read(out) == [["ID", "Category"], ["c", "cat"], ["a", "bee"], ["b", "ant"]]
    with pytest.raises(
        GraftError, match=r"3 model classes are not a column .*; for an id,label sample use the label"
    ):
        write_submission(out, PATHS, PROBS, CLASSES, sample=s, format="probs")
    wide = sample(tmp_path / "wide.csv", "id,ant,bee,cat", ["a", "b", "c"])
    with pytest.raises(GraftError, match=r"a label submission has two columns .* but wide.csv has 4"):
        write_submission(out, PATHS, PROBS, CLASSES, sample=wide, format="label")


def test_ids_the_sample_lacks_and_ids_nobody_predicted_are_warned_about(tmp_path: Path) -> None:
    s = sample(tmp_path / "sample.csv", "id,ant,bee,cat", ["x", "c", "a", "y"])
    out = tmp_path / "sub.csv"
    with pytest.warns(UserWarning) as caught:
        result = write_submission(out, PATHS, PROBS, CLASSES, sample=s)
    assert [str(w.message) for w in caught] == [
        "2 ids of sample.csv not predicted ('x', 'y'): the submission has rows for the 3 predicted images "
        "only",
        "1 predicted image has no id in sample.csv ('b'): their rows come after the sample's",
    ]
    assert [row[0] for row in read(out)] == ["id", "c", "a", "b"]
    assert (result.rows, result.missing, result.extra) == (3, 2, 1)


def test_a_sample_with_none_of_the_ids(tmp_path: Path) -> None:
    s = sample(tmp_path / "sample.csv", "id,ant,bee,cat", ["p", "q"])
    with pytest.warns(UserWarning) as caught:
        result = write_submission(tmp_path / "sub.csv", PATHS, PROBS, CLASSES, sample=s)
    assert str(caught[0].message).startswith("2 ids of sample.csv not predicted ('p', 'q')")
    none = "none of the 3 predicted images has an id in sample.csv ('b', 'a', 'c'): rows in image order"
    assert str(caught[1].message) == none
    assert [row[0] for row in read(tmp_path / "sub.csv")][1:] == ["b", "a", "c"] and result.extra == 3


def test_sample_ids_with_a_file_suffix_keep_it(tmp_path: Path) -> None:
    s = sample(tmp_path / "sample.csv", "file,species", ["a.jpg", "b.jpg", "c.jpg"])
    quiet(path=tmp_path / "sub.csv", paths=PATHS, probs=PROBS, classes=CLASSES, sample=s)
    assert read(tmp_path / "sub.csv")[1:] == [["a.jpg", "bee"], ["b.jpg", "ant"], ["c.jpg", "cat"]]


def test_two_images_with_one_id_are_an_error(tmp_path: Path) -> None:
    paths = [Path("one/a.jpg"), Path("two/a.png"), Path("c.jpg")]
    with pytest.raises(GraftError, match=r"two images have the id 'a' \(one/a.jpg, two/a.png\)"):
        write_submission(tmp_path / "sub.csv", paths, PROBS, CLASSES)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("id\n1\n", "needs an id column and at least one other"),
        ("id,a,a\n1,0,0\n", "two columns named 'a'"),
        ("id,,b\n1,0,0\n", "a column without a name (column 2)"),
        ("id,label\n1,x\n1,y\n", "lists the id '1' twice"),
        ("id,label\n,x\n", "a row without an id (row 2)"),
    ],
)
def test_bad_sample_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(GraftError, match=re.escape(message)):
        read_sample_submission(tmp_path / "s.csv")


def test_sample_file_reading(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("\ufeffid , label\r\n7,x\r\n\r\n8,y\r\n", encoding="utf-8")  # Excel
    read_back = read_sample_submission(tmp_path / "s.csv")
    assert (read_back.header, read_back.ids) == (["id", "label"], ["7", "8"])
    with pytest.raises(GraftError, match="not found"):
        read_sample_submission(tmp_path / "missing.csv")
    with pytest.raises(GraftError, match="is a folder"):
        read_sample_submission(tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(GraftError, match=r"probabilities of shape \(3, 3\) do not fit 2 images x 3 classes"):
        write_submission(tmp_path / "s.csv", PATHS[:2], PROBS, CLASSES)
    with pytest.raises(GraftError, match="submission format must be one of probs, label"):
        write_submission(tmp_path / "s.csv", PATHS, PROBS, CLASSES, format="top1")


def test_dog_tiny_sample_submission(tmp_path: Path) -> None:
    """The real sample: 120 breeds in Kaggle's order (the data's 110 among them), 300 ids. Its ids
    are not dog_tiny's test images (the first 300 of Kaggle's sample), so both warnings fire."""
    data = shared_dataset("dog_tiny")
    with open(data / "labels.csv", newline="") as f:
        breeds = sorted({row["breed"] for row in csv.DictReader(f)})
    tests = sorted((data / "test").iterdir())
    probs = np.full((len(tests), len(breeds)), 1 / len(breeds))
    with pytest.warns(UserWarning) as caught:
        result = write_submission(
            tmp_path / "sub.csv", tests, probs, breeds, sample=data / "sample_submission.csv"
        )
    table = read(tmp_path / "sub.csv")
    with open(data / "sample_submission.csv", newline="") as f:
        header = next(csv.reader(f))
    assert table[0] == header and len(header) == 121 and result.format == "probs"
    assert len(table) == 301 and [r[0] for r in table[1:]] == [p.stem for p in tests]
    zero = [j for j, c in enumerate(header) if j and c not in breeds]
    assert len(zero) == 10 and all(r[j] == "0" for r in table[1:] for j in zero)
    assert result.notes[0].startswith("10 columns of sample_submission.csv are not classes of the model")
    assert (result.missing, result.extra) == (300, 300) and len(caught) == 2


def test_multi_label_submission_is_id_labels_space_separated(tmp_path):
    from graft.inference.decision import Decision

    decision = Decision(multi_label=True, thresholds=(0.5, 0.15, 0.3))
    out = tmp_path / "sub.csv"
    result = quiet(path=out, paths=PATHS, probs=PROBS, classes=CLASSES, decision=decision)
    assert result.format == "labels" and result.columns == ["id", "labels"]
    assert read(out) == [["id", "labels"], ["b", "ant bee"], ["a", "bee"], ["c", "cat bee"]]
    none = np.array([[0.1, 0.1, 0.1], [0.9, 0.9, 0.9], [0.1, 0.1, 0.1]])
    quiet(path=out, paths=PATHS, probs=none, classes=CLASSES, decision=decision)
    assert out.read_text() == "id,labels\nb,\na,ant bee cat\nc,\n"  # empty: none of the classes
    # Probabilities stay available; a two-column sample (Planet's image_name,tags) shapes it.
    quiet(path=out, paths=PATHS, probs=PROBS, classes=CLASSES, decision=decision, format="probs")
    assert read(out)[0] == ["id", *CLASSES]
    planet = sample(tmp_path / "s.csv", "image_name,tags", ["a", "b", "c"])
    result = quiet(path=out, paths=PATHS, probs=PROBS, classes=CLASSES, decision=decision, sample=planet)
    assert result.format == "labels" and read(out) == [
        ["image_name", "tags"],
        ["a", "bee"],
        ["b", "ant bee"],
        ["c", "cat bee"],
    ]


def test_label_formats_must_fit_the_model(tmp_path):
    from graft.inference.decision import Decision

    out = tmp_path / "sub.csv"
    with pytest.raises(GraftError, match=r"multi-label model answers any number.*labels or probs"):
        write_submission(out, PATHS, PROBS, CLASSES, format="label", decision=Decision(multi_label=True))
    with pytest.raises(GraftError, match="labels format is for multi-label models"):
        write_submission(out, PATHS, PROBS, CLASSES, format="labels")
    assert not out.exists()


def test_a_binary_threshold_decides_the_label_column(tmp_path):
    from graft.inference.decision import Decision

    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    out = tmp_path / "sub.csv"
    quiet(path=out, paths=PATHS, probs=probs, classes=["no", "yes"], format="label")
    assert [r[1] for r in read(out)[1:]] == ["no", "no", "yes"]
    decision = Decision(thresholds=(0.3,))  # "yes" from 0.3 on
    quiet(path=out, paths=PATHS, probs=probs, classes=["no", "yes"], format="label", decision=decision)
    assert [r[1] for r in read(out)[1:]] == ["no", "yes", "yes"]
