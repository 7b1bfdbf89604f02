"""Frozen-body features: the head's input, computed once per image and view, then reused.

While the body is frozen (``mode features`` and the frozen epochs of ``finetune``), every epoch
would push the same images through the same fixed network. Instead graft runs the body once per
image and per *view* (the eval view, plus seeded augmented views when augmentation is on), keeps
the vectors that enter the head, and trains the head on them: an epoch then costs milliseconds.
The vectors live in a :class:`~graft.training.cache.FeatureCache`, so a second run, or
``graft evaluate`` of a run whose body was never unfrozen, does not even decode the images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from graft.data.dataset import Sample
from graft.data.images import load_image
from graft.data.loaders import inference_workers
from graft.data.transforms import (
    Augmentation,
    Preprocessing,
    corner_transform,
    eval_transform,
    train_transform,
)
from graft.errors import GraftError
from graft.models import ModelSpec
from graft.models.fuse import inference_model
from graft.training.cache import FeatureCache, file_hash, tensor_hash
from graft.training.distributed import all_gather, broadcast, quiet, shard, unshard, world
from graft.training.loop import EpochStats, check_finite
from graft.training.memory import Pieces
from graft.training.runtime import autocast, channels_last

# Bump when the meaning of a cached vector changes (what is hooked, how views are made).
CACHE_FORMAT = 1


@dataclass(frozen=True)
class View:
    """One way of turning an image into the network's input.

    Attributes:
        key: Part of the cache key (``eval`` or ``aug<i>-<settings hash>``).
        transform: PIL image -> normalised tensor.
        seed: For augmented views, the seed that (with the file's content hash) fixes the random
            crop, flip and jitter, so the view is the same in every run; None for the eval view.
    """

    key: str
    transform: Callable
    seed: int | None = None


def eval_view(pre: Preprocessing) -> View:
    """Resize and centre-crop: what validation, evaluation and prediction see."""
    return View("eval", eval_transform(pre))


class _Flipped:
    """A transform followed by a horizontal flip of its tensor (a class, not a lambda, so loader
    workers started with "spawn", as on macOS, can pickle it)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: object) -> torch.Tensor:
        return torch.flip(self.transform(image), dims=[-1])


# Test-time augmentation view counts: centre + mirror, or those plus the two end crops.
TTA_VIEWS = (2, 4)


def tta_views(pre: Preprocessing, count: int = 2) -> list[View]:
    """Test-time augmentation views: the eval view and its mirror image, then (``count=4``) the
    top-left and bottom-right crops of the same resize (on a landscape photo, its two ends).

    All are deterministic, so a prediction with TTA is the same in every run. Measured on
    hymenoptera and malaria_subset, the two end crops raised the loss (hymenoptera val 0.132
    against 0.124 with 2 views), hence 2 by default.

    Raises:
        GraftError: For a count other than 2 or 4.
    """
    if count not in TTA_VIEWS:
        raise GraftError(f"test-time augmentation takes 2 or 4 views, not {count}")
    center = eval_transform(pre)
    views = [
        View("eval", center),
        View("tta-flip", _Flipped(center)),
        View("tta-tl", corner_transform(pre, first=True)),
        View("tta-br", corner_transform(pre, first=False)),
    ]
    return views[:count]


def augmented_views(pre: Preprocessing, aug: Augmentation, count: int, seed: int) -> list[View]:
    """``count`` seeded augmented views (none when augmentation is off)."""
    if not aug.enabled:
        return []
    settings = hashlib.blake2b(json.dumps([asdict(aug), seed]).encode(), digest_size=4).hexdigest()
    transform = train_transform(pre, aug)
    return [View(f"aug{i}-{settings}", transform, seed * 1000 + i) for i in range(count)]


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
class Features:
    """Head-input vectors of the decodable samples.

    Attributes:
        vectors: ``(n, views, dim)`` float32.
        index: Sample index of each row (into the samples given).
        failed: Indices of samples that could not be read or decoded.
        computed: How many vectors were computed now rather than read from the cache.
    """

    vectors: torch.Tensor
    index: torch.Tensor
    failed: list[int]
    computed: int


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
) -> list[Features]:
    """Head-input vectors for each job ``(samples, views)``, from ``cache`` where present.

    What is missing is computed in one pass by a BatchNorm-folded eval copy of ``model``
    (:func:`~graft.models.fuse.inference_model`), with a hook on its head's input, and added to
    ``cache``. Nothing is decoded or folded when everything is cached.

    Args:
        batch_size: Network inputs per forward pass (images × views needing computation).
    """
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
    wanted = [k for job in keys for ks in job for k in ks]
    ranks = world()
    # Under torch.distributed rank 0 alone reads (and later writes) the cache, so every rank
    # agrees on what is missing even when each machine has its own cache folder.
    found = cache.get(wanted) if cache is not None and ranks.is_main else {}
    found = broadcast(found)
    # One entry per image that still lacks a view: (job, sample index, views to compute).
    todo = [
        (j, i, [v for v, k in enumerate(ks) if k not in found])
        for j, job in enumerate(keys)
        for i, ks in enumerate(job)
        if any(k not in found for k in ks)
    ]
    failed: list[set[int]] = [{i for i, h in enumerate(row) if h is None} for row in hashes]
    new: dict[str, torch.Tensor] = {}
    if todo:
        # Each rank computes every size-th missing image; the parts are gathered on all ranks.
        items = [
            (jobs[j][0][i].path, hashes[j][i], [jobs[j][1][v] for v in vs]) for j, i, vs in shard(todo, ranks)
        ]
        out = _compute(model, spec, pre, items, device, precision, batch_size, workers, desc) if items else []
        if ranks.enabled:
            out = unshard(all_gather(out), len(todo))
        for (j, i, vs), vectors in zip(todo, out, strict=True):
            if vectors is None:
                failed[j].add(i)
                continue
            new.update((keys[j][i][v], vec) for v, vec in zip(vs, vectors, strict=True))
        if cache is not None and ranks.is_main:
            cache.put(new)
    found.update(new)
    results = []
    for j, (samples, views) in enumerate(jobs):
        ok = [i for i in range(len(samples)) if i not in failed[j]]
        vectors = (
            torch.stack([torch.stack([found[k] for k in keys[j][i]]) for i in ok])
            if ok
            else torch.empty(0, len(views), 0)
        )
        computed = sum(k in new for ks in keys[j] for k in ks)
        results.append(Features(vectors, torch.tensor(ok, dtype=torch.long), sorted(failed[j]), computed))
    return results


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
) -> list[torch.Tensor | None]:
    """Run a folded copy of the model over ``items`` (path, content hash, views); one
    ``(views, dim)`` tensor per item, None where the image could not be decoded."""
    fast = inference_model(model, pre.input_size, device)
    captured: list[torch.Tensor] = []
    hook = fast.get_submodule(spec.head_names[0]).register_forward_hook(
        lambda m, args, out: captured.append(args[0])
    )
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
                vectors = torch.cat(pieces.run(body, x))
                row = 0
                for x, n in ok:
                    out[n] = vectors[row : row + len(x)].clone()
                    row += len(x)
    finally:
        hook.remove()
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


class FeaturePass:
    """Frozen epochs on cached vectors: the same interface as the image path in ``fit``.

    Each epoch shuffles the training images and, with several cached views, picks one view per
    image at random (seeded), then trains ``head`` batch by batch exactly as the full model would
    (the same pre-head dropout, loss, optimizer and per-batch schedule).

    Args:
        head: The model's head module (trained in place).
        dropout: Pre-head dropout rate (:func:`pre_head_dropout`).
        train: Training vectors; ``labels`` holds every training sample's label.
        val: Eval-view vectors of the val samples (None without a val split).
    """

    def __init__(
        self,
        head: nn.Module,
        dropout: float,
        train: Features,
        labels: torch.Tensor,
        val: Features | None,
        val_labels: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.head, self.dropout, self.device = head, dropout, device
        self.train_set, self.val_set = train, val
        self.x, self.y = train.vectors, labels[train.index]
        self.val_labels = val_labels
        self.batch_size = batch_size
        n = len(self.y)
        # Same rule as the image loader: a last batch of one would break BatchNorm in MLP heads.
        self.drop_last = n > batch_size
        self.steps_per_epoch = max(1, n // batch_size if self.drop_last else -(-n // batch_size))
        self.generator = torch.Generator().manual_seed(seed)

    def train_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        desc: str,
    ) -> EpochStats:
        """One pass over the cached training vectors."""
        n, views = self.x.shape[0], self.x.shape[1]
        order = torch.randperm(n, generator=self.generator)
        pick = torch.randint(views, (n,), generator=self.generator)
        stats = EpochStats(failed=list(self.train_set.failed))
        total_loss, correct = 0.0, 0
        for step in range(self.steps_per_epoch):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            x = self.x[idx, pick[idx]].to(self.device)
            y = self.y[idx].to(self.device)
            logits = self.head(nn.functional.dropout(x, self.dropout, training=True))
            loss = loss_fn(logits, y)
            check_finite(loss, desc)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stats.lr_max = max(stats.lr_max, optimizer.param_groups[-1]["lr"])
            scheduler.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            stats.n += len(idx)
        if stats.n:
            stats.loss, stats.acc = total_loss / stats.n, correct / stats.n
        return stats

    @torch.inference_mode()
    def validate(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``(logits, sample indices, failed)`` of the val set, as ``loop.infer`` returns them."""
        if self.val_set is None or not len(self.val_set.index):
            failed = self.val_set.failed if self.val_set is not None else []
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long), failed
        logits = head_logits(self.head, self.val_set.vectors[:, 0], self.device)
        return logits, self.val_set.index, self.val_set.failed
