"""``graft doctor --apply`` / ``--undo``: files are only renamed, every move is logged before it
happens, a kill -9 at any moment loses nothing, and undo puts the folder back byte for byte."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data.dataset import ImageData
from graft.data.relocate import (
    ACTIONS,
    QUARANTINE_DIR,
    Move,
    apply_actions,
    read_actions,
    undo_actions,
)
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import is_temp_file

HEADER = "path,issue,score,suggested_action,suggested_label,label,split,other,detail"  # doctor.csv's
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _image(path: Path, seed: int, size: tuple[int, int] = (8, 6)) -> None:
    """A small image of random noise; JPEG or PNG by the suffix."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path)


def _dataset(root: Path) -> Path:
    """train/{cat,dog}/ and val/{cat,dog}/, JPEG and PNG; ``shared.png`` is in both train classes."""
    seed = 0
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                seed += 1
                _image(root / split / cls / f"{cls}_{i}{'.jpg' if i % 2 else '.png'}", seed)
    _image(root / "train" / "cat" / "shared.png", 100)
    _image(root / "train" / "dog" / "shared.png", 101)
    return root


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A doctor.csv with rows of (path, suggested_action, suggested_label)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    out.write(HEADER + "\n")
    for rel, action, label in rows:
        writer.writerow([rel, "outlier", "0.5", action, label, "", "", "", "why"])
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def _snapshot(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """(relative path -> bytes for every file, every folder) under ``root``."""
    files, folders = {}, set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        folders.update((here / d).relative_to(root).as_posix() for d in dirnames)
        for name in filenames:
            files[(here / name).relative_to(root).as_posix()] = (here / name).read_bytes()
    return files, folders


def _contents(root: Path) -> Counter[str]:
    """The multiset of the sha256 of every file under ``root``."""
    return Counter(hashlib.sha256(data).hexdigest() for data in _snapshot(root)[0].values())


def test_apply_then_undo_restores_the_folder_byte_for_byte(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    before = _snapshot(root)
    doctor = _csv(
        tmp_path / "doctor.csv",
        [
            ("train/cat/shared.png", "relabel", "dog"),  # train/dog/shared.png exists: shared~1.png
            ("train/cat/cat_1.jpg", "relabel", "bird"),  # a new class folder
            ("train/dog/dog_0.png", "quarantine", ""),
            ("val/cat/cat_0.png", "quarantine", ""),
            ("val/dog/dog_0.png", "keep", ""),
            ("val/dog/dog_1.jpg", "review", ""),
            ("train/dog/dog_0.png", "QUARANTINE", ""),  # a repeat, the action in capitals
            ("train/dog/dog_1.jpg", "", ""),
        ],
    )
    result = apply_actions(doctor, root)
    moved = {a.relative_to(root).as_posix(): b.relative_to(root).as_posix() for a, b in result.moved}
    assert moved == {
        "train/cat/shared.png": "train/dog/shared~1.png",
        "train/cat/cat_1.jpg": "train/bird/cat_1.jpg",
        "train/dog/dog_0.png": f"{QUARANTINE_DIR}/train/dog/dog_0.png",
        "val/cat/cat_0.png": f"{QUARANTINE_DIR}/val/cat/cat_0.png",
    }
    assert result.left == 4
    assert result.log.parent == tmp_path and result.log.name.startswith("doctor-undo-")
    assert result.log.suffix == ".jsonl"
    files = _snapshot(root)[0]
    assert files["train/dog/shared~1.png"] == before[0]["train/cat/shared.png"]
    assert files["train/dog/shared.png"] == before[0]["train/dog/shared.png"]
    assert sorted(files.values()) == sorted(before[0].values())  # every file once, nothing new

    lines = [json.loads(line) for line in result.log.read_text().splitlines()]
    assert lines[0] == {"graft": "doctor-undo", "version": 1, "root": str(root)}
    assert {"from": "train/cat/shared.png", "to": "train/dog/shared~1.png"} in lines
    mkdirs = [line["mkdir"] for line in lines if "mkdir" in line]
    assert mkdirs == ["train/bird", QUARANTINE_DIR, f"{QUARANTINE_DIR}/train", f"{QUARANTINE_DIR}/train/dog",
                      f"{QUARANTINE_DIR}/val", f"{QUARANTINE_DIR}/val/cat"]  # fmt: skip

    undone = undo_actions(result.log)
    assert undone.problems == []
    assert len(undone.restored) == 4
    assert _snapshot(root) == before  # the same files, bytes and folders: none left behind
    assert not result.log.exists()
    assert result.log.with_name(result.log.name + ".undone").is_file()


def test_a_log_is_never_overwritten(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    doctor = _csv(tmp_path / "doctor.csv", [("val/cat/cat_0.png", "quarantine", "")])
    log = tmp_path / "undo.jsonl"
    log.write_text("precious\n")
    result = apply_actions(doctor, root, log=log)
    assert result.log == tmp_path / "undo-1.jsonl"
    assert log.read_text() == "precious\n"
    assert undo_actions(result.log).problems == []


def test_read_actions_returns_only_the_moves(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    doctor = _csv(
        tmp_path / "doctor.csv",
        [("val/cat/cat_0.png", "review", ""), ("./val/dog/dog_1.jpg", "relabel", "cat")],
    )
    assert read_actions(doctor, root) == [
        Move(root / "val/dog/dog_1.jpg", root / "val/cat/dog_1.jpg", "relabel")
    ]
    assert ACTIONS == ("keep", "review", "relabel", "quarantine")


def _flat(root: Path) -> str:
    """A flat folder labelled by a CSV beside it, inside the dataset; returns a file's path."""
    _image(root / "images" / "a1.png", 7)
    (root / "labels.csv").write_text("id,label\na1,cat\n")
    return "images/a1.png"


def _loose(root: Path) -> str:
    _image(root / "loose.png", 8)
    return "loose.png"


def _in_split(root: Path) -> str:
    _image(root / "train" / "stray.png", 9)
    return "train/stray.png"


def _quarantined(root: Path) -> str:
    _image(root / QUARANTINE_DIR / "train" / "cat" / "old.png", 10)
    return f"{QUARANTINE_DIR}/train/cat/old.png"


def _lone(root: Path) -> str:
    """A flat folder beside train/ and val/ whose labels CSV is elsewhere."""
    _image(root / "images" / "b1.png", 12)
    return "images/b1.png"


def _outside(root: Path) -> str:
    _image(root.parent / "outside.png", 11)
    return "../outside.png"


# (what the row holds: path, or a function making the file and giving its path; action; label;
# what the error says)
BAD_ROWS = {
    "unknown action": ("val/cat/cat_0.png", "delete", "", "unknown action 'delete'"),
    "missing file": ("val/cat/nope.png", "quarantine", "", "val/cat/nope.png does not exist"),
    "a folder": ("val/cat", "quarantine", "", "val/cat is not a file"),
    "empty path": ("", "quarantine", "", "the path is empty"),
    "outside root": (_outside, "quarantine", "", "../outside.png is not inside the dataset folder"),
    "quarantined already": (_quarantined, "quarantine", "", f"is in {QUARANTINE_DIR}/ already"),
    "no label": ("val/cat/cat_0.png", "relabel", "", "needs a suggested_label"),
    "hidden label": ("val/cat/cat_0.png", "relabel", ".dog", "hidden folder"),
    "label with a slash": ("val/cat/cat_0.png", "relabel", "a/b", "path separator"),
    "quarantine as label": ("val/cat/cat_0.png", "relabel", QUARANTINE_DIR, "graft skips that folder"),
    "its own class": ("val/cat/cat_0.png", "relabel", "cat", "in the class folder cat/ already"),
    "directly in root": (_loose, "relabel", "dog", "directly in the dataset folder"),
    "in a split folder": (_in_split, "relabel", "dog", "train/ is a split folder"),
    "in a labelled flat folder": (_flat, "relabel", "dog", "flat folder of images labelled by labels.csv"),
    "in a lone flat folder": (_lone, "relabel", "dog", "images/ is the only folder of images beside it"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_an_error_and_nothing_moves(tmp_path: Path, case: str) -> None:
    root = _dataset(tmp_path / "data")
    given, action, label, message = BAD_ROWS[case]
    rel = given(root) if callable(given) else given
    before = _snapshot(root)
    doctor = _csv(tmp_path / "doctor.csv", [("val/dog/dog_0.png", "quarantine", ""), (rel, action, label)])
    with pytest.raises(GraftError, match=r"doctor\.csv row 3: ") as caught:
        apply_actions(doctor, root)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    if action == "relabel" and callable(given):
        assert "relabel it in its labels CSV; doctor only moves files between class folders" in str(
            caught.value
        )
    assert _snapshot(root) == before
    assert not list(tmp_path.glob("*.jsonl"))  # no log either


def test_a_row_that_leaves_a_file_does_not_stop_another_row_moving_it(tmp_path: Path) -> None:
    """doctor.csv lists a file once per finding: a ``review`` row beside a ``quarantine`` row."""
    root = _dataset(tmp_path / "data")
    doctor = _csv(
        tmp_path / "doctor.csv",
        [("val/cat/cat_0.png", "review", ""), ("val/cat/cat_0.png", "quarantine", "")],
    )
    done = apply_actions(doctor, root)
    assert [t.relative_to(root).as_posix() for _, t in done.moved] == ["_quarantine/val/cat/cat_0.png"]
    assert done.left == 1


def test_the_same_file_with_two_actions_is_an_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    before = _snapshot(root)
    doctor = _csv(
        tmp_path / "doctor.csv",
        [("val/cat/cat_0.png", "quarantine", ""), ("val/cat/./cat_0.png", "relabel", "dog")],
    )
    with pytest.raises(GraftError, match=r"row 3: .* is also on row 2, with another action"):
        apply_actions(doctor, root)
    doctor = _csv(
        tmp_path / "doctor.csv",
        [("val/cat/cat_0.png", "relabel", "dog"), ("val/cat/cat_0.png", "relabel", "bird")],
    )
    with pytest.raises(GraftError, match="relabel to 'dog', not relabel to 'bird'"):
        apply_actions(doctor, root)
    assert _snapshot(root) == before


def test_a_target_under_a_file_is_an_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    (root / QUARANTINE_DIR).write_bytes(b"a file in the way")
    before = _snapshot(root)
    rows = [("val/dog/dog_0.png", "relabel", "cat"), ("val/cat/cat_0.png", "quarantine", "")]
    with pytest.raises(GraftError, match=f"cannot move val/cat/cat_0.png: {QUARANTINE_DIR} is a file"):
        apply_actions(_csv(tmp_path / "doctor.csv", rows), root)
    assert _snapshot(root) == before
    assert not list(tmp_path.glob("*.jsonl"))


def test_a_move_to_another_file_system_is_an_error(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev):
        pytest.skip("needs /dev/shm on another file system than the temporary folder")
    root = _dataset(tmp_path / "data")
    elsewhere = Path(tempfile.mkdtemp(dir=shm))
    try:
        _image(elsewhere / "bird.png", 3)
        (root / "train" / "bird").symlink_to(elsewhere)  # a class folder on another file system
        before = _snapshot(root)
        doctor = _csv(tmp_path / "doctor.csv", [("train/bird/bird.png", "relabel", "cat")])
        with pytest.raises(GraftError, match="on another file system; doctor only renames files"):
            apply_actions(doctor, root)
        assert _snapshot(root) == before
        assert not list(tmp_path.glob("*.jsonl"))
    finally:
        shutil.rmtree(elsewhere)


def test_a_csv_without_the_columns_is_an_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    (tmp_path / "doctor.csv").write_text("path,action\nval/cat/cat_0.png,quarantine\n")
    with pytest.raises(GraftError, match="has no suggested_action, suggested_label column"):
        apply_actions(tmp_path / "doctor.csv", root)


def test_relabelling_in_a_split_layout_and_into_a_new_class(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i, cls in enumerate(("cat", "dog", "cat", "dog")):
        _image(root / cls / f"{cls}{i}.png", i)
    before = _snapshot(root)
    doctor = _csv(
        tmp_path / "doctor.csv", [("cat/cat0.png", "relabel", "dog"), ("dog/dog1.png", "relabel", "fox")]
    )
    result = apply_actions(doctor, root)
    assert [b for _, b in result.moved] == [root / "dog" / "cat0.png", root / "fox" / "dog1.png"]
    assert undo_actions(result.log).problems == []
    assert _snapshot(root) == before
    doctor = _csv(tmp_path / "doctor.csv", [("cat/cat0.png", "relabel", "train")])
    with pytest.raises(GraftError, match="reads as a split"):
        apply_actions(doctor, root)


# A kill -9 at any moment: the child moves ~2,000 files; it is killed once ~20 moves are logged.
_CHILD = (
    "import sys; from graft.data.relocate import apply_actions; "
    "apply_actions(sys.argv[1], sys.argv[2], log=sys.argv[3])"
)


def test_kill_9_mid_apply_loses_nothing_and_undo_restores_all(tmp_path: Path) -> None:
    root, rows = tmp_path / "data", []
    for i in range(1000):
        for cls, other in (("cat", "dog"), ("dog", "cat")):
            name = f"img{i}{'.png' if i % 2 else '.jpg'}"  # the same names in both classes: clashes
            _image(root / "train" / cls / name, i * 2 + (cls == "dog"), size=(4, 4))
            rows.append((f"train/{cls}/{name}", "relabel" if i % 3 else "quarantine", other))
    rows = [(rel, action, label if action == "relabel" else "") for rel, action, label in rows]
    before, contents = _snapshot(root), _contents(root)
    doctor, log = _csv(tmp_path / "doctor.csv", rows), tmp_path / "undo.jsonl"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(doctor), str(root), str(log)], env=env)
    deadline = time.monotonic() + 120
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if log.exists() and log.read_bytes().count(b'"from"') >= 20:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        if child.poll() is None and time.monotonic() >= deadline:
            child.kill()
    code = child.wait()
    assert code in (0, -signal.SIGKILL), code
    logged = log.read_bytes().count(b'"from"')
    assert logged >= 20
    # Every file is in exactly one place, with no temporary file and nothing new.
    assert _contents(root) == contents
    assert not [p for p in root.rglob("*") if is_temp_file(p.name)]
    if code == -signal.SIGKILL:
        assert logged < len(rows)  # it really stopped midway
    undone = undo_actions(log)
    assert undone.problems == []
    assert len(undone.restored) in (logged, logged - 1)  # the last logged move may not have happened
    assert _snapshot(root) == before


def test_undo_skips_a_move_that_never_happened(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    before = _snapshot(root)
    log = tmp_path / "undo.jsonl"
    lines = [
        {"graft": "doctor-undo", "version": 1, "root": str(root)},
        {"mkdir": QUARANTINE_DIR},
        {"from": "val/cat/cat_0.png", "to": f"{QUARANTINE_DIR}/cat_0.png"},
    ]
    # A kill -9 after the second move line was half written: that line is ignored.
    log.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"from": "val/d')
    (root / QUARANTINE_DIR).mkdir()
    undone = undo_actions(log)
    assert undone.restored == [] and undone.problems == []
    assert _snapshot(root) == before


def test_undo_leaves_a_lost_file_and_keeps_the_log(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    doctor = _csv(
        tmp_path / "doctor.csv",
        [("val/cat/cat_0.png", "quarantine", ""), ("val/dog/dog_0.png", "quarantine", "")],
    )
    result = apply_actions(doctor, root)
    (root / QUARANTINE_DIR / "val" / "cat" / "cat_0.png").unlink()
    undone = undo_actions(result.log)
    assert [b for _, b in undone.restored] == [root / "val/dog/dog_0.png"]
    assert len(undone.problems) == 1 and "val/cat/cat_0.png" in undone.problems[0]
    assert result.log.exists()  # kept: undo again after a fix
    assert not (root / QUARANTINE_DIR).exists()  # the folders it made, empty now, are gone


def test_undoing_twice_is_an_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    doctor = _csv(tmp_path / "doctor.csv", [("val/cat/cat_0.png", "quarantine", "")])
    result = apply_actions(doctor, root)
    undo_actions(result.log)
    with pytest.raises(GraftError, match="undone already"):
        undo_actions(result.log)
    with pytest.raises(GraftError, match="undone already"):
        undo_actions(result.log.with_name(result.log.name + ".undone"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json\n",
        '{"graft": "something-else", "version": 1, "root": "/"}\n',
        '{"graft": "doctor-undo", "version": 2, "root": "ROOT"}\n',
        '{"graft": "doctor-undo", "version": 1}\n',
        '{"graft": "doctor-undo", "version": 1, "root": "ROOT"}\n{"from": "../x.png", "to": "y.png"}\n',
        '{"graft": "doctor-undo", "version": 1, "root": "ROOT"}\n{"from": "/etc/passwd", "to": "y.png"}\n',
        '{"graft": "doctor-undo", "version": 1, "root": "ROOT"}\n{"rm": "val"}\n',
        '{"graft": "doctor-undo", "version": 1, "root": "ROOT"}\n\n',
    ],
)
def test_a_malformed_log_is_an_error(tmp_path: Path, text: str) -> None:
    root = _dataset(tmp_path / "data")
    before = _snapshot(root)
    log = tmp_path / "undo.jsonl"
    log.write_text(text.replace("ROOT", str(root)))
    with pytest.raises(GraftError):
        undo_actions(log)
    assert log.exists() and _snapshot(root) == before


def test_a_missing_log_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GraftError, match="not found"):
        undo_actions(tmp_path / "nope.jsonl")


def test_quarantined_files_are_not_read_as_a_class_or_as_images(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        for i in range(6):
            _image(root / cls / f"{cls}{i}.png", i + 10 * (cls == "dog"), size=(16, 16))
    doctor = _csv(
        tmp_path / "doctor.csv", [("cat/cat0.png", "quarantine", ""), ("dog/dog1.png", "quarantine", "")]
    )
    apply_actions(doctor, root)
    data = ImageData.from_folder(root, valid_split=0.25)
    assert data.layout == "split" and data.classes == ["cat", "dog"]
    paths = {s.path.name for samples in data.splits.values() for s in samples}
    assert len(paths) == 10 and not {"cat0.png", "dog1.png"} & paths
    assert not [note for note in data.notes if QUARANTINE_DIR in note]
