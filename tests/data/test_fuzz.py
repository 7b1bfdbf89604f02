"""Fuzzing the two parsers that read user files: image checking/decoding and the labels CSV.

Derandomized and database-less, so every run (and CI) tries the same examples. To see which
exceptions the decoders raised: ``pytest tests/data/test_fuzz.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image

from graft.data._csv import NA_LABELS, read_labels_csv
from graft.data.images import check_image, load_image, skip_kind
from graft.infrastructure.errors import GraftError

FUZZ = settings(derandomize=True, database=None, deadline=2000, max_examples=250)


def _seed_files() -> dict[str, bytes]:
    """Small valid files of each format: the starting points for mutation."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8), "RGB")
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    out = {}
    for name, image, kwargs in [
        ("png", rgb, {"format": "PNG"}),
        ("png-palette", rgb.convert("P"), {"format": "PNG", "transparency": 0}),
        ("jpeg", rgb, {"format": "JPEG", "quality": 80}),
        ("jpeg-progressive", rgb, {"format": "JPEG", "progressive": True}),
        ("gif", frames[0], {"format": "GIF", "save_all": True, "append_images": frames[1:]}),
        ("bmp", rgb, {"format": "BMP"}),
        ("webp", rgb, {"format": "WEBP", "quality": 70}),
    ]:
        buf = io.BytesIO()
        image.save(buf, **kwargs)
        out[name] = buf.getvalue()
    return out


SEEDS = _seed_files()
MAGIC = [data[:12] for data in SEEDS.values()]  # so random tails reach each format's decoder


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed file with a few bytes overwritten and/or cut short at a random offset."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One file that every example rewrites (hypothesis forbids function-scoped fixtures like tmp_path)."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "fuzz.img"


def _check_then_load(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    reason = check_image(path)
    assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)
    if reason is not None:
        caught = re.match(r"[^(]*\((\w+): ", reason)  # the exception check_image caught, if any
        event(f"check_image: {skip_kind(reason)}" + (f" ({caught[1]})" if caught else ""))
        return
    try:
        image = load_image(path)
    except Exception as e:  # the training loader catches Exception and skips the file
        event(f"passed check_image, then load_image raised {type(e).__name__}")
        return
    event("passed check_image and decoded")
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), st.tuples(st.sampled_from(MAGIC), st.binary()).map(b"".join)))
def test_check_image_on_arbitrary_bytes(scratch: Path, data: bytes) -> None:
    _check_then_load(scratch, data)


@settings(FUZZ, max_examples=1500)
@given(data=mutated())
def test_check_image_on_mutated_images(scratch: Path, data: bytes) -> None:
    _check_then_load(scratch, data)


# --- labels CSV ------------------------------------------------------------------------------------

CELLS = st.one_of(
    st.sampled_from(["id", "ID", "label", "file", "a.jpg", "a", "b", "cat", " dog ", "nan", "NA", "None", "",
                     '"q,uoted"', '"', '""', "\x00", "\ufeff", "é", "\u2028", "\\"]),
    st.text(max_size=4),
)  # fmt: skip


@st.composite
def csv_like(draw: st.DrawFn) -> str:
    """Ragged rows of header words, ids, NA markers, quotes, NULs and random text; maybe a BOM."""
    rows = draw(st.lists(st.lists(CELLS, max_size=4), max_size=12))
    sep = draw(st.sampled_from([",", ",", ";", "\t"]))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return draw(st.sampled_from(["", "\ufeff"])) + end.join(sep.join(row) for row in rows)


def _read(path: Path) -> None:
    try:
        mapping, header, notes = read_labels_csv(path)
    except GraftError as e:
        assert "\n" not in str(e) and "\r" not in str(e), str(e)  # the CLI prints it as one line
        event("GraftError")
        return
    event("parsed")
    assert mapping and isinstance(header, str) and all(isinstance(n, str) for n in notes)
    for key, label in mapping.items():
        assert isinstance(key, str) and isinstance(label, str)
        assert key == key.strip() and key and label == label.strip() and label not in NA_LABELS


@settings(FUZZ, max_examples=600)
@given(text=st.one_of(csv_like(), st.text()))
def test_read_labels_csv_on_arbitrary_text(scratch: Path, text: str) -> None:
    scratch.write_text(text, encoding="utf-8", newline="")
    _read(scratch)


@FUZZ
@given(data=st.binary(max_size=512))
def test_read_labels_csv_on_arbitrary_bytes(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)  # often not UTF-8 at all
    _read(scratch)
