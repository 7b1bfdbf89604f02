"""Wording shared by every layer's messages."""


def plural(n: int, one: str, many: str | None = None) -> str:
    """``"1 file"``, ``"3 files"`` (``many`` for irregular plurals)."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"
