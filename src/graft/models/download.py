"""Fetching published weights on first use, the way torchvision and timm do, and never when offline.

- torchvision names: the URL of the model's weights enum (DEFAULT, or the tag asked for), through
  torch.hub's transfer, into ``$TORCH_HOME/hub/checkpoints``, checked against the sha256 prefix in
  the file name as torch.hub does.
- timm names: the Hugging Face hub repo of the model's ``pretrained_cfg`` (``model.safetensors``
  first, as timm prefers), through huggingface_hub, into the standard Hugging Face cache, checked
  against the sha256 the hub states; else the ``pretrained_cfg`` URL, as for torchvision.

Every download lands under a temporary name and is renamed into place only once verified, so an
interrupted or altered transfer never leaves a file that later loads as weights.

Environment (read on every call):
    ``GRAFT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: never open a connection.
    ``GRAFT_TORCHVISION_MIRROR=BASE``: fetch ``https://download.pytorch.org/PATH`` from ``BASE/PATH``.
    ``GRAFT_DOWNLOAD_TIMEOUT=SECONDS``: how long a silent server is waited for (default 5).
    ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME``, ``HF_HUB_CACHE``, ``TORCH_HOME`` and the proxy
    variables (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) mean what they mean to torch and
    huggingface_hub.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import os
import re
import socket
import sys
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from tqdm.auto import tqdm

from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import sha256_file
from graft.models import registry
from graft.models.weights import read_state_dict

PYTORCH_HOST = "https://download.pytorch.org"
HF_HOST = "https://huggingface.co"
DEFAULT_TIMEOUT = 5.0
OFFLINE_VARIABLES = ("GRAFT_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = ("1", "true", "yes", "on")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Remote:
    """Where the published weights of one architecture come from.

    Attributes:
        url: What is requested: the (mirrored) file URL, or the hub URL of the first file tried.
        dest: The torch hub cache file for a URL download; None for the hub (its cache decides).
        repo_id: Hugging Face hub repo, for timm weights published there.
        filenames: Files of the repo to try, in order.
        size: Bytes, when known without asking a server (torchvision's weights metadata).
    """

    url: str
    dest: Path | None = None
    repo_id: str | None = None
    filenames: tuple[str, ...] = ()
    size: int | None = None


@dataclass(frozen=True)
class Fetched:
    """Weights on this machine: ``origin`` is "bundled", "cached", or the URL just downloaded."""

    path: Path
    origin: str
    size: int

    @property
    def downloaded(self) -> bool:
        return self.origin not in ("bundled", "cached")


def offline_reason() -> str | None:
    """The variable that turns downloads off (``"GRAFT_OFFLINE=1"``), or None when they may run."""
    for var in OFFLINE_VARIABLES:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var].strip()}"
    return None


def timeout() -> float:
    """Seconds to wait for a server that does not answer (``GRAFT_DOWNLOAD_TIMEOUT``, default 5)."""
    raw = os.environ.get("GRAFT_DOWNLOAD_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise GraftError(f"GRAFT_DOWNLOAD_TIMEOUT must be a positive number of seconds, not '{raw}'")
    return value


def mirrored(url: str) -> str:
    """``url`` with torchvision's host replaced by ``GRAFT_TORCHVISION_MIRROR`` when that is set."""
    base = os.environ.get("GRAFT_TORCHVISION_MIRROR", "").strip().rstrip("/")
    if base and url.startswith(PYTORCH_HOST + "/"):
        return base + url[len(PYTORCH_HOST) :]
    return url


def hf_endpoint() -> str:
    """The hub's base URL (``HF_ENDPOINT``), read now: huggingface_hub reads it once, at import."""
    return (os.environ.get("HF_ENDPOINT", "").strip() or HF_HOST).rstrip("/")


def expected_hash(filename: str) -> str | None:
    """The sha256 prefix a torch hub file name carries (``resnet34-b627a593.pth``), as torch.hub reads it."""
    m = torch.hub.HASH_REGEX.search(filename)
    return m.group(1) if m else None


def remote(source: str, name: str) -> Remote | None:
    """Where the published weights of a resolved architecture come from, or None when it has none."""
    if source == "torchvision":
        weights = registry.torchvision_weights(name)
        if weights is None:
            return None
        mib = weights.meta.get("_file_size")
        size = round(float(mib) * 2**20) if mib else None
        return Remote(url=mirrored(weights.url), dest=registry.hub_checkpoint(weights.url), size=size)
    if source != "timm":
        return None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_url

        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else registry.HF_FILENAMES
        url = hf_hub_url(cfg.hf_hub_id, files[0], endpoint=hf_endpoint())
        return Remote(url=url, repo_id=cfg.hf_hub_id, filenames=tuple(files))
    if cfg.url:
        return Remote(url=mirrored(cfg.url), dest=registry.hub_checkpoint(cfg.url))
    return None


def fetch(
    source: str,
    name: str,
    *,
    arch: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Fetched:
    """The weights of a resolved architecture on this machine, downloading them if needed and allowed.

    Args:
        arch: The name as the user typed it, for the commands the errors suggest (default ``name``).
        progress: Show a progress bar (size and rate) while downloading.
        log: Where the one line saying what was fetched goes (default: stderr).

    Raises:
        GraftError: No published weights, downloads off and the file absent, no connection, a
            server error, or a transfer that failed its checks (then nothing is kept).
    """
    arch = arch or name
    local = registry.local_weights(source, name)
    if local is not None:
        kind, path = local
        return Fetched(path, kind, path.stat().st_size)
    where = remote(source, name)
    if where is None:
        raise GraftError(
            f"{arch} has no published pretrained weights; pass --weights FILE, or --no-pretrained to "
            "train from scratch"
        )
    reason = offline_reason()
    if reason:
        raise GraftError(
            f"no pretrained weights for {arch} on this machine, and downloads are off ({reason}): "
            f"{_destination(where)}; on a connected machine run `graft models fetch {arch}` and copy "
            "it here, or pass --weights FILE (--no-pretrained trains from scratch)"
        )
    if where.repo_id is not None:
        path, url = _fetch_hub(where, arch, progress)
    else:
        assert where.dest is not None
        _fetch_url(where.url, where.dest, arch, progress)
        path, url = where.dest, where.url
    size = path.stat().st_size
    (log or _to_stderr)(f"fetched {arch} weights ({human_size(size)}) from {url} into {path}")
    return Fetched(path, url, size)


def _to_stderr(line: str) -> None:
    print(f"graft: {line}", file=sys.stderr, flush=True)


def human_size(n: float | None) -> str:
    """``87319819`` → ``"87.3 MB"``; None → ``"?"``."""
    if n is None:
        return "?"
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"
    return "?"  # unreachable: the loop returns at GB


def _destination(where: Remote) -> str:
    if where.dest is not None:
        return f"{where.dest.name} belongs in {where.dest.parent}"
    repo_dir = Path(registry.hf_cache_dir()) / ("models--" + str(where.repo_id).replace("/", "--"))
    return f"{' or '.join(where.filenames)} of {where.repo_id} belongs in {repo_dir}"


def _unreachable(arch: str, url: str, why: object, mirror_var: str, dest: str) -> GraftError:
    return GraftError(
        f"cannot download the {arch} weights from {url}: {_short(why)}; check the network "
        f"(a proxy: HTTPS_PROXY; a mirror: {mirror_var}), or on a connected machine run "
        f"`graft models fetch {arch}` and copy {dest} here; GRAFT_OFFLINE=1 never tries"
    )


def _short(why: object) -> str:
    text = str(getattr(why, "reason", None) or why).strip().splitlines()
    return (text[0] if text else type(why).__name__)[:200]


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub's urlopen takes no timeout; the process default bounds connect and every read.
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _fetch_url(url: str, dest: Path, arch: str, progress: bool) -> None:
    """torch.hub's transfer into a temporary name beside ``dest``; verified, then renamed."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GraftError(f"cannot create {dest.parent}: {e.strerror or e} (TORCH_HOME chooses it)") from None
    # Hidden, and keeping the suffix that tells read_state_dict the format.
    tmp = dest.with_name(f".partial-{uuid.uuid4().hex[:8]}-{dest.name}")
    prefix = expected_hash(dest.name)
    try:
        try:
            with _socket_timeout(timeout()):
                torch.hub.download_url_to_file(url, str(tmp), hash_prefix=prefix, progress=progress)
        except urllib.error.HTTPError as e:
            raise GraftError(
                f"cannot download the {arch} weights: {url} answered HTTP {e.code} {e.reason}"
            ) from None
        except RuntimeError as e:
            if "invalid hash value" not in str(e):
                raise
            got = re.search(r'got "([0-9a-f]+)"', str(e))
            raise GraftError(
                f"the download of {url} does not match the sha256 in its name (expected {prefix}…, got "
                f"{got.group(1)[:12] if got else '?'}…): cut off or altered on the way; nothing was "
                "saved, try again"
            ) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
            raise _unreachable(arch, url, e, "GRAFT_TORCHVISION_MIRROR", str(dest)) from None
        except OSError as e:  # the cache, not the network: unwritable, full
            raise GraftError(
                f"cannot save the {arch} weights in {dest.parent}: {e.strerror or e}; nothing was saved "
                "(TORCH_HOME chooses the folder)"
            ) from None
        if prefix is None:
            # No hash to check (some timm URLs): at least the file must read as tensors.
            try:
                read_state_dict(tmp)
            except GraftError as e:
                raise GraftError(
                    f"the download of {url} is not a weights file ({e}); nothing was saved"
                ) from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _network_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub's HTTP stack changed (requests, httpx, httpx2); its connection errors are
    # not always OSErrors, so collect the base class of whichever stack is installed.
    found: list[type[BaseException]] = [OSError]
    for module, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), attr))
    return tuple(found)


class _NoBar(tqdm):
    """A progress bar huggingface_hub can drive that shows nothing."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _fetch_hub(where: Remote, arch: str, progress: bool) -> tuple[Path, str]:
    """huggingface_hub's transfer of the first file the repo has, checked against the stated sha256."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    endpoint, seconds, repo = hf_endpoint(), timeout(), str(where.repo_id)
    dest = str(Path(registry.hf_cache_dir()) / ("models--" + repo.replace("/", "--")))
    network = _network_errors()
    for filename in where.filenames:
        url = hf_hub_url(repo, filename, endpoint=endpoint)
        try:
            # Asked first, with no retry, so that no network fails in seconds (hf_hub_download
            # retries a failed lookup with back-off) and so the sha256 is known.
            meta = get_hf_file_metadata(url, timeout=seconds, endpoint=endpoint)
        except EntryNotFoundError:
            continue
        except RepositoryNotFoundError:
            raise GraftError(
                f"cannot download the {arch} weights: {endpoint} says {repo} does not exist or is "
                "gated or private; if you have access, set HF_TOKEN"
            ) from None
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", "?")
            hint = "; set HF_TOKEN" if status in (401, 403) else ""
            raise GraftError(
                f"cannot download the {arch} weights: {url} answered HTTP {status}{hint}"
            ) from None
        except network as e:
            raise _unreachable(arch, url, e, "HF_ENDPOINT", dest) from None
        try:
            path = Path(
                hf_hub_download(
                    repo,
                    filename,
                    cache_dir=registry.hf_cache_dir(),
                    endpoint=endpoint,
                    etag_timeout=seconds,
                    tqdm_class=None if progress else _NoBar,
                )
            )
        except (*network, ValueError) as e:
            raise GraftError(
                f"the download of {url} failed ({_short(e)}); nothing was saved, try again"
            ) from None
        _check_hub_file(path, meta.etag, url)
        return path, url
    raise GraftError(
        f"cannot download the {arch} weights: {repo} on {endpoint} has no {' or '.join(where.filenames)}"
    )


def _check_hub_file(path: Path, etag: str | None, url: str) -> None:
    """Remove a hub download whose content is not the sha256 the hub stated, and say so."""
    if not etag or not _SHA256.fullmatch(etag):
        return  # a small file kept in git: its etag is a git hash, not a sha256
    got = sha256_file(path)
    if got == etag:
        return
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)
    raise GraftError(
        f"the download of {url} does not match the sha256 the hub states (expected {etag[:12]}…, got "
        f"{got[:12]}…): altered on the way; it was removed from the cache, try again"
    )


def verify(path: Path, arch: str) -> None:
    """Check a weights file against the sha256 its name carries (torch hub) or the hub stated (its blob).

    Raises:
        GraftError: It does not match, naming the file to delete and the command that fetches it again.
    """
    blob = path.resolve()
    expected = blob.name if _SHA256.fullmatch(blob.name) else expected_hash(path.name)
    if not expected:
        return
    got = sha256_file(blob)
    if not got.startswith(expected):
        raise GraftError(
            f"{path} fails its sha256 check (expected {expected[:12]}…, got {got[:12]}…): it is corrupt "
            f"or was replaced; delete it (rm '{blob}') and run `graft models fetch {arch}` again"
        )


def remote_size(where: Remote) -> int | None:
    """Bytes of the download as its server states them (asks the hub; None when unknown or offline)."""
    if where.size is not None or where.repo_id is None or offline_reason():
        return where.size
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    for filename in where.filenames:
        url = hf_hub_url(where.repo_id, filename, endpoint=hf_endpoint())
        try:
            return get_hf_file_metadata(url, timeout=timeout(), endpoint=hf_endpoint()).size
        except _network_errors():
            continue
    return None
