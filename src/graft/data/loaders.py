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
    """A collated batch. ``labels`` is -1 for unlabeled samples; ``failed`` lists sample indices
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
        self, samples: Sequence[Sample], transform: Callable, min_size: int | None = None, seed: int = 0
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.min_size = min_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, int]:
        """``(image tensor or None if undecodable, label or -1, i)``."""
        i, epoch = item if isinstance(item, tuple) else (item, None)
        sample = self.samples[i]
        label = -1 if sample.label is None else int(sample.label)
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


def collate(items: list[tuple[torch.Tensor | None, int, int]]) -> Batch:
    """Stack decoded items into a :class:`Batch`, dropping (and listing) the failed ones."""
    ok = [it for it in items if it[0] is not None]
    failed = [int(it[2]) for it in items if it[0] is None]
    if not ok:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0), empty, empty.clone(), failed)
    return Batch(
        torch.stack([it[0] for it in ok]),
        torch.tensor([it[1] for it in ok], dtype=torch.long),
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
) -> DataLoader:
    """A DataLoader yielding :class:`Batch`; workers persistent.

    With ``shuffle``, an :class:`EpochSampler` orders the samples: call
    ``loader.sampler.set_epoch(e)`` before each epoch. Order and augmentation then depend only on
    ``(seed, epoch)``, so they repeat from run to run and survive a resume.

    Args:
        shards: ``(rank, world size)`` to load only this rank's part of ``samples`` (a
            DistributedSampler, seeded like the shuffle). Its parts have equal lengths: a few
            samples repeat to even them out, and ``Batch.indices`` tells them apart.
    """
    workers = default_workers() if workers is None else max(0, int(workers))
    sampler, rank = None, 0
    if shuffle or shards is not None:
        rank, size = shards or (0, 1)
        cls = EpochSampler if shuffle else DistributedSampler
        sampler = cls(samples, num_replicas=size, rank=rank, shuffle=shuffle, seed=seed)
    return DataLoader(
        ImageFileDataset(samples, transform, min_size, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed + 1_000_003 * rank),
        persistent_workers=workers > 0,
    )
