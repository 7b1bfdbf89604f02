"""Per-file facts for ``graft doctor``: content digest, pixel size, a perceptual hash and how
blank the picture is, read in one cheap decode (JPEGs at 1/8 scale where that leaves enough)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from graft.data._duplicates import _digest
from graft.data.images import load_image

# The side the hash and blankness see: phash resizes to 32 px itself; 64 keeps its input sharp.
_SIDE = 64


@dataclass(frozen=True)
class ImageFacts:
    """What one image file is, without a model.

    Attributes:
        digest: blake2b of the file's bytes (equal digests: byte-identical files).
        width: Width in pixels, upright (after EXIF orientation).
        height: Height in pixels, upright.
        phash: 64-bit DCT perceptual hash (``imagehash.phash``) of the upright picture.
        spread: Standard deviation of its grey levels (0-255) at 64 px: near 0 for a blank or
            single-colour picture.
    """

    digest: str
    width: int
    height: int
    phash: int
    spread: float


def image_facts(path: Path) -> ImageFacts | None:
    """The facts of one file; None if it cannot be read or decoded (never raises)."""
    import imagehash

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                width, height = im.size
                turned = (im.getexif() or {}).get(0x0112) in (5, 6, 7, 8)  # EXIF orientation
            image = load_image(path, min_size=_SIDE)
        small = image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.BILINEAR)
        spread = float(np.asarray(small, dtype=np.float32).std())
        value = int(str(imagehash.phash(small)), 16)
        digest = _digest(path)
        if digest is None:
            return None
    except Exception:  # any decoder error: the file is reported unreadable, never a crash
        return None
    if turned:
        width, height = height, width
    return ImageFacts(digest, width, height, value, spread)


def inspect_images(paths: Sequence[Path], workers: int = 2) -> list[ImageFacts | None]:
    """:func:`image_facts` of each path, in order, decoded by ``workers`` threads (Pillow
    releases the GIL while it decodes and resizes)."""
    if workers <= 1 or len(paths) < 2:
        return [image_facts(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(image_facts, paths, chunksize=16))
