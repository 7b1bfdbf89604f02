"""An on-disk cache of the frozen prefix's activations (cached-prefix fine-tuning).

An activation is much larger than a feature vector (tf_efficientnet_lite0 cut before its last
stage: 112x14x14 values per image and view, 43 KB in bfloat16), so these are not held in memory:
they are written as they are computed, and an epoch reads each batch's rows from disk.

Layout: ``<cache root>/prefix-<key>/shard-<id>.bin`` holds fixed-size rows back to back, and
``shard-<id>.json`` lists their keys (``"<view key>:<content hash>"``, as the feature cache),
shape and dtype. A shard counts only once its JSON exists, written after the ``.bin`` is
complete, so a killed run leaves at most an ignored temporary file. Rows are read with
``os.pread`` rather than a memory map: mapped pages would count in the process's resident set and
grow it with the dataset, while read pages stay in the kernel's page cache.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from graft.features.cache import tensor_hash
from graft.infrastructure.fileio import atomic_write_text, temp_file

# Bump when the meaning of a cached activation changes.
ACTIVATION_FORMAT = 1
DTYPES = {"bfloat16": (torch.bfloat16, np.int16), "float32": (torch.float32, np.float32)}


def activation_key(body_key: str, first: str, shape: tuple[int, ...]) -> str:
    """The folder key of one cut of one body (the body key already names its precision)."""
    extra = {"format": ACTIVATION_FORMAT, "body": body_key, "first": first, "shape": list(shape)}
    return tensor_hash([], extra)


class ActivationCache:
    """The cached activations of one cut of one body.

    Args:
        root: Cache root folder (created on first write).
        key: :func:`activation_key`.
    """

    def __init__(self, root: str | Path, key: str) -> None:
        self.folder = Path(root) / f"prefix-{key}"
        self._where: dict[str, tuple[Path, int]] | None = None
        self._shards: dict[Path, dict] = {}

    def index(self) -> dict[str, tuple[Path, int]]:
        """``key -> (shard file, row)`` of every complete shard (damaged ones are skipped)."""
        if self._where is None:
            self._where = {}
            for meta_path in sorted(self.folder.glob("shard-*.json")):
                self._add_shard(meta_path)
        return self._where

    def _add_shard(self, meta_path: Path) -> None:
        try:
            meta = json.loads(meta_path.read_text())
            torch_dtype, _ = DTYPES[meta["dtype"]]
            data = meta_path.with_suffix(".bin")
            row_bytes = int(np.prod(meta["shape"])) * torch.empty(0, dtype=torch_dtype).element_size()
            if data.stat().st_size != row_bytes * len(meta["keys"]):
                return
        except (OSError, ValueError, KeyError, TypeError):  # a damaged shard is only a cache miss
            return
        self._shards[data] = {"shape": tuple(meta["shape"]), "dtype": meta["dtype"], "row_bytes": row_bytes}
        self._where.update((k, (data, i)) for i, k in enumerate(meta["keys"]))

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` not in the cache."""
        index = self.index()
        return [k for k in keys if k not in index]

    def writer(self, dtype: str) -> ShardWriter:
        """A new shard to append rows to (``dtype``: ``bfloat16`` or ``float32``)."""
        return ShardWriter(self, dtype)

    def reader(self) -> RowReader:
        """Reads rows by key (see :class:`RowReader`)."""
        return RowReader(self)

    def __len__(self) -> int:
        return len(self.index())


class ShardWriter:
    """Appends rows to one new shard; :meth:`close` makes it visible. A cache that cannot be
    written gives one warning and the rows are dropped: the run still trains, on what it holds."""

    def __init__(self, cache: ActivationCache, dtype: str) -> None:
        self.cache, self.dtype = cache, dtype
        self.keys: list[str] = []
        self.shape: tuple[int, ...] | None = None
        self.path = cache.folder / f"shard-{uuid.uuid4().hex}.bin"
        self._file = None
        self._tmp: Path | None = None
        self.failed = False

    def add(self, keys: list[str], rows: torch.Tensor) -> None:
        """Append ``rows`` (``len(keys)`` activations of one shape) under ``keys``."""
        if self.failed or not keys:
            return
        torch_dtype, np_dtype = DTYPES[self.dtype]
        if self.shape is None:
            self.shape = tuple(rows.shape[1:])
        data = rows.detach().to("cpu", torch_dtype).contiguous()
        raw = data.view(torch.int16) if torch_dtype == torch.bfloat16 else data
        try:
            if self._file is None:
                self.cache.folder.mkdir(parents=True, exist_ok=True)
                self._tmp = temp_file(self.path)
                self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
            self._file.write(raw.numpy().astype(np_dtype, copy=False).tobytes())
        except OSError as e:
            self._fail(e)
            return
        self.keys += keys

    def close(self) -> None:
        """Finish the shard: data renamed into place, then its JSON index written."""
        if self._file is None or self.failed:
            return
        try:
            self._file.close()
            os.replace(self._tmp, self.path)
            meta = {
                "format": ACTIVATION_FORMAT,
                "shape": list(self.shape),
                "dtype": self.dtype,
                "keys": self.keys,
            }
            atomic_write_text(self.path.with_suffix(".json"), json.dumps(meta))
        except OSError as e:
            self._fail(e)
            return
        if self.cache._where is not None:
            self.cache._add_shard(self.path.with_suffix(".json"))

    def _fail(self, error: OSError) -> None:
        self.failed = True
        warnings.warn(
            f"could not write the activation cache in {self.cache.folder} ({error}); going on without it",
            stacklevel=3,
        )
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


class RowReader:
    """Reads cached activations by key, batch by batch, with one open file per shard."""

    def __init__(self, cache: ActivationCache) -> None:
        self.cache = cache
        self.index = cache.index()
        self._fds: dict[Path, int] = {}

    def read(self, keys: list[str]) -> torch.Tensor:
        """float32 ``(len(keys), *shape)`` of the activations of ``keys`` (all must be cached)."""
        rows = []
        for k in keys:
            path, row = self.index[k]
            meta = self.cache._shards[path]
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            raw = os.pread(fd, meta["row_bytes"], row * meta["row_bytes"])
            torch_dtype, np_dtype = DTYPES[meta["dtype"]]
            t = torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).copy())
            if torch_dtype == torch.bfloat16:
                t = t.view(torch.bfloat16)
            rows.append(t.float().view(meta["shape"]))
        return torch.stack(rows)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()
