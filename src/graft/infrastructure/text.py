"""Wording shared by every layer's messages."""


def plural(n: int, one: str, many: str | None = None) -> str:
    """``"1 file"``, ``"3 files"`` (``many`` for irregular plurals)."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def preview(names: list[str], n: int = 20) -> str:
    """The first ``n`` names, comma-separated (error messages must stay one readable line)."""
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
