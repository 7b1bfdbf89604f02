"""Messy real-world folders (issue 7): each bad input is skipped with a named warning and counted, or
is a one-line GraftError; every good image beside it is still used."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.cli.main import main
from graft.data import ImageData, load_image
from graft.data._duplicates import cross_split_duplicates
from graft.infrastructure.errors import DuplicateImageWarning, GraftError, SkippedFileWarning
from tests.conftest import make_image_folder, write_image

CLASSES = {"cat": 6, "dog": 6}


def _good(root: Path, classes: dict[str, int] = CLASSES, seed: int = 0) -> set[Path]:
    """Six noisy PNGs per class under ``root``; returns their paths."""
    make_image_folder(root, classes=classes, size=(16, 12), seed=seed)
    return {p for c in classes for p in (root / c).iterdir()}


def _used(data: ImageData) -> set[Path]:
    paths = [s.path for samples in data.splits.values() for s in samples]
    assert len(paths) == len(set(paths))  # no image in two splits
    return set(paths)


def _no_warnings(load: Callable[[], ImageData]) -> ImageData:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load()


def _noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    w, h = size
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


# --- files that are skipped ------------------------------------------------------------------------


def _truncated(suffix: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        buf = path.with_name("whole" + suffix)
        _noise((120, 90)).save(buf)
        data = buf.read_bytes()
        buf.unlink()
        path.write_bytes(data[: len(data) * 6 // 10])  # cut inside the pixel data

    return write


def _corrupt_png(path: Path) -> None:
    write_image(path, (90, 90, 90), (16, 12))
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 10] ^= 0xFF  # one flipped bit pattern inside the compressed pixels
    path.write_bytes(bytes(data))


def _corrupt_jpeg(path: Path) -> None:
    """A JPEG whose Huffman table claims more codes than exist (libjpeg: "Bogus Huffman table")."""
    _noise((32, 24)).save(path)
    data = bytearray(path.read_bytes())
    dht = data.index(b"\xff\xc4") + 5  # marker, 2 length bytes, table class/id byte
    data[dht : dht + 16] = b"\xff" * 16  # 16 code-length counts of 255: far over 256 codes
    path.write_bytes(bytes(data))


def _ds_store(path: Path) -> None:
    """The start of a real .DS_Store file (a "Bud1" buddy-allocator header), renamed to .jpg."""
    path.write_bytes(b"\x00\x00\x00\x01Bud1\x00\x00\x10\x00\x00\x00\x08\x00" + b"\x00" * 2000)


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG that claims ``width`` x ``height`` RGB pixels but holds one row: nothing big is allocated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 16))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_crafted_bomb_header_is_a_valid_png_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _png_header(tmp_path / "big.png", 20000, 20000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # guard off: open() reads the header only
    with Image.open(tmp_path / "big.png") as im:  # a wrong IHDR CRC would raise here
        assert (im.format, im.size, im.mode) == ("PNG", (20000, 20000), "RGB")


SKIPPED = [  # (test id, bad file, writer, reason (regex), the kind the summary counts)
    ("corrupt PNG bytes", "cat/bad.png", _corrupt_png,
     r"unreadable image \(SyntaxError: broken PNG file", "unreadable"),
    ("corrupt JPEG bytes", "cat/bad.jpg", _corrupt_jpeg,
     r"unreadable image \(OSError: broken data stream", "unreadable"),
    ("truncated JPEG", "cat/cut.jpg", _truncated(".jpg"),
     r"truncated file \(OSError: image file is truncated \(\d+ bytes not processed\)\)$", "truncated"),
    ("truncated PNG", "dog/cut.png", _truncated(".png"),
     r"truncated file \(OSError: Truncated File Read\)$", "truncated"),
    ("zero-byte file", "dog/empty.jpg", lambda p: p.write_bytes(b""),
     r"empty file \(0 bytes\)$", "empty"),
    ("DS_Store renamed .jpg", "cat/DS_Store.jpg", _ds_store,
     r"not a recognised image format$", "not an image"),
    ("text renamed .png", "dog/readme.png", lambda p: p.write_text("hello\n"),
     r"not a recognised image format$", "not an image"),
    ("20000x20000 PNG", "cat/huge.png", lambda p: _png_header(p, 20000, 20000),
     r"too many pixels \(decompression-bomb guard\): Image size \(400000000 pixels\) exceeds", "too large"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "bad", "write", "reason", "kind"), SKIPPED, ids=[c[0] for c in SKIPPED])
def test_bad_file_is_skipped_with_a_warning(tmp_path, name, bad, write, reason, kind) -> None:
    good = _good(tmp_path)
    write(tmp_path / bad)
    with pytest.warns(SkippedFileWarning) as record:
        data = ImageData.from_folder(tmp_path)
    messages = [str(w.message) for w in record if w.category is SkippedFileWarning]
    assert len(messages) == 1
    assert messages[0].startswith(f"skipping {tmp_path / bad}: ")
    assert re.match(reason, messages[0].removeprefix(f"skipping {tmp_path / bad}: ")), messages[0]
    assert [p for p, _ in data.skipped] == [tmp_path / bad]
    assert data.summary().splitlines()[-1] == f"skipped: 1 file (1 {kind})"
    assert _used(data) == good


def test_every_skip_kind_counted_on_one_line(tmp_path: Path) -> None:
    good = _good(tmp_path)
    for _, bad, write, _, _ in SKIPPED:
        write(tmp_path / bad)
    with pytest.warns(SkippedFileWarning) as record:
        data = ImageData.from_folder(tmp_path)
    warned = {str(w.message).split(": ", 1)[0] for w in record if w.category is SkippedFileWarning}
    assert warned == {f"skipping {tmp_path / bad}" for _, bad, *_ in SKIPPED}
    assert data.summary().splitlines()[-1] == (
        "skipped: 8 files (2 not an image, 2 truncated, 2 unreadable, 1 empty, 1 too large)"
    )
    assert _used(data) == good


def test_skipped_files_can_be_made_errors(tmp_path: Path) -> None:
    import graft

    assert graft.SkippedFileWarning is SkippedFileWarning and issubclass(SkippedFileWarning, UserWarning)
    _good(tmp_path)
    (tmp_path / "cat" / "empty.jpg").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFileWarning)  # what a strict user would do
        with pytest.raises(SkippedFileWarning, match=r"empty\.jpg: empty file"):
            ImageData.from_folder(tmp_path)


def test_truncated_jpeg_passes_verify_but_not_check(tmp_path: Path) -> None:
    """Why check_image decodes JPEGs: Pillow's verify() does not read JPEG pixel data."""
    from graft.data.images import check_image

    _truncated(".jpg")(tmp_path / "cut.jpg")
    with Image.open(tmp_path / "cut.jpg") as im:
        im.verify()  # no error
    assert check_image(tmp_path / "cut.jpg").startswith("truncated file")
    with pytest.raises(OSError, match="truncated"):
        load_image(tmp_path / "cut.jpg")  # what the DataLoader would have hit mid-epoch


# --- odd but valid images are used, silently -------------------------------------------------------


def _palette_gif(path: Path) -> None:
    im = Image.new("P", (12, 10), 0)
    im.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)
    im.paste(1, (0, 0, 6, 10))
    im.save(path, transparency=0)


def _animated_gif(path: Path) -> None:
    frames = [Image.new("RGB", (12, 10), c) for c in [(220, 40, 40), (40, 70, 220), (40, 180, 60)]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    _noise((40, 20)).save(path, exif=exif)


FINE = [
    ("palette GIF with transparency", "cat/palette.gif", _palette_gif, (12, 10)),
    ("animated GIF", "cat/anim.gif", _animated_gif, (12, 10)),
    ("CMYK JPEG", "dog/cmyk.jpg", lambda p: _noise((16, 12), "CMYK").save(p), (16, 12)),
    ("16-bit grayscale PNG", "dog/g16.png",
     lambda p: Image.fromarray(np.arange(192, dtype=np.uint16).reshape(12, 16) * 300).save(p), (16, 12)),
    ("EXIF-rotated JPEG", "cat/rotated.jpg", _exif_rotated, (20, 40)),
    ("1x1 PNG", "dog/one.png", lambda p: Image.new("RGB", (1, 1), (9, 9, 9)).save(p), (1, 1)),
    ("1x1 JPEG", "cat/one.jpg", lambda p: Image.new("RGB", (1, 1), (9, 9, 9)).save(p), (1, 1)),
    ("grey+alpha WebP", "dog/la.webp", lambda p: _noise((16, 12), "LA").save(p), (16, 12)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fine", "write", "size"), FINE, ids=[c[0] for c in FINE])
def test_odd_valid_image_is_used_without_warning(tmp_path, name, fine, write, size) -> None:
    good = _good(tmp_path)
    write(tmp_path / fine)
    data = _no_warnings(lambda: ImageData.from_folder(tmp_path))
    assert data.skipped == [] and data.summary().splitlines()[-1] == "skipped: 0 files"
    assert _used(data) == good | {tmp_path / fine}
    im = load_image(tmp_path / fine)
    assert im.mode == "RGB" and im.size == size


# --- names -----------------------------------------------------------------------------------------


UNICODE_CLASSES = {"l'été": 6, "日本の猫": 6, 'say "cheese"': 6}


def test_unicode_and_apostrophes_in_names(tmp_path: Path) -> None:
    root = tmp_path / "dåta's"
    good = _good(root, UNICODE_CLASSES)
    odd = [root / "l'été" / "O'Brien's café ☕.png", root / "日本の猫" / "ねこ 🐱.jpg"]
    for i, p in enumerate(odd):
        write_image(p, (30, 30, 200), (16, 12), seed=50 + i)
    data = _no_warnings(lambda: ImageData.from_folder(root, valid_split=0.25, test_split=0.2))
    assert data.classes == sorted(UNICODE_CLASSES)
    assert _used(data) == good | set(odd)
    for s in (s for samples in data.splits.values() for s in samples):
        assert s.path.parent.name == data.classes[s.label]
    record = json.loads(json.dumps(data.to_record()))  # as graft.json stores it
    assert ["l'été/O'Brien's café ☕.png", "l'été"] in [r for rows in record["splits"].values() for r in rows]
    shutil.copytree(root, tmp_path / "copy")
    again = ImageData.from_record(tmp_path / "copy", record)
    assert again.classes == data.classes
    for name, samples in data.splits.items():
        moved = [(s.path.relative_to(root), s.label) for s in samples]
        assert [(s.path.relative_to(tmp_path / "copy"), s.label) for s in again.splits[name]] == moved


def test_unicode_ids_in_a_labels_csv(tmp_path: Path) -> None:
    names = ["ß'1.png", "ß'2.png", "ümlaut 3.png", "ümlaut 4.png", "猫5.png", "猫6.png"]
    for i, n in enumerate(names):
        write_image(tmp_path / "imgs" / n, (200, 30, 30) if i % 2 else (30, 30, 200), (16, 12), seed=i)
    rows = [f'"{n}",' + ("l'été" if i % 2 else "日本") for i, n in enumerate(names)]
    (tmp_path / "labels.csv").write_text("id,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    data = _no_warnings(lambda: ImageData.from_folder(tmp_path, labels="labels.csv", valid_split=0.34))
    assert data.classes == ["l'été", "日本"]
    assert _used(data) == {tmp_path / "imgs" / n for n in names}


# --- what the listing leaves out -------------------------------------------------------------------


def test_hidden_files_and_folders_are_ignored_with_a_note(tmp_path: Path) -> None:
    good = _good(tmp_path)
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 100)
    (tmp_path / "cat" / "._cat_0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # AppleDouble
    write_image(tmp_path / "dog" / ".thumbnails" / "dog_0.png", (0, 0, 0), (8, 8))  # a valid image, hidden
    write_image(tmp_path / ".ipynb_checkpoints" / "x.png", (0, 0, 0), (8, 8))  # beside the class folders
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    data = _no_warnings(lambda: ImageData.from_folder(tmp_path))
    assert data.classes == ["cat", "dog"]
    assert "3 hidden files or folders in the class folders ignored (e.g. cat/.DS_Store)" in data.notes
    assert data.skipped == []
    assert _used(data) == good


def test_files_without_an_image_extension_are_ignored_with_a_note(tmp_path: Path) -> None:
    good = _good(tmp_path)
    (tmp_path / "cat" / "notes.txt").write_text("cats are great")
    write_image(tmp_path / "dog" / "raw" / "dog.png", (0, 0, 0), (8, 8)).rename(
        tmp_path / "dog" / "raw" / "dog.raw"
    )
    data = _no_warnings(lambda: ImageData.from_folder(tmp_path))
    assert (
        "2 files without an image extension in the class folders ignored (e.g. cat/notes.txt)" in data.notes
    )
    assert _used(data) == good


def test_symlink_loops_are_not_followed(tmp_path: Path) -> None:
    good = _good(tmp_path)
    os.symlink(".", tmp_path / "cat" / "again")  # cat/again -> cat
    (tmp_path / "dog" / "sub").mkdir()
    os.symlink("../..", tmp_path / "dog" / "sub" / "up")  # dog/sub/up -> the dataset root
    with pytest.warns(SkippedFileWarning) as record:
        data = ImageData.from_folder(tmp_path)
    loop = "skipping {}: symlink loop (it points to {}, which contains it); not followed"
    assert sorted(str(w.message) for w in record) == [
        loop.format(tmp_path / "cat" / "again", tmp_path / "cat"),
        loop.format(tmp_path / "dog" / "sub" / "up", tmp_path),
    ]
    assert "2 symlink loops in the class folders not followed (e.g. cat/again -> cat)" in data.notes
    assert _used(data) == good  # in particular, no cat image was pulled into dog through dog/sub/up
    assert all(s.path.parent.name == data.classes[s.label] for s in data.splits["train"])


def test_symlinked_class_folder_is_still_followed(tmp_path: Path) -> None:
    good = _good(tmp_path / "real")
    (tmp_path / "data").mkdir()
    for c in CLASSES:
        os.symlink(tmp_path / "real" / c, tmp_path / "data" / c)
    data = _no_warnings(lambda: ImageData.from_folder(tmp_path / "data"))
    assert {Path(os.path.realpath(p)) for p in _used(data)} == good


def test_empty_class_folder_is_a_note(tmp_path: Path) -> None:
    good = _good(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "x.txt").write_text("x")
    data = _no_warnings(lambda: ImageData.from_folder(tmp_path))
    assert data.classes == ["cat", "dog"]
    assert "2 class folders have no usable images; ignored: empty, only_text" in data.notes
    assert _used(data) == good


# --- errors ----------------------------------------------------------------------------------------


def _cli_error(folder: Path, tmp_path: Path, capsys, monkeypatch) -> str:
    """Run ``graft train`` on ``folder``: exit 2, one line on stderr, no run folder; returns that line."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["train", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("graft: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "runs").exists()
    return err.strip()


def test_single_class_is_an_error(tmp_path: Path, capsys, monkeypatch) -> None:
    _good(tmp_path / "data", {"cat": 6})
    (tmp_path / "data" / "empty").mkdir()
    with pytest.raises(
        GraftError, match=r"^only one class \('cat'\) in .*: a classifier needs at least two$"
    ):
        ImageData.from_folder(tmp_path / "data")
    err = _cli_error(tmp_path / "data", tmp_path, capsys, monkeypatch)
    assert (
        err == f"graft: error: only one class ('cat') in {tmp_path / 'data'}: a classifier needs at least two"
    )


def test_class_only_in_val_is_an_error(tmp_path: Path, capsys, monkeypatch) -> None:
    _good(tmp_path / "data" / "train")
    _good(tmp_path / "data" / "val", {"cat": 2, "dog": 2, "wasp": 2}, seed=1)
    val = tmp_path / "data" / "val"
    with pytest.raises(
        GraftError, match=r"^class folder 'wasp' in .*val is not a class in train/ \(cat, dog\)$"
    ):
        ImageData.from_folder(tmp_path / "data")
    err = _cli_error(tmp_path / "data", tmp_path, capsys, monkeypatch)
    assert err == f"graft: error: class folder 'wasp' in {val} is not a class in train/ (cat, dog)"


# --- duplicates across splits ----------------------------------------------------------------------


def test_byte_identical_images_across_splits_warn_and_are_kept(tmp_path: Path) -> None:
    good = _good(tmp_path / "train")
    good |= _good(tmp_path / "val", {"cat": 2, "dog": 2}, seed=1)
    good |= _good(tmp_path / "test", {"cat": 2, "dog": 2}, seed=2)
    copies = {
        tmp_path / "val" / "cat" / "copy of cat_0.png": tmp_path / "train" / "cat" / "cat_0.png",
        tmp_path / "test" / "dog" / "dog_3 (1).png": tmp_path / "train" / "dog" / "dog_3.png",
        tmp_path / "test" / "cat" / "again.png": tmp_path / "val" / "cat" / "cat_1.png",
        tmp_path / "train" / "cat" / "twin.png": tmp_path / "train" / "cat" / "cat_2.png",  # same split: fine
    }
    for copy, original in copies.items():
        shutil.copyfile(original, copy)
    # Same size, different bytes (BMP size depends only on the image size): not duplicates.
    write_image(tmp_path / "train" / "dog" / "a.bmp", (40, 180, 60), (8, 8), seed=7)
    write_image(tmp_path / "val" / "dog" / "b.bmp", (40, 180, 60), (8, 8), seed=8)
    assert (tmp_path / "train" / "dog" / "a.bmp").stat().st_size == (
        tmp_path / "val" / "dog" / "b.bmp"
    ).stat().st_size
    with pytest.warns(DuplicateImageWarning) as record:
        data = ImageData.from_folder(tmp_path)
    expected = (
        "3 images in a held-out split are byte-identical to an image in an earlier split "
        "(train/val: 1, train/test: 1, val/test: 1), e.g. val/cat/copy of cat_0.png (val) = "
        "train/cat/cat_0.png (train); kept, but held-out scores may be optimistic"
    )
    assert [str(w.message) for w in record] == [expected]
    assert expected in data.notes
    bmps = {tmp_path / "train" / "dog" / "a.bmp", tmp_path / "val" / "dog" / "b.bmp"}
    assert _used(data) == good | set(copies) | bmps


def test_duplicates_can_be_made_errors(tmp_path: Path) -> None:
    import graft

    assert graft.DuplicateImageWarning is DuplicateImageWarning
    _good(tmp_path / "train")
    _good(tmp_path / "val", {"cat": 1, "dog": 1}, seed=1)
    shutil.copyfile(tmp_path / "train" / "dog" / "dog_5.png", tmp_path / "val" / "dog" / "copy.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateImageWarning)
        with pytest.raises(
            DuplicateImageWarning, match=r"^1 image in a held-out split is byte-identical .* \(train/val: 1\)"
        ):
            ImageData.from_folder(tmp_path)


def test_duplicate_check_reads_only_what_it_must(tmp_path: Path, monkeypatch) -> None:
    from graft.data import _duplicates

    calls: list[tuple[str, int | None]] = []
    digest = _duplicates._digest
    monkeypatch.setattr(
        _duplicates, "_digest", lambda p, limit=None: calls.append((p.name, limit)) or digest(p, limit)
    )
    head = os.urandom(_duplicates._PREFIX)
    contents = {
        "a": b"1234", "b": b"12345", "c": b"1234", "d": b"999999",  # sizes 4, 5 | 4, 6
        "big1": head + b"x" * 99, "big2": head + b"y" * 99,  # same size and first 16 KiB, then differ
        "big3": bytes([head[0] ^ 1]) + head[1:] + b"x" * 99,  # same size, differs at once
    }  # fmt: skip
    files = {name: tmp_path / name for name in contents}
    for name, data in contents.items():
        files[name].write_bytes(data)
    train, val = ["a", "b", "big1", "big3"], ["c", "d", "big2"]
    found = cross_split_duplicates({"train": [files[n] for n in train], "val": [files[n] for n in val]})
    assert found == [("train", files["a"], "val", files["c"])]
    prefix = _duplicates._PREFIX
    assert len(calls) == len(set(calls)) == 7  # b and d are never read: no other split has their size
    assert set(calls) == {
        *[("a", prefix), ("c", prefix), ("big1", prefix), ("big2", prefix), ("big3", prefix)],
        *[("big1", None), ("big2", None)],  # whole files only where size and prefix both match
    }


def test_unlabeled_test_copies_are_not_reported(tmp_path: Path) -> None:
    good = _good(tmp_path / "train")
    good |= _good(tmp_path / "val", {"cat": 2, "dog": 2}, seed=1)
    (tmp_path / "test").mkdir()
    shutil.copyfile(tmp_path / "train" / "cat" / "cat_0.png", tmp_path / "test" / "new.png")
    data = _no_warnings(lambda: ImageData.from_folder(tmp_path))  # predictions only: no score inflated
    assert _used(data) == good | {tmp_path / "test" / "new.png"}


# --- the csv layout --------------------------------------------------------------------------------


def _csv_folder(root: Path) -> tuple[set[Path], list[str]]:
    """12 images in root/imgs and the csv rows that label them."""
    good = set()
    rows = []
    for i in range(12):
        label = "cat" if i % 2 else "dog"
        good.add(
            write_image(
                root / "imgs" / f"{i:02d}.png", (200, 30, 30) if i % 2 else (30, 30, 200), (16, 12), i
            )
        )
        rows.append(f"{i:02d},{label}")
    return good, rows


def _load_csv(root: Path, rows: list[str], **kwargs) -> ImageData:
    (root / "labels.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    return _no_warnings(lambda: ImageData.from_folder(root, labels="labels.csv", **kwargs))


def test_csv_rows_without_an_image(tmp_path: Path) -> None:
    good, rows = _csv_folder(tmp_path)
    data = _load_csv(tmp_path, [*rows, "99,cat", "missing.png,dog", "00.jpg,dog"])
    assert "3 rows of labels.csv have no image in imgs/ (e.g. '99'); ignored" in data.notes
    assert _used(data) == good


@pytest.mark.parametrize("na", ["", "nan", "NaN", "NA", "null", "None", "N/A", "<NA>"])
def test_csv_na_like_labels_are_ignored(tmp_path: Path, na: str) -> None:
    good, rows = _csv_folder(tmp_path)
    extra = write_image(tmp_path / "imgs" / "12.png", (0, 0, 0), (16, 12))
    data = _load_csv(tmp_path, [*rows, f"12,{na}", f"13,{na}"])
    assert (
        f"2 rows of labels.csv have no label (empty or a missing-value marker: {na!r}); ignored" in data.notes
    )
    assert "1 image in imgs/ has no labeled row in labels.csv; ignored" in data.notes
    assert data.classes == ["cat", "dog"]  # no class named "nan"
    assert _used(data) == good and extra not in _used(data)


def test_csv_na_labels_only_is_an_error(tmp_path: Path) -> None:
    _, rows = _csv_folder(tmp_path)
    with pytest.raises(
        GraftError, match=r"no rows with both an id and a label \(12 rows have an empty or NA"
    ):
        _load_csv(tmp_path, [r.split(",")[0] + ",nan" for r in rows])


def test_csv_duplicate_rows(tmp_path: Path) -> None:
    good, rows = _csv_folder(tmp_path)
    data = _load_csv(tmp_path, [*rows, rows[0], rows[0], rows[1]])
    assert "3 duplicate rows of labels.csv ignored" in data.notes
    assert _used(data) == good


@pytest.mark.parametrize("images", [None, "imgs"])
def test_csv_ids_never_escape_the_image_folder(tmp_path: Path, images: str | None) -> None:
    root = tmp_path / "data"
    good, rows = _csv_folder(root)
    outside = write_image(tmp_path / "outside.png", (0, 255, 0), (16, 12))
    escaping = [
        "../outside.png",
        "../../outside.png",
        "imgs/../../outside.png",
        str(outside),  # absolute
        str(outside.with_suffix("")),  # absolute, no suffix
        "../outside",
        "..\\outside.png",
        "/etc/passwd",
    ]
    data = _load_csv(root, [*rows, *(f"{e},cat" for e in escaping)], images=images)
    assert f"8 rows of labels.csv have no image in imgs/ (e.g. {escaping[0]!r}); ignored" in data.notes
    used = _used(data)
    assert used == good
    assert all(os.path.commonpath([p, root / "imgs"]) == str(root / "imgs") for p in used)
