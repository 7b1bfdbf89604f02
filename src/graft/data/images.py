"""Finding and decoding image files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Lower-case suffixes treated as images. Anything else (and any hidden file) is ignored silently.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

# Pillow's decompression-bomb guard (Image.MAX_IMAGE_PIXELS, ~89 Mpx) is deliberately left on:
# check_image reports a bomb as a skip reason and load_image raises ValueError for it.

_WHITE = (255, 255, 255)


def is_image_file(path: Path) -> bool:
    """True for a non-hidden regular file whose suffix is in IMAGE_EXTENSIONS (case-insensitive)."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (optionally below it), sorted by path; hidden files/folders skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if not recursive:
        found = [folder / e.name for e in os.scandir(folder) if is_image_file(folder / e.name)]
        return sorted(found)
    found = []
    seen: set[tuple[int, int]] = set()
    # followlinks=True so symlinked class folders work; `seen` (device, inode) stops symlink loops.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        found.extend(here / f for f in filenames if is_image_file(here / f))
    return sorted(found)


def check_image(path: Path) -> str | None:
    """Cheap validity check (open + verify headers). Returns None if OK, else a short reason."""
    path = Path(path)
    try:
        if not path.is_file():
            return "not a file"
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            im.verify()
    except UnidentifiedImageError:
        return "not a recognised image format"
    except Image.DecompressionBombError as e:
        return f"too many pixels (decompression-bomb guard): {e}"
    except Exception as e:  # any decoder error means "skip this file", never "stop the run"
        return f"unreadable image ({type(e).__name__}: {e})".strip()
    return None


def _draft_jpeg(im: Image.Image, min_size: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides stay >= min_size.

    Pillow's draft picks the largest scale s in {1,2,4,8} with s <= min(w // req_w, h // req_h),
    so a square request (min_size, min_size) keeps the *shorter* side >= min_size.
    """
    if min_size <= 0 or min(im.size) < 2 * min_size:
        return  # no reduction possible; skip the call so the decoder is untouched
    im.draft("RGB", (min_size, min_size))


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit / 32-bit integer or float grey values to 0..255 without clipping to white."""
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    hi = float(finite.max()) if finite.size else 0.0
    if mode.startswith("I;16"):
        arr = arr / 257.0  # full 16-bit range -> full 8-bit range
    elif mode == "F" and hi <= 1.0:
        arr = arr * 255.0  # floats in [0, 1]
    elif hi > 65535.0:
        lo = float(finite.min())
        arr = (arr - lo) * (255.0 / (hi - lo))
    elif hi > 255.0:
        arr = arr / 257.0  # 16-bit data held in a 32-bit mode (common for 16-bit PNGs)
    arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        # Palette images may carry a transparent index; keep it so it becomes white, not black.
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode.startswith("I") or mode == "F":
        grey = _scale_to_uint8(np.asarray(im), mode)
        if grey.ndim == 3:  # defensive: some plugins return (h, w, 1)
            grey = grey[..., 0]
        return Image.fromarray(grey).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV, ...


def load_image(path: Path, min_size: int | None = None) -> Image.Image:
    """Decode ``path`` to an RGB PIL image with EXIF orientation applied.

    Any mode (L, LA, P with transparency, RGBA, CMYK, I;16, I, F) becomes RGB; alpha is
    composited on white. With ``min_size``, large JPEGs are decoded at reduced scale (Pillow
    draft mode) keeping the shorter side >= min_size. Raises OSError/ValueError on bad files.
    """
    try:
        with Image.open(path) as im:
            if min_size and im.format == "JPEG":
                _draft_jpeg(im, int(min_size))
            im.seek(0)  # animated GIF/WebP/TIFF: the first frame
            im.load()
            try:
                oriented = ImageOps.exif_transpose(im)
            except Exception:  # a corrupt EXIF block should not lose an otherwise good image
                oriented = im
            out = _to_rgb(oriented)
            if out is im:
                out = im.copy()  # detach from the file handle closed by `with`
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: {e}") from e
    return out
