"""An on-disk cache of body features, keyed by what determines them.

A frozen body maps each image (and each seeded augmented view of it) to the same feature vector
every time, so graft computes it once. The key of a cached vector is made of:

* the *body key*: architecture, the body's weights (a hash of every non-head tensor),
  preprocessing and precision: if any of them changes, nothing old is found;
* the *view key*: ``eval`` (resize + centre crop) or one seeded augmented view, including the
  augmentation's settings;
* the *content hash* of the image file (not its path: renaming or moving files keeps the cache).

Layout: ``<cache root>/<body key>/shard-*.safetensors``, each shard a flat dict
``"<view key>:<content hash>" -> float32 vector``, written atomically. Readers open shards
lazily (safetensors reads only the tensors asked for). Many small shards are merged into one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from graft.infrastructure.fileio import atomic_write

# Merge shards once a body key has more than this many (each run that adds images adds one).
MAX_SHARDS = 16


def default_cache_root() -> Path:
    """``$GRAFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/graft/features``, else ``~/.cache/graft/features``."""
    if os.environ.get("GRAFT_CACHE_DIR"):
        return Path(os.environ["GRAFT_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "graft" / "features"


def file_hash(path: str | Path) -> str:
    """A 32-hex-digit BLAKE2b digest of the file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def tensor_hash(tensors: Iterable[tuple[str, torch.Tensor]], extra: dict) -> str:
    """A digest of named tensors (values, dtypes, shapes; not memory layout) plus JSON ``extra``."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(extra, sort_keys=True).encode())
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FeatureCache:
    """The cached vectors of one body key.

    Args:
        root: Cache root folder (created on first write).
        body_key: See the module docstring.
    """

    def __init__(self, root: str | Path, body_key: str) -> None:
        self.folder = Path(root) / body_key
        self._where: dict[str, Path] | None = None

    def _index(self) -> dict[str, Path]:
        if self._where is None:
            self._where = {}
            for shard in sorted(self.folder.glob("shard-*.safetensors")):
                try:
                    with safe_open(str(shard), framework="pt") as f:
                        self._where.update(dict.fromkeys(f.keys(), shard))
                except Exception:  # a damaged shard is only a cache miss, never an error
                    continue
        return self._where

    def get(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The cached vectors among ``keys`` (missing ones are simply absent)."""
        index = self._index()
        by_shard: dict[Path, list[str]] = {}
        for k in keys:
            if k in index:
                by_shard.setdefault(index[k], []).append(k)
        found: dict[str, torch.Tensor] = {}
        for shard, names in by_shard.items():
            try:
                with safe_open(str(shard), framework="pt") as f:
                    for k in names:
                        found[k] = f.get_tensor(k)
            except Exception:
                continue
        return found

    def put(self, vectors: dict[str, torch.Tensor]) -> None:
        """Store new vectors as one more shard (atomically), merging shards when there are many.

        A cache that cannot be written (read-only, disk full) gives a warning, not an error.
        """
        if not vectors:
            return
        shard = self.folder / f"shard-{uuid.uuid4().hex}.safetensors"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write(shard, vectors)
        except OSError as e:  # the cache only saves time: a read-only or full disk must not stop a run
            message = f"could not write the feature cache in {self.folder} ({e}); going on without it"
            warnings.warn(message, stacklevel=2)
            return
        index = self._index()
        index.update(dict.fromkeys(vectors, shard))
        shards = sorted(set(index.values()))
        if len(shards) > MAX_SHARDS:
            merged = self.get(list(index))
            target = self.folder / f"shard-{uuid.uuid4().hex}.safetensors"
            try:
                self._write(target, merged)
            except OSError:
                return  # unmerged shards still work
            for old in shards:
                old.unlink(missing_ok=True)
            self._where = dict.fromkeys(merged, target)

    @staticmethod
    def _write(path: Path, vectors: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in vectors.items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))

    def __len__(self) -> int:
        return len(self._index())
