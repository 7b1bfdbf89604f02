"""graft organize on the command line, and the d2l dog-breeds recipe it serves: organize, train on
train/ + valid/, retrain on train_valid/ without validation, predict test/ into a submission."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from graft.cli.main import main
from tests.data.test_organize import kaggle

QUARTER = ["--valid-split", "0.25"]
# As small as training gets: cached features at 32 px, one epoch of the head.
TINY = ["--input-size", "32", "--mode", "features", "--epochs", "1", "--batch-size", "8", "--no-report",
        "--workers", "0"]  # fmt: skip


def test_organize_prints_a_summary_and_writes_the_record(tmp_path: Path, capsys) -> None:
    data = kaggle(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["organize", str(data), "--labels", "labels.csv", "--out", str(out), *QUARTER]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"organized {data} into {out}  (")
    assert lines[1:8] == [
        "4 classes from a 'csv' dataset",
        "  train        15 images  4 classes",
        "  valid         5 images  3 classes",
        "  train_valid  20 images  4 classes",
        "  test          4 images  unlabeled",
        "placed 44 files: 44 as hard links",
        "skipped: 0 files",
    ]
    assert any(line.startswith("note: ") and "too few images for the val split" in line for line in lines)
    assert lines[-1] == f"wrote {out / 'organize.json'}"
    assert json.loads((out / "organize.json").read_text())["counts"]["valid"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--link", "copy", "--valid-split", "1"], "valid_split must be in [0, 1), got 1.0"),
        (["--test", "nowhere"], "test folder"),
    ],
)
def test_organize_errors_are_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    data = kaggle(tmp_path / "data", test=0)
    code = main(["organize", str(data), "--labels", "labels.csv", "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("graft: error: ") and message in err and "\n" not in err


def test_an_existing_out_needs_overwrite(tmp_path: Path, capsys) -> None:
    data = kaggle(tmp_path / "data", test=0)
    argv = ["organize", str(data), "--labels", "labels.csv", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--link", "symlink"]) == 0
    assert (tmp_path / "out" / "train_valid" / "cat" / "c0000.png").is_symlink()


def test_the_dog_breeds_recipe_end_to_end(tmp_path: Path, capsys) -> None:
    data = kaggle(tmp_path / "data", test=4)
    out, run, final = tmp_path / "out", tmp_path / "run", tmp_path / "final"
    assert main(["organize", str(data), "--labels", "labels.csv", "--out", str(out), *QUARTER]) == 0

    # 1. train on train/, validate on valid/; train_valid/ and the unlabeled test/ are left alone.
    capsys.readouterr()
    assert main(["train", str(out), "--out", str(run), *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"data: {out} (layout: folders, 4 classes)" in printed
    assert "note: not read, beside train/, valid/ and test/: train_valid/" in printed
    split = json.loads((run / "graft.json").read_text())["split"]["splits"]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (15, 5, 4)
    assert all(label is None for _, label in split["test"])

    # 2. the final model: every labeled image, no validation, the last epoch kept.
    assert main(["train", str(out / "train_valid"), "--valid-split", "0", "--out", str(final), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "note: no val split (valid_split 0): training keeps its last epoch" in printed
    assert "report: skipped (no val or labeled test split to show)" not in printed  # --no-report
    meta = json.loads((final / "graft.json").read_text())
    assert len(meta["split"]["splits"]["train"]) == 20 and meta["split"]["splits"]["val"] == []
    assert meta["metrics"]["best_epoch"] == 1 and meta["metrics"]["val_acc"] == ""

    # 3. the submission: one row per test image, a probability column per class.
    sub = tmp_path / "sub.csv"
    assert main(["predict", str(final), str(out / "test"), "--submission", str(sub),
                 "--submission-format", "probs"]) == 0  # fmt: skip
    with open(sub, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "cat", "dog", "fox", "solo"]
    assert [r[0] for r in table[1:]] == ["t000", "t001", "t002", "t003"]
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-4 for r in table[1:])
