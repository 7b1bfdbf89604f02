"""Finding, checking and decoding image files (generated with PIL in tmp_path)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data.images import (
    MAX_ASPECT,
    check_image,
    fit_for_model,
    is_image_file,
    list_images,
    load_image,
)
from graft.infrastructure.errors import LargeImageWarning


def _rgb(path: Path, size=(40, 30), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# --- finding files -------------------------------------------------------------------------------


def test_is_image_file(tmp_path: Path) -> None:
    assert is_image_file(_rgb(tmp_path / "a.png"))
    assert is_image_file(_rgb(tmp_path / "B.JPG"))  # suffix is case-insensitive
    assert not is_image_file(_rgb(tmp_path / ".hidden.png"))
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_image_file(tmp_path / "notes.txt")
    (tmp_path / "dir.png").mkdir()
    assert not is_image_file(tmp_path / "dir.png")
    assert not is_image_file(tmp_path / "missing.png")


def test_list_images_sorted_skips_hidden(tmp_path: Path) -> None:
    for name in ["b.png", "a.jpg", ".c.png", "sub/d.png", ".hid/e.png", "sub/.f.png", "x.txt"]:
        _rgb(tmp_path / name) if name.endswith("png") or name.endswith("jpg") else (
            tmp_path / name
        ).write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "a.jpg",
        "b.png",
        "sub/d.png",
    ]
    assert list_images(tmp_path / "nope") == []


def test_list_images_symlink_loop_terminates(tmp_path: Path) -> None:
    _rgb(tmp_path / "a" / "x.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")  # a/loop -> a
    os.symlink(tmp_path / "a", tmp_path / "link")  # symlinked folders are followed once
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert "a/x.png" in found
    assert len(found) <= 3


# --- checking ------------------------------------------------------------------------------------


def test_check_image_reasons(tmp_path: Path) -> None:
    assert check_image(_rgb(tmp_path / "ok.png")) is None
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty" in check_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("this is not a JPEG at all")
    assert "not a recognised image" in check_image(tmp_path / "text.jpg")
    assert check_image(tmp_path / "missing.png") == "not a file"


def test_decompression_bomb_is_a_reason_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _rgb(tmp_path / "big.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 px > 2 x limit -> bomb error
    assert "decompression-bomb" in check_image(path)
    with pytest.raises(ValueError):
        load_image(path)


def test_check_image_keeps_pillow_warnings_to_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (found by the fuzz tests): Image.open's bomb warning escaped check_image."""
    path = _rgb(tmp_path / "big.png", size=(50, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,500 px: over the limit, under twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_image(path) is None  # a warning naming no file would be noise; the image is fine
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image(path)  # decoding it still warns, once, naming the file (Pillow's warning does not)
    assert [w.category for w in caught] == [LargeImageWarning]
    assert str(path) in str(caught[0].message) and "50x30" in str(caught[0].message)


def test_check_image_catches_what_verify_misses(tmp_path: Path) -> None:
    """verify() reads no JPEG/GIF/BMP pixel data; check_image decodes them (JPEG at 1/8 scale)."""
    arr = np.random.default_rng(0).integers(0, 255, size=(64, 80, 3), dtype=np.uint8)
    for suffix in [".jpg", ".gif", ".bmp", ".webp", ".tif"]:
        Image.fromarray(arr).save(tmp_path / f"whole{suffix}")
        data = (tmp_path / f"whole{suffix}").read_bytes()
        (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
        assert check_image(tmp_path / f"whole{suffix}") is None
        reason = check_image(tmp_path / f"cut{suffix}")
        assert reason is not None and reason.startswith(("truncated file", "unreadable image")), (
            suffix,
            reason,
        )
        with pytest.raises(OSError):
            load_image(tmp_path / f"cut{suffix}")


# --- decoding ------------------------------------------------------------------------------------


def test_modes_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (8, 6), 77).save(tmp_path / "l.png")
    Image.new("1", (8, 6), 1).save(tmp_path / "one.png")
    Image.new("LA", (8, 6), (10, 0)).save(tmp_path / "la.png")  # fully transparent -> white
    for name in ["l.png", "one.png", "la.png"]:
        im = load_image(tmp_path / name)
        assert im.mode == "RGB" and im.size == (8, 6)
    assert load_image(tmp_path / "l.png").getpixel((0, 0)) == (77, 77, 77)
    assert load_image(tmp_path / "one.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red
    arr[:2, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(arr).save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 0, 0)
    assert im.getpixel((0, 3)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (6, 6), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    im.paste(1, (0, 0, 3, 6))
    im.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert out.getpixel((5, 5)) == (255, 255, 255)  # the transparent index is white, not black


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # red in CMYK
    with Image.open(tmp_path / "c.jpg") as raw:
        assert raw.mode == "CMYK"
    r, g, b = load_image(tmp_path / "c.jpg").getpixel((8, 6))
    assert r > 200 and g < 60 and b < 60


def test_16bit_grayscale_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode.startswith("I")
    arr = np.asarray(load_image(tmp_path / "g16.png"))
    assert arr.shape == (8, 64, 3)
    assert 0 < arr.mean() < 255  # neither all-black nor clipped to white
    expected = np.rint(ramp / 257.0)
    assert np.abs(arr[..., 0].astype(float) - expected).max() <= 1


def test_32bit_int_and_float_tiff(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 100).reshape(10, 10)
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "i.tif")
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "f.tif")
    for name in ["i.tif", "f.tif"]:
        arr = np.asarray(load_image(tmp_path / name))[..., 0].astype(float)
        assert arr.min() <= 1 and arr.max() >= 254  # full range used, not clipped
        assert np.abs(arr - ramp / 257).max() <= 1.5


def test_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (40, 20), (10, 200, 10)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    r, _, b = load_image(tmp_path / "anim.gif").getpixel((5, 5))
    assert r > 200 and b < 50


def test_draft_mode_keeps_short_side(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, size=(1500, 2000, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=80)
    full = load_image(tmp_path / "big.jpg")
    assert full.size == (2000, 1500)
    for min_size in [224, 300, 700]:
        small = load_image(tmp_path / "big.jpg", min_size=min_size)
        assert min_size <= min(small.size) < 1500, (min_size, small.size)
    assert load_image(tmp_path / "big.jpg", min_size=224).size == (500, 375)  # 1500 // 224 = 6 -> 1/4
    assert load_image(tmp_path / "big.jpg", min_size=1000).size == (2000, 1500)  # no reduction possible
    # Other formats decode in full, then are reduced by the same rule (1500 // 224 = 6).
    assert load_image(_rgb(tmp_path / "p.png", size=(2000, 1500)), min_size=224).size == (334, 250)


def test_large_png_is_reduced_for_the_model(tmp_path: Path) -> None:
    """Issue 18: a 140 KB PNG of 12000x12000 px was held decoded in full (432 MB) until the forward
    pass. Decoding for a model keeps the shorter side >= min_size and nothing more."""
    path = tmp_path / "huge.png"
    Image.new("L", (12000, 12000), 90).save(path, optimize=True)
    assert path.stat().st_size < 300_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_image(path, min_size=256)
    assert image.mode == "RGB" and image.size == (261, 261)  # 12000 // 256 = 46, 12000 / 46 rounded up
    assert image.getpixel((100, 100)) == (90, 90, 90)
    named = [str(w.message) for w in caught if w.category is LargeImageWarning]
    assert len(named) == 1 and named[0].startswith(f"{path}: 12000x12000")


def test_extreme_strip_keeps_its_centre(tmp_path: Path) -> None:
    """Issue 18: a 111-byte 10000x1 PNG made every TTA view a 2.5-million-pixel-long row (3.5 GB
    for 4 views), a 40000x1 one a MemoryError. A strip keeps MAX_ASPECT:1 of its centre."""
    arr = np.zeros((1, 40000, 3), dtype=np.uint8)
    arr[0, 20000 - 8 : 20000 + 8] = (255, 0, 0)  # the centre is red, the rest black
    Image.fromarray(arr).save(tmp_path / "strip.png")
    assert (tmp_path / "strip.png").stat().st_size < 1000
    image = load_image(tmp_path / "strip.png", min_size=224)
    assert image.size == (MAX_ASPECT, 1) and image.getpixel((MAX_ASPECT // 2, 0)) == (255, 0, 0)
    tall = load_image(_rgb(tmp_path / "tall.png", size=(3, 200)), min_size=224)
    assert tall.size == (3, 3 * MAX_ASPECT)
    assert load_image(tmp_path / "strip.png").size == (40000, 1)  # without min_size: as stored


def test_reduction_averages_transparent_and_16bit_pixels_correctly(tmp_path: Path) -> None:
    """Alpha is premultiplied before averaging (transparent black does not darken the edge), and
    16-bit grey keeps its 16-bit scaling."""
    rgba = np.zeros((600, 600, 4), dtype=np.uint8)
    rgba[:, ::2] = (255, 0, 0, 255)  # every other column opaque red, the rest transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    r, g, b = load_image(tmp_path / "a.png", min_size=100).getpixel((50, 50))
    assert r == 255 and 120 <= g <= 135 and g == b  # red half and white half, not a dark red
    grey = Image.fromarray(np.full((600, 600), 40000, dtype=np.uint16))
    grey.save(tmp_path / "g16.png")
    assert load_image(tmp_path / "g16.png", min_size=100).getpixel((5, 5)) == (156, 156, 156)  # 40000/257
    assert load_image(tmp_path / "g16.png").getpixel((5, 5)) == (156, 156, 156)


def test_fit_for_model_takes_every_mode() -> None:
    for mode in ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "F", "CMYK", "YCbCr"]:
        small = fit_for_model(Image.new(mode, (900, 450)), 100)
        assert small.size == (225, 113), mode  # 450 // 100 = 4


def test_undecodable_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises((OSError, ValueError)):
        load_image(tmp_path / "bad.jpg")


def test_banded_reduction_equals_a_whole_image_reduce() -> None:
    """Modes that need converting are reduced a band of rows at a time (so a 144 Mpx RGBA upload
    never has a second full-size copy); the result is that of converting and reducing at once."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 255, size=(3001, 2000, 4), dtype=np.uint8), "RGBA")
    whole = rgba.convert("RGBa").reduce(6).convert("RGBA")  # 2000 // 300 = 6, in 2 bands
    assert np.array_equal(np.asarray(fit_for_model(rgba, 300)), np.asarray(whole))
    palette = rgba.convert("RGB").quantize(64)
    assert np.array_equal(
        np.asarray(fit_for_model(palette, 300)), np.asarray(palette.convert("RGB").reduce(6))
    )
