"""``graft train`` says what the scan left out (issue 18, item 4): warnings on stderr, notes on stdout."""

from __future__ import annotations

import os

from graft.cli.main import main
from tests.cli.test_bad_data import CHEAP
from tests.conftest import make_image_folder, write_image


def test_train_reports_every_drop(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    make_image_folder(data / "train", {"Cat": 3, "cat": 3, "dog": 60}, size=(12, 10), seed=1)
    make_image_folder(data / "val", {"cat": 2, "dog": 2}, size=(12, 10), seed=2)
    (data / "val" / "Cat").mkdir()
    for i in range(2):  # every val image of Cat is undecodable
        (data / "val" / "Cat" / f"junk_{i}.jpg").write_bytes(b"not a jpeg")
    os.symlink("b.png", data / "train" / "dog" / "a.png")
    os.symlink("a.png", data / "train" / "dog" / "b.png")
    (data / "train" / "fox").write_bytes(b"a file named like a class folder")
    write_image(data / "train" / "stray.png", (0, 0, 0), (12, 10))
    monkeypatch.chdir(tmp_path)

    assert main(["train", str(data), "--out", str(tmp_path / "run"), *CHEAP]) == 0

    captured = capsys.readouterr()
    err, out = captured.err.splitlines(), captured.out.splitlines()
    said = {
        "class 'Cat' has no images in val: val scores leave it out "
        "(val/Cat/: 2 image files, all skipped: 2 not an image)",
        "classes are imbalanced: 'dog' has 60 training images, 'Cat' 3 (20:1); "
        "accuracy can look high while small classes are missed: check per-class recall",
        "class names that differ only in case are separate classes: 'Cat' and 'cat'; rename to merge them",
    }
    for text in said:
        assert f"graft: warning: {text}" in err, text
        assert f"note: {text}" in out, text
    dog = data / "train" / "dog"
    loop = f"graft: warning: skipping {dog / 'a.png'}: symlink loop (it points to {dog / 'b.png'}"
    assert any(line.startswith(loop) for line in err)
    for note in (
        "2 symlink loops in the class folders not followed (e.g. train/dog/a.png -> train/dog/b.png)",
        "2 files (1 image) directly in train/, outside the class folders, ignored: fox, stray.png",
    ):
        assert f"note: {note}" in out, note
    assert "Traceback" not in captured.err
