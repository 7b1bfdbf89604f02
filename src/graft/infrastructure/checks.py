"""Checked reads of JSON records a user may have been handed (a run's graft.json), one field at a time.

Every reader raises :class:`GraftError` naming the field (``model.num_classes``) and what it
must be, so a tampered or corrupt file is refused in one line before anything is built from it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from graft.infrastructure.errors import GraftError


def record(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` as a JSON object, or GraftError."""
    if not isinstance(value, Mapping):
        raise GraftError(f"{where} must be an object, not {type(value).__name__}")
    return value


def only_keys(d: Mapping[str, Any], allowed: Collection[str], where: str) -> None:
    """Refuse fields this version of graft does not know."""
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise GraftError(f"{where} has unknown fields: {', '.join(unknown[:5])}")


def _get(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise GraftError(f"{where}.{key} is missing")
    return d[key]


def integer(d: Mapping[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    """An int field in ``[lo, hi]`` (bools and floats refused)."""
    value = _get(d, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise GraftError(f"{where}.{key} must be a whole number from {lo} to {hi}, not {value!r:.60}")
    return value


def number(
    d: Mapping[str, Any], key: str, lo: float, hi: float, where: str, *, open_lo: bool = False
) -> float:
    """A finite float field in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``)."""
    value = _get(d, key, where)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (lo < value if open_lo else lo <= value) and value <= hi
    if not ok:
        span = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
        raise GraftError(f"{where}.{key} must be a number in {span}, not {value!r:.60}")
    return float(value)


def numbers(d: Mapping[str, Any], key: str, n: int, lo: float, hi: float, where: str) -> tuple[float, ...]:
    """A list of ``n`` finite floats, each in ``[lo, hi]``."""
    value = _get(d, key, where)
    if not isinstance(value, list) or len(value) != n:
        raise GraftError(f"{where}.{key} must be a list of {n} numbers")
    return tuple(number({key: v}, key, lo, hi, where) for v in value)


def choice(d: Mapping[str, Any], key: str, choices: Collection[str], where: str) -> str:
    """A string field that is one of ``choices``."""
    value = _get(d, key, where)
    if not isinstance(value, str) or value not in choices:
        raise GraftError(f"{where}.{key} must be one of {', '.join(sorted(choices))}, not {value!r:.60}")
    return value


def text(d: Mapping[str, Any], key: str, where: str, max_len: int = 200) -> str:
    """A non-empty string field of at most ``max_len`` characters."""
    value = _get(d, key, where)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise GraftError(f"{where}.{key} must be a non-empty string of at most {max_len} characters")
    return value


def texts(d: Mapping[str, Any], key: str, where: str, max_items: int, *, unique: bool = False) -> list[str]:
    """A list of 1 to ``max_items`` non-empty strings (distinct with ``unique``)."""
    value = _get(d, key, where)
    if not isinstance(value, list) or not 0 < len(value) <= max_items:
        raise GraftError(f"{where}.{key} must be a list of 1 to {max_items} strings")
    out = [text({key: v}, key, where, max_len=1000) for v in value]
    if unique and len(set(out)) != len(out):
        raise GraftError(f"{where}.{key} names an entry twice")
    return out


# Resampling filters a run may name (transforms maps them to torchvision's; the ONNX runtime to Pillow's).
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
PREPROCESSING_FIELDS = ("input_size", "mean", "std", "interpolation", "crop_pct")


def preprocessing(value: object, where: str = "preprocessing") -> dict[str, Any]:
    """The fields of a ``preprocessing`` record (a run file's or an ONNX file's), each checked.

    Torch-free, so the ONNX runtime and ``Preprocessing.from_dict`` share one set of bounds.

    Raises:
        GraftError: A field missing, unknown, of the wrong type or out of range, named.
    """
    d = record(value, where)
    only_keys(d, PREPROCESSING_FIELDS, where)
    return {
        "input_size": integer(d, "input_size", 8, 4096, where),
        "mean": numbers(d, "mean", 3, -1e3, 1e3, where),
        "std": numbers(d, "std", 3, 1e-6, 1e3, where),
        "interpolation": choice(d, "interpolation", INTERPOLATIONS, where),
        "crop_pct": number(d, "crop_pct", 0.05, 1.0, where, open_lo=True),
    }
