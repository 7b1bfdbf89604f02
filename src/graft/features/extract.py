"""Frozen-body features: the head's input, computed once per image and view, then reused.

While the body is frozen (``mode features`` and the frozen epochs of ``finetune``), every epoch
would push the same images through the same fixed network. Instead graft runs the body once per
image and per *view* (the eval view, plus seeded augmented views when augmentation is on), keeps
the vectors that enter the head, and trains the head on them: an epoch then costs milliseconds.
The vectors live in a :class:`~graft.features.cache.FeatureCache`, so a second run, or
``graft evaluate`` of a run whose body was never unfrozen, does not even decode the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from graft.data.dataset import Sample
from graft.data.images import load_image
from graft.data.loaders import inference_workers
from graft.data.transforms import (
    Preprocessing,
)
from graft.features.activations import ActivationCache, ShardWriter
from graft.features.cache import FeatureCache, file_hash, tensor_hash
from graft.features.views import View
from graft.infrastructure.distributed import all_gather, broadcast, quiet, shard, unshard, world
from graft.infrastructure.memory import Pieces
from graft.infrastructure.runtime import autocast, channels_last
from graft.models import ModelSpec
from graft.models.fuse import inference_model

# Bump when the meaning of a cached vector changes (what is hooked, how views are made).
CACHE_FORMAT = 1


def feature_head(model: nn.Module, spec: ModelSpec) -> nn.Module | None:
    """The head module, when it can be trained on cached vectors: one head whose first layer is a
    Linear. None for conv heads (squeezenet) and for several heads (inception's auxiliary one)."""
    if len(spec.head_names) != 1:
        return None
    head = model.get_submodule(spec.head_names[0])
    first = head[0] if isinstance(head, nn.Sequential) and len(head) else head
    return head if isinstance(first, nn.Linear) else None


def pre_head_dropout(model: nn.Module, spec: ModelSpec) -> float:
    """The dropout the full model applies to the head's input in training mode, so cached training
    matches it: timm's ``drop_rate``, or an ``nn.Dropout`` just before the head (torchvision)."""
    rate = getattr(model, "drop_rate", None)
    if spec.source == "timm" and isinstance(rate, int | float):
        return float(rate)
    parent_name, _, attr = spec.head_names[0].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential):
        names = [n for n, _ in parent.named_children()]
        i = names.index(attr)
        if i > 0 and isinstance(parent[i - 1], nn.Dropout):
            return float(parent[i - 1].p)
    return 0.0


def body_key(model: nn.Module, spec: ModelSpec, pre: Preprocessing, precision: str) -> str:
    """The cache key of the body: architecture, every non-head tensor, preprocessing, precision."""
    heads = tuple(spec.head_names)
    body = [
        (k, v)
        for k, v in model.state_dict().items()
        if not any(k == h or k.startswith(h + ".") for h in heads)
    ]
    extra = {
        "format": CACHE_FORMAT,
        "arch": spec.arch,
        "source": spec.source,
        "build_kwargs": spec.build_kwargs,
        "preprocessing": pre.to_dict(),
        "precision": precision,
    }
    return tensor_hash(body, extra)


@dataclass
class ActivationTap:
    """Also keep, from the same forward passes, the input of module ``first`` (the frozen
    prefix's activation) in ``cache``; ``dtypes``: how each job's rows are stored (``bfloat16``
    or ``float32``; default bfloat16)."""

    first: str
    cache: ActivationCache
    dtypes: tuple[str, ...] = ()


@dataclass
class Features:
    """Head-input vectors of the decodable samples.

    Attributes:
        vectors: ``(n, views, dim)`` float32.
        index: Sample index of each row (into the samples given).
        failed: Indices of samples that could not be read or decoded.
        computed: How many vectors were computed now rather than read from the cache.
        keys: Cache key of each row's views (``"<view key>:<content hash>"``).
    """

    vectors: torch.Tensor
    index: torch.Tensor
    failed: list[int]
    computed: int
    keys: list[list[str]] = field(default_factory=list)


class _ViewDataset(Dataset):
    """Decodes each image once and returns the views it still needs, stacked."""

    def __init__(self, items: list[tuple[Path, str, list[View]]], min_size: int) -> None:
        self.items, self.min_size = items, min_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        path, digest, views = self.items[i]
        try:
            image = load_image(path, self.min_size)
        except Exception:  # reported as failed, like the training loaders do
            return None, i
        out = []
        for view in views:
            if view.seed is not None:
                # Same file content + same view => same random crop/flip/jitter, in any worker.
                torch.manual_seed(int(digest[:12], 16) ^ view.seed)
            out.append(view.transform(image))
        return torch.stack(out), i


def _collate(items: list) -> list:
    return items


def extract_features(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    jobs: Sequence[tuple[Sequence[Sample], list[View]]],
    device: torch.device,
    *,
    cache: FeatureCache | None,
    precision: str = "fp32",
    batch_size: int = 16,
    workers: int | None = None,
    desc: str = "features",
    tap: ActivationTap | None = None,
) -> list[Features]:
    """Head-input vectors for each job ``(samples, views)``, from ``cache`` where present.

    What is missing is computed in one pass by a BatchNorm-folded eval copy of ``model``
    (:func:`~graft.models.fuse.inference_model`), with a hook on its head's input, and added to
    ``cache``. Nothing is decoded or folded when everything is cached.

    Args:
        batch_size: Network inputs per forward pass (images × views needing computation).
        tap: Also cache the frozen prefix's activations (single process only); views whose
            activation is missing are computed again even when their vector is cached.
    """
    hashes, keys = _cache_keys(jobs)
    wanted = [k for job in keys for ks in job for k in ks]
    ranks = world()
    # Under torch.distributed rank 0 alone reads (and later writes) the cache, so every rank
    # agrees on what is missing even when each machine has its own cache folder.
    found = cache.get(wanted) if cache is not None and ranks.is_main else {}
    found = broadcast(found)
    lacking = set(tap.cache.missing(wanted)) if tap is not None else set()
    # One entry per image that still lacks a view: (job, sample index, views to compute).
    todo = [
        (j, i, [v for v, k in enumerate(ks) if k not in found or k in lacking])
        for j, job in enumerate(keys)
        for i, ks in enumerate(job)
        if any(k not in found or k in lacking for k in ks)
    ]
    failed: list[set[int]] = [{i for i, h in enumerate(row) if h is None} for row in hashes]
    new: dict[str, torch.Tensor] = {}
    if todo:
        # Each rank computes every size-th missing image; the parts are gathered on all ranks.
        items = [
            (jobs[j][0][i].path, hashes[j][i], [jobs[j][1][v] for v in vs]) for j, i, vs in shard(todo, ranks)
        ]
        kinds = [
            tap.dtypes[j] if tap and j < len(tap.dtypes) else "bfloat16" for j, _, _ in shard(todo, ranks)
        ]
        tapping = _Tap(tap, kinds) if tap is not None else None
        out = _compute(model, spec, pre, items, device, precision, batch_size, workers, desc, tapping)
        if ranks.enabled:
            out = unshard(all_gather(out), len(todo))
        for (j, i, vs), vectors in zip(todo, out, strict=True):
            if vectors is None:
                failed[j].add(i)
                continue
            new.update((keys[j][i][v], vec) for v, vec in zip(vs, vectors, strict=True))
        if cache is not None and ranks.is_main:
            cache.put({k: v for k, v in new.items() if k not in found})  # some ran only for activations
    found.update(new)
    return [_features(j, len(views), keys[j], found, new, failed[j]) for j, (_, views) in enumerate(jobs)]


def _features(
    j: int, views: int, keys: list[list[str]], found: dict, new: dict, failed: set[int]
) -> Features:
    """Job ``j``'s :class:`Features` from the vectors found and computed."""
    ok = [i for i in range(len(keys)) if i not in failed]
    vectors = (
        torch.stack([torch.stack([found[k] for k in keys[i]]) for i in ok])
        if ok
        else torch.empty(0, views, 0)
    )
    computed = sum(k in new for ks in keys for k in ks)
    index = torch.tensor(ok, dtype=torch.long)
    return Features(vectors, index, sorted(failed), computed, [keys[i] for i in ok])


class _Tap:
    """The prefix activations of one computation: a pre-hook on the first trained block, and one
    shard per storage dtype (item ``n``'s rows go to ``kinds[n]``'s)."""

    def __init__(self, tap: ActivationTap, kinds: list[str]) -> None:
        self.tap, self.kinds = tap, kinds
        self.rows: list[torch.Tensor] = []
        self.writers: dict[str, ShardWriter] = {}

    def attach(self, model: nn.Module) -> torch.utils.hooks.RemovableHandle:
        return model.get_submodule(self.tap.first).register_forward_pre_hook(
            lambda m, args: self.rows.append(args[0])
        )

    def clear(self) -> None:
        self.rows.clear()

    def keep(self, items: list[tuple[Path, str, list[View]]], ok: list[tuple[torch.Tensor, int]]) -> None:
        """Write the rows of this batch's decodable items ``ok``."""
        rows, start = torch.cat(self.rows), 0
        self.rows.clear()
        for _, n in ok:
            views, kind = items[n][2], self.kinds[n]
            if kind not in self.writers:
                self.writers[kind] = self.tap.cache.writer(kind)
            keys = [f"{view.key}:{items[n][1]}" for view in views]
            self.writers[kind].add(keys, rows[start : start + len(views)])
            start += len(views)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _cache_keys(
    jobs: Sequence[tuple[Sequence[Sample], list[View]]],
) -> tuple[list[list[str | None]], list[list[list[str]]]]:
    """Each sample's content hash (None: unreadable) and its cache key per view (none when
    unreadable), job by job."""
    hashes: list[list[str | None]] = []
    for samples, _ in jobs:
        row = []
        for s in samples:
            try:
                row.append(file_hash(s.path))
            except OSError:
                row.append(None)
        hashes.append(row)
    keys = [
        [[f"{v.key}:{h}" for v in views] if h else [] for h in row]
        for (_, views), row in zip(jobs, hashes, strict=True)
    ]
    return hashes, keys


def _compute(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    items: list[tuple[Path, str, list[View]]],
    device: torch.device,
    precision: str,
    batch_size: int,
    workers: int | None,
    desc: str,
    tap: _Tap | None = None,
) -> list[torch.Tensor | None]:
    """Run a folded copy of the model over ``items`` (path, content hash, views); one
    ``(views, dim)`` tensor per item, None where the image could not be decoded. With ``tap``,
    each batch's prefix activations are written as they are computed."""
    if not items:
        return []
    fast = inference_model(model, pre.input_size, device)
    captured: list[torch.Tensor] = []
    head = fast.get_submodule(spec.head_names[0])
    hooks = [head.register_forward_hook(lambda m, args, out: captured.append(args[0]))]
    hooks += [tap.attach(fast)] if tap is not None else []
    per_batch = max(1, batch_size // max(len(views) for _, _, views in items))
    workers = inference_workers(device) if workers is None else workers
    loader = DataLoader(
        _ViewDataset(items, pre.resize_size),
        batch_size=per_batch,
        num_workers=min(workers, len(items) // per_batch),
        collate_fn=_collate,
    )
    out: list[torch.Tensor | None] = [None] * len(items)
    pieces = Pieces("feature extraction")

    def body(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        with autocast(device, precision):
            fast(channels_last(x))
        return captured[0].float().cpu()

    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, leave=False, unit="batch", disable=quiet()):
                ok = [(x, n) for x, n in batch if x is not None]
                if not ok:
                    continue
                x = torch.cat([x for x, _ in ok]).to(device, non_blocking=True)
                # before: an attempt cut short by running out of memory leaves no activations
                vectors = torch.cat(pieces.run(body, x, before=tap.clear if tap else None))
                if tap is not None:
                    tap.keep(items, ok)
                row = 0
                for x, n in ok:
                    out[n] = vectors[row : row + len(x)].clone()
                    row += len(x)
    finally:
        for hook in hooks:
            hook.remove()
        if tap is not None:
            tap.close()
    return out


@torch.inference_mode()
def head_logits(head: nn.Module, vectors: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 CPU logits of ``head`` in eval mode for cached ``(n, dim)`` vectors; the head's
    train/eval mode is left as it was."""
    was_training = head.training
    head.eval()
    try:
        return head(vectors.to(device)).float().cpu()
    finally:
        head.train(was_training)
