"""The architecture listing of ``graft models``: names, pretrained tags and where their weights are."""

from __future__ import annotations

import fnmatch

import timm

from graft.models import cifar, download, registry


def _matches(pat: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(name.split(".", 1)[0], pat)


def _torchvision_entries(pat: str | None) -> list[str]:
    """Bare names (their DEFAULT weights) and, with a pattern, ``name.tag`` for every other weights."""
    names: list[str] = []
    for base in registry.torchvision_names():
        if pat is None:
            names.append(base)
            continue
        default = registry.torchvision_weights(base)
        tagged = [
            f"{base}.{tag}"
            for tag in registry.torchvision_tags(base)
            if default is None or tag != default.name.lower()
        ]
        if fnmatch.fnmatchcase(base, pat):
            names += [base, *tagged]
        else:
            names += [n for n in tagged if fnmatch.fnmatchcase(n, pat)]
    return names


def _timm_entries(pat: str) -> list[str]:
    """Pretrained tags matching ``pat`` (on the tag or the architecture), and untagged architectures."""
    tagged = [n for n in timm.list_pretrained() if _matches(pat, n)]
    with_tags = {n.split(".", 1)[0] for n in tagged}
    untagged = [n for n in registry.timm_names() if n not in with_tags and fnmatch.fnmatchcase(n, pat)]
    return sorted(tagged + untagged)


def _entries(pattern: str | None) -> list[tuple[str, str]]:
    if pattern is None:
        return (
            [("graft", n) for n in cifar.names()]
            + [("timm", n) for n in registry.LITE_PACKAGES]
            + [("torchvision", n) for n in _torchvision_entries(None)]
        )
    source, sep, pat = pattern.partition(":")
    if not sep or source not in registry.SOURCES:
        source, pat = "", pattern
    pat = pat.lower()
    entries: list[tuple[str, str]] = []
    if source in ("", "graft"):
        entries += [("graft", n) for n in cifar.names() if fnmatch.fnmatchcase(n, pat)]
    if source in ("", "torchvision"):
        entries += [("torchvision", n) for n in _torchvision_entries(pat)]
    if source in ("", "timm"):
        entries += [("timm", n) for n in _timm_entries(pat)]
    return entries


def describe(source: str, name: str, *, sizes: bool = False) -> dict:
    """``{"weights", "size", "where"}`` of one resolved architecture (see ``list_architectures``)."""
    local = registry.local_weights(source, name)
    if local is not None:
        kind, path = local
        return {"weights": kind, "size": path.stat().st_size, "where": str(path)}
    where = download.remote(source, name)
    if where is None:
        return {"weights": "none", "size": None, "where": "no published weights"}
    size = download.remote_size(where) if sizes else where.size
    return {"weights": "downloadable", "size": size, "where": where.url}


def list_rows(pattern: str | None = None, *, sizes: bool = False) -> list[dict]:
    """Implementation of :func:`graft.models.list_architectures`."""
    torchvision = set(registry.torchvision_names())
    rows = []
    for source, name in _entries(pattern):
        # The name column is what --arch accepts: a bare name would pick torchvision's twin.
        shown = f"timm:{name}" if source == "timm" and name in torchvision else name
        rows.append({"name": shown, "source": source, **describe(source, name, sizes=sizes)})
    return rows
