"""Finding and decoding image files."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from graft.infrastructure.errors import LargeImageWarning

# Lower-case suffixes treated as images. Anything else (and any hidden file) is left out of listings;
# list_images can report what it left out (see Ignored).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

# Pillow's decompression-bomb guard (Image.MAX_IMAGE_PIXELS, ~89 Mpx) is deliberately left on:
# check_image reports a bomb as a skip reason and load_image raises ValueError for it.

_WHITE = (255, 255, 255)

# The folder ``graft doctor --apply`` moves quarantined files into; skipped like a hidden folder, so
# a quarantined file is never read as an image nor its folder as a class.
QUARANTINE_DIR = "_quarantine"


def skipped_folder(name: str) -> bool:
    """True for a folder name that listings skip: hidden (a leading ``.``) or :data:`QUARANTINE_DIR`."""
    return name.startswith(".") or name == QUARANTINE_DIR


@dataclass
class Ignored:
    """What :func:`list_images` left out, collected when the caller passes one in.

    Attributes:
        hidden: Hidden files and folders (name starting with ``.``: ``.DS_Store``, ``._x.jpg``,
            ``.ipynb_checkpoints/``); a hidden folder is listed once, not its contents.
        other: Files without an image extension (``notes.txt``, ``labels.csv``).
        loops: (symlink, the folder it points back to) for each symlinked folder not followed
            because it leads to one of its own parent folders.
    """

    hidden: list[Path] = field(default_factory=list)
    other: list[Path] = field(default_factory=list)
    loops: list[tuple[Path, Path]] = field(default_factory=list)


def is_image_file(path: Path) -> bool:
    """True for a non-hidden regular file whose suffix is in IMAGE_EXTENSIONS (case-insensitive)."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _within(path: str, folder: str) -> bool:
    """True if the real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _sort_out(here: Path, names: list[str], ignored: Ignored | None) -> list[Path]:
    """The image files among ``names`` in ``here``; the hidden and other files go to ``ignored``."""
    found = []
    for name in names:
        path = here / name
        if is_image_file(path):
            found.append(path)
        elif ignored is not None and name.startswith("."):
            ignored.hidden.append(path)
        elif ignored is not None and path.suffix.lower() not in IMAGE_EXTENSIONS and path.is_file():
            ignored.other.append(path)
    return found


def list_images(folder: Path, recursive: bool = False, ignored: Ignored | None = None) -> list[Path]:
    """Image files in ``folder`` (optionally below it), sorted by path; hidden files/folders and
    ``_quarantine`` folders skipped.

    Args:
        folder: The folder to list (a missing folder gives an empty list).
        recursive: Also list the subfolders (symlinked ones too, each real folder once).
        ignored: When given, filled with what was left out: hidden entries, files without an image
            extension and symlink loops (see :class:`Ignored`). The return value is the same.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if not recursive:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
        hidden_dirs = [e.name for e in entries if skipped_folder(e.name) and e.is_dir()]
        if ignored is not None:
            ignored.hidden.extend(folder / d for d in hidden_dirs)
        return sorted(_sort_out(folder, [e.name for e in entries if e.name not in hidden_dirs], ignored))
    found = []
    seen: set[tuple[int, int]] = set()
    # followlinks=True so symlinked class folders work. A link back to the folder itself or one of
    # its parents (a loop) is never entered; `seen` (device, inode) lists any other folder once.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        here, real_here = Path(dirpath), os.path.realpath(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if skipped_folder(d):
                if ignored is not None:
                    ignored.hidden.append(sub)
            elif os.path.islink(sub) and _within(real_here, target := os.path.realpath(sub)):
                if ignored is not None:
                    ignored.loops.append((sub, Path(target)))
            else:
                keep.append(d)
        dirnames[:] = keep
        found.extend(_sort_out(here, sorted(filenames), ignored))
    return sorted(found)


# check_image's reasons start with one of these; skip_kind maps them to the short name the
# dataset summary counts ("skipped: 3 files (2 truncated, 1 empty)").
_KINDS = {
    "not a file": "not a file",
    "empty file": "empty",
    "not a recognised image": "not an image",
    "truncated": "truncated",
    "too many pixels": "too large",
}


def skip_kind(reason: str) -> str:
    """Short name of a :func:`check_image` reason, for counts: ``"truncated"``, ``"empty"``, ..."""
    return next((kind for prefix, kind in _KINDS.items() if reason.startswith(prefix)), "unreadable")


def check_image(path: Path) -> str | None:
    """Cheap validity check. Returns None if the file decodes, else a short reason; never raises.

    JPEGs are decoded at 1/8 scale (libjpeg still reads every byte, so truncation is caught at a
    fraction of a full decode's cost); PNGs are verified (every chunk's CRC); other formats, whose
    ``verify()`` checks little or nothing, are decoded (the first frame).
    """
    path = Path(path)
    try:
        if not path.is_file():
            return "not a file"
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        # Pillow's own warnings (TIFF's "Truncated File Read", the decompression-bomb warning of
        # Image.open) name no file; the reason does, and load_image warns again when it decodes.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.format in ("JPEG", "MPO"):
                    im.draft(im.mode, (1, 1))  # the smallest scale libjpeg offers: 1/8
                    im.load()
                elif im.format == "PNG":
                    im.verify()
                else:
                    im.load()
    except UnidentifiedImageError:
        return "not a recognised image format"
    except Image.DecompressionBombError as e:
        return f"too many pixels (decompression-bomb guard): {e}"
    except Exception as e:  # any decoder error means "skip this file", never "stop the run"
        detail = f"{type(e).__name__}: {e}".strip()
        if "truncated" in str(e).lower():  # "image file is truncated", "Truncated File Read"
            return f"truncated file ({detail})"
        return f"unreadable image ({detail})"
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


# When decoding for a model, the longer side is kept to at most this many times the shorter one:
# every view resizes the shorter side to the model's size, so a 40000x1 strip would otherwise
# become a 10-million-pixel-long row (gigabytes per view). Longer strips keep their centre.
MAX_ASPECT = 16


def _open_quietly(path) -> Image.Image:
    """``Image.open`` without Pillow's bomb warning, which names no file; the caller warns instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


# Modes Image.reduce averages as they are; others are converted first (see _reduce_mode).
_REDUCE_AS_IS = frozenset({"L", "RGB", "I", "F", "CMYK", "YCbCr", "LAB", "HSV"})

# Rows converted at a time before reducing: a few Mpx, so a conversion never copies a whole image.
_BAND_PIXELS = 1 << 22


def _reduce_mode(im: Image.Image) -> tuple[str, str]:
    """(mode to reduce in, mode to return) for ``im``: palette and bilevel images are widened
    (reduce does not take them), 16-bit ones go through 32-bit, and alpha is premultiplied so
    the hidden colours of transparent pixels do not bleed into the average."""
    mode = im.mode
    if mode == "P" or (mode in ("L", "RGB") and "transparency" in im.info):
        mode = "RGBA" if "transparency" in im.info else "RGB"
    elif mode in ("1", "PA"):
        mode = {"1": "L", "PA": "RGBA"}[mode]
    elif mode.startswith("I;16"):
        return "I", "I;16"
    return {"RGBA": "RGBa", "LA": "La"}.get(mode, mode), mode


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    """``Image.reduce(factor)`` for any mode. A mode that needs converting is converted and
    reduced one band of rows at a time (bands a multiple of ``factor`` high, so the blocks are
    those of a whole-image reduce), so the peak memory is the decoded image plus a few Mpx."""
    if im.mode in _REDUCE_AS_IS and "transparency" not in im.info:
        return im.reduce(factor)
    work, final = _reduce_mode(im)
    width, height = im.size
    out = Image.new(final, (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, _BAND_PIXELS // (width * factor))
    for top in range(0, height, rows):
        band = im.crop((0, top, width, min(height, top + rows))).convert(work).reduce(factor)
        out.paste(band.convert(final), (0, top // factor))
    return out


def fit_for_model(im: Image.Image, min_size: int) -> Image.Image:
    """Shrink a decoded image by an integer factor while its shorter side stays >= ``min_size``
    (what JPEG draft mode does inside the decoder, for every format), then centre-crop the longer
    side to :data:`MAX_ASPECT` times the shorter. The full-size pixels can be freed at once, so
    what a loader or server holds per image is bounded by ``min_size``, not by the file.
    """
    factor = min(im.size) // min_size if min_size > 0 else 0
    if factor >= 2:
        im = _reduced(im, factor)
    w, h = im.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        keep = MAX_ASPECT * min(w, h)
        if w > h:
            im = im.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
        else:
            im = im.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
    return im


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(original: Image.Image, image: Image.Image) -> Image.Image:
    """``image`` (``original`` or a reduced copy of it) turned by the original's EXIF orientation."""
    try:
        if image is original:
            return ImageOps.exif_transpose(original)
        method = _UPRIGHT.get(original.getexif().get(ExifTags.Base.Orientation))
        return image.transpose(method) if method else image
    except Exception:  # a corrupt EXIF block should not lose an otherwise good image
        return image


def _warn_if_large(im: Image.Image, path) -> None:
    pixels = im.size[0] * im.size[1]
    limit = Image.MAX_IMAGE_PIXELS
    # Only files: a caller decoding bytes (the server) knows the upload's name and its own limits.
    if limit and pixels > limit and isinstance(path, str | os.PathLike):
        warnings.warn(
            f"{path}: {im.size[0]}x{im.size[1]} = {pixels / 1e6:.0f} Mpx, over Pillow's "
            f"decompression-bomb warning limit of {limit / 1e6:.0f} Mpx; decoded anyway",
            LargeImageWarning,
            stacklevel=3,
        )


def load_image(path: Path, min_size: int | None = None) -> Image.Image:
    """Decode ``path`` to an RGB PIL image with EXIF orientation applied.

    Any mode (L, LA, P with transparency, RGBA, CMYK, I;16, I, F) becomes RGB; alpha is
    composited on white. With ``min_size`` (decoding for a model whose views resize the shorter
    side to it), the image is reduced by an integer factor keeping the shorter side >= min_size
    (JPEGs inside the decoder, by Pillow's draft mode) and a strip longer than MAX_ASPECT:1 keeps
    its centre: see :func:`fit_for_model`. Raises OSError/ValueError on bad files; warns
    :class:`LargeImageWarning`, naming the file, above Pillow's bomb warning limit.
    """
    try:
        with _open_quietly(path) as im:
            _warn_if_large(im, path)
            if min_size and im.format == "JPEG":
                _draft_jpeg(im, int(min_size))
            im.seek(0)  # animated GIF/WebP/TIFF: the first frame
            im.load()
            out = _to_rgb(_upright(im, fit_for_model(im, int(min_size)) if min_size else im))
            if out is im:
                out = im.copy()  # detach from the file handle closed by `with`
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: {e}") from e
    return out
