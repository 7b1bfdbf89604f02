"""``graft train`` on a messy folder: every bad file is warned about and counted, the rest trains."""

import json
import os
import shutil

from graft.cli.main import main
from tests.conftest import make_image_folder
from tests.data.test_bad_inputs import FINE, SKIPPED

# The cheapest training the CLI tests use: a linear head on cached features of 32 px inputs.
CHEAP = ["--mode", "features", "--epochs", "1", "--input-size", "32", "--batch-size", "8", "--no-augment",
         "--workers", "0", "--no-report"]  # fmt: skip


def test_train_on_a_messy_folder(tmp_path, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "data", {"cat": 6, "dog": 6}, size=(16, 12))
    good = {p for c in ("cat", "dog") for p in (data / c).iterdir()}
    for _, name, write, _ in FINE:  # odd but valid: used, and decoded by the training loader
        write(data / name)
        good.add(data / name)
    bad = []
    for _, name, write, _, _ in SKIPPED:
        write(data / name)
        bad.append(data / name)
    (data / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    shutil.copyfile(data / "cat" / "cat_0.png", data / "cat" / "._cat_0.png")  # AppleDouble-style name
    (data / "dog" / "notes.txt").write_text("todo: more dogs")
    os.symlink(".", data / "dog" / "loop")
    (data / "empty").mkdir()
    monkeypatch.chdir(tmp_path)

    assert main(["train", str(data), "--out", str(tmp_path / "run"), *CHEAP]) == 0

    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if line.startswith("graft: warning: skipping ")]
    for path in bad:
        assert sum(line.startswith(f"graft: warning: skipping {path}: ") for line in warned) == 1, path
    loop = f"graft: warning: skipping {data / 'dog' / 'loop'}: symlink loop"
    assert sum(line.startswith(loop) for line in warned) == 1
    assert len(warned) == len(bad) + 1
    out = captured.out.splitlines()
    assert "skipped: 8 files (2 not an image, 2 truncated, 2 unreadable, 1 empty, 1 too large)" in out
    for note in [
        "note: 1 class folder has no usable images; ignored: empty",
        "note: 2 hidden files or folders in the class folders ignored (e.g. cat/.DS_Store)",
        "note: 1 file without an image extension in the class folders ignored (e.g. dog/notes.txt)",
        "note: 1 symlink loop in the class folders not followed (e.g. dog/loop -> dog)",
    ]:
        assert note in out

    record = json.loads((tmp_path / "run" / "graft.json").read_text())["split"]
    listed = [(rel, label) for rows in record["splits"].values() for rel, label in rows]
    assert sorted(listed) == sorted((p.relative_to(data).as_posix(), p.parent.name) for p in good)


def test_thousands_of_bad_files_do_not_bury_the_log(tmp_path, capsys, monkeypatch):
    from graft.cli.main import MAX_SKIP_WARNINGS

    data = make_image_folder(tmp_path / "data", {"cat": 6, "dog": 6}, size=(16, 12))
    for i in range(MAX_SKIP_WARNINGS + 10):
        (data / "cat" / f"broken_{i:03d}.jpg").write_bytes(b"not a jpeg")
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), *CHEAP]) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if line.startswith("graft: warning: skipping ")]
    assert len(warned) == MAX_SKIP_WARNINGS
    assert captured.err.count("more files skipped, not listed (the summary counts them)") == 1
    assert f"skipped: {MAX_SKIP_WARNINGS + 10} files" in captured.out
