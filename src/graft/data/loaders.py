"""Torch datasets and loaders over Samples."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from graft.data.dataset import Sample
from graft.data.images import load_image


class Batch(NamedTuple):
    """A collated batch. ``labels`` is -1 for unlabeled samples (multi-label: a 0/1 row per
    sample, from loaders given ``num_classes``); ``failed`` lists sample indices
    (into the loader's samples) whose file could not be decoded and was dropped from this batch."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    failed: list[int]


class ImageFileDataset(Dataset):
    """Decodes ``samples[i].path`` with load_image(min_size=...) and applies ``transform``.

    A file that fails to decode does not raise: the item is marked failed, and the collate
    function drops it and reports its index in ``Batch.failed``.

    Indexed by ``(i, epoch)`` (as :class:`EpochSampler` yields), the transform's random draws
    are seeded by ``(seed, epoch, i)``: an image's augmentation then depends on neither the
    worker that loads it, nor the number of workers or processes, nor what ran before, so an
    interrupted run resumes with exactly the draws it would have made.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable,
        min_size: int | None = None,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.min_size = min_size
        self.seed = seed
        self.num_classes = num_classes

    def _label(self, label: int | tuple[int, ...] | None) -> int | torch.Tensor:
        """-1 for no label; a multi-label tuple as a 0/1 float vector (when ``num_classes`` is
        known: the loaders of training; prediction does not read the labels)."""
        if label is None:
            return -1
        if isinstance(label, tuple):
            if self.num_classes is None:
                return -1
            hot = torch.zeros(self.num_classes)
            hot[list(label)] = 1.0
            return hot
        return int(label)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, int]:
        """``(image tensor or None if undecodable, label or -1, i)``."""
        i, epoch = item if isinstance(item, tuple) else (item, None)
        sample = self.samples[i]
        label = self._label(sample.label)
        try:
            image = load_image(sample.path, self.min_size)
        except Exception:  # bad files are reported per batch, not raised: one file must not stop a run
            return None, label, i
        # Transform errors are bugs (or absurd images), so they are not swallowed.
        if epoch is None:
            return self.transform(image), label, i
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, i))
            return self.transform(image), label, i


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63)


class EpochSampler(DistributedSampler):
    """A seeded shuffle (optionally this rank's shard of it) yielding ``(index, epoch)`` pairs.

    The order of epoch ``e`` depends only on ``(seed, e)``, and the epoch travels with each index
    to the dataset, even into persistent worker processes. Call :meth:`set_epoch` every epoch.
    """

    def __iter__(self):
        return ((i, self.epoch) for i in super().__iter__())


class BalancedSampler(torch.utils.data.Sampler):
    """A class-balanced epoch: as many draws as samples, with replacement, each sample drawn in
    proportion to ``weights`` (see :func:`balanced_weights`), yielding ``(index, epoch)`` pairs
    like :class:`EpochSampler`. The draws depend only on ``(seed, epoch)``; with ``shards``
    each rank takes every ``size``-th draw."""

    def __init__(
        self, weights: Sequence[float], seed: int = 0, shards: tuple[int, int] | None = None
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.seed, self.epoch = seed, 0
        self.rank, self.size = shards or (0, 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        drawn = torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g)
        return ((int(i), self.epoch) for i in drawn[self.rank :: self.size])

    def __len__(self) -> int:
        return len(range(self.rank, len(self.weights), self.size))


def balanced_weights(samples: Sequence[Sample]) -> list[float]:
    """Per sample, 1 / the size of its class (multi-label: the mean over its classes; images with
    no label count as a class of their own), so every class is drawn about equally often."""

    def keys(label: int | tuple[int, ...] | None) -> list:
        return list(label) or [None] if isinstance(label, tuple) else [label]

    counts: dict[int | None, int] = {}
    for s in samples:
        for c in keys(s.label):
            counts[c] = counts.get(c, 0) + 1
    return [sum(1.0 / counts[c] for c in keys(s.label)) / len(keys(s.label)) for s in samples]


def collate(items: list[tuple[torch.Tensor | None, int, int]]) -> Batch:
    """Stack decoded items into a :class:`Batch`, dropping (and listing) the failed ones."""
    ok = [it for it in items if it[0] is not None]
    failed = [int(it[2]) for it in items if it[0] is None]
    if not ok:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0), empty, empty.clone(), failed)
    labels = [it[1] for it in ok]
    multi_hot = isinstance(labels[0], torch.Tensor)
    return Batch(
        torch.stack([it[0] for it in ok]),
        torch.stack(labels) if multi_hot else torch.tensor(labels, dtype=torch.long),
        torch.tensor([it[2] for it in ok], dtype=torch.long),
        failed,
    )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset/cgroup CPU pinning, unlike cpu_count
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers for training: min(cores, 8), 0 on a single core. The cores are shared
    with the other processes of a torchrun launch on this machine (``LOCAL_WORLD_SIZE``)."""
    cores = _cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return 0 if cores <= 1 else min(cores, 8)


def inference_workers(device: torch.device) -> int:
    """DataLoader workers for passes without gradients.

    With a GPU doing the forward, every core can decode. On the CPU the forward already uses all
    cores, and decoding workers only fight it for them: on 2 cores, 398 hymenoptera images took
    8.9 s with no worker and 10.7 s with two. So one worker per four cores (none below four).
    """
    return default_workers() if device.type != "cpu" else min(_cores() // 4, 8)


def make_loader(
    samples: Sequence[Sample],
    transform: Callable,
    *,
    batch_size: int,
    shuffle: bool = False,
    workers: int | None = None,
    seed: int = 0,
    min_size: int | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
    shards: tuple[int, int] | None = None,
    num_classes: int | None = None,
    sampler: torch.utils.data.Sampler | None = None,
) -> DataLoader:
    """A DataLoader yielding :class:`Batch`; workers persistent.

    With ``shuffle``, an :class:`EpochSampler` orders the samples: call
    ``loader.sampler.set_epoch(e)`` before each epoch. Order and augmentation then depend only on
    ``(seed, epoch)``, so they repeat from run to run and survive a resume.

    Args:
        shards: ``(rank, world size)`` to load only this rank's part of ``samples`` (a
            DistributedSampler, seeded like the shuffle). Its parts have equal lengths: a few
            samples repeat to even them out, and ``Batch.indices`` tells them apart.
        num_classes: Multi-label samples: the length of their 0/1 label rows.
        sampler: Instead of the shuffle: a sampler yielding ``(index, epoch)`` pairs (e.g.
            :class:`BalancedSampler`; call its ``set_epoch`` every epoch).
    """
    workers = default_workers() if workers is None else max(0, int(workers))
    rank = 0
    if sampler is None and (shuffle or shards is not None):
        rank, size = shards or (0, 1)
        cls = EpochSampler if shuffle else DistributedSampler
        sampler = cls(samples, num_replicas=size, rank=rank, shuffle=shuffle, seed=seed)
    return DataLoader(
        ImageFileDataset(samples, transform, min_size, seed, num_classes),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed + 1_000_003 * rank),
        persistent_workers=workers > 0,
    )
