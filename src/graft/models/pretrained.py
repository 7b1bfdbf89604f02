"""Pretrained weights on this machine: find them, fetch them, fall back, list them."""

from __future__ import annotations

from pathlib import Path

from graft.infrastructure.errors import GraftError
from graft.models import catalog, download, registry


def find_pretrained(arch: str) -> str | None:
    """Where the ImageNet weights of ``arch`` are on this machine, or None; nothing is downloaded.

    For recipes that fall back to a bundled body when the one a tutorial names is not cached:
    ``arch = "densenet121" if find_pretrained("densenet121") else "tf_efficientnet_lite0"``.
    :func:`fetch_weights` downloads them when they are not.
    """
    source, name = registry.resolve(arch)
    local = registry.local_weights(source, name)
    return None if local is None else str(local[1])


def fetch_weights(arch: str, *, progress: bool = True, verify: bool = False) -> download.Fetched:
    """The published weights of ``arch`` on this machine: bundled, cached, or downloaded now.

    Downloads (unless ``GRAFT_OFFLINE=1``) as :func:`create_model` would on first use, so a
    connected machine can fill the caches for an air-gapped one (copy ``$TORCH_HOME/hub`` and the
    Hugging Face cache). A download is always verified; ``verify`` also checks the sha256 of a
    file found already on this machine.

    Returns:
        ``Fetched(path, origin, size)``: origin is "bundled", "cached" or the URL downloaded.

    Raises:
        GraftError: They cannot be had (saying why), or a local copy fails its check (saying
            which file to delete).
    """
    source, name = registry.resolve(arch)
    if source == "graft":
        raise GraftError(f"{name} is one of graft's own architectures: it has no published weights")
    got = download.fetch(source, name, arch=arch, progress=progress)
    if verify and not got.downloaded:
        download.verify(got.path, arch)
    return got


def weights_or_fallback(arch: str, fallback: str) -> tuple[str, Path, str | None]:
    """``(arch, its weights, None)`` when ``arch``'s weights can be had (:func:`fetch_weights`),
    else ``(fallback, its weights, why not)``: for recipes that must also run on offline machines.

    Raises:
        GraftError: Neither can be had.
    """
    try:
        return arch, fetch_weights(arch).path, None
    except GraftError as e:
        return fallback, fetch_weights(fallback).path, str(e)


def list_architectures(pattern: str | None = None, *, sizes: bool = False) -> list[dict]:
    """Rows ``{"name", "source", "weights", "size", "where"}`` of architectures and their weights.

    ``weights`` is "bundled" (inside a dependency), "cached" (on this machine), "downloadable"
    (published: :func:`fetch_weights` or the first training run fetches it) or "none". ``where``
    is the file for the first two and the URL for "downloadable". ``size`` is bytes or None:
    the file's for local weights, torchvision's published size, and, with ``sizes=True``, what
    the Hugging Face hub states (one request per row; none when offline).

    Without a pattern: graft's own architectures, the bundled lite models and torchvision's
    classification models. With a pattern (fnmatch, e.g. ``"*resnet*"``, optionally prefixed
    ``timm:``, ``torchvision:`` or ``graft:``): matching names of all three, with their pretrained
    tags (``resnet50.a1_in1k``, ``resnet50.imagenet1k_v1``). ``name`` is what ``--arch`` accepts.
    No model is instantiated.
    """
    return catalog.list_rows(pattern, sizes=sizes)
