"""ImageFileDataset, collate and make_loader on generated images."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from graft.data import Batch, ImageData, Preprocessing, Sample, eval_transform, make_loader
from graft.data.loaders import ImageFileDataset, collate, default_workers

TRANSFORM = eval_transform(Preprocessing(input_size=16))


@pytest.fixture
def samples(tmp_path: Path, make_image_folder) -> list[Sample]:
    make_image_folder(tmp_path, classes={"a": 6, "b": 6}, size=(24, 20))
    return ImageData.from_folder(tmp_path, valid_split=0.0).splits["train"]


def _indices(loader) -> list[int]:
    return [i for batch in loader for i in batch.indices.tolist()]


def test_batches_have_images_labels_indices(samples: list[Sample]) -> None:
    loader = make_loader(samples, TRANSFORM, batch_size=5, workers=0)
    batches = list(loader)
    assert [len(b.indices) for b in batches] == [5, 5, 2]
    first = batches[0]
    assert isinstance(first, Batch)
    assert first.images.shape == (5, 3, 16, 16) and first.images.dtype == torch.float32
    assert first.labels.tolist() == [samples[i].label for i in first.indices.tolist()]
    assert first.failed == []
    assert len(make_loader(samples, TRANSFORM, batch_size=5, workers=0, drop_last=True)) == 2


def test_bad_file_dropped_and_reported(samples: list[Sample], tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    items = [*samples[:3], Sample(bad, 0), samples[3]]
    batches = list(make_loader(items, TRANSFORM, batch_size=5, workers=0))
    assert len(batches) == 1
    assert batches[0].failed == [3]
    assert batches[0].indices.tolist() == [0, 1, 2, 4]
    assert batches[0].images.shape[0] == 4


def test_all_failed_batch_is_empty(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"nope")
    ds = ImageFileDataset([Sample(tmp_path / "x.png", 1), Sample(tmp_path / "missing.png", None)], TRANSFORM)
    assert ds[0] == (None, 1, 0)
    batch = collate([ds[0], ds[1]])
    assert batch.images.shape == (0,)
    assert batch.labels.numel() == 0 and batch.indices.numel() == 0
    assert batch.failed == [0, 1]


def test_unlabeled_samples_get_minus_one(samples: list[Sample]) -> None:
    unlabeled = [Sample(s.path, None) for s in samples[:3]]
    (batch,) = list(make_loader(unlabeled, TRANSFORM, batch_size=4, workers=0))
    assert batch.labels.tolist() == [-1, -1, -1]


def test_shuffle_is_seeded(samples: list[Sample]) -> None:
    def order(seed: int) -> list[int]:
        return _indices(make_loader(samples, TRANSFORM, batch_size=4, shuffle=True, workers=0, seed=seed))

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == list(range(len(samples)))
    assert _indices(make_loader(samples, TRANSFORM, batch_size=4, workers=0)) == list(range(len(samples)))


def test_worker_processes(samples: list[Sample]) -> None:
    pickle.dumps(collate)
    pickle.dumps(ImageFileDataset(samples, TRANSFORM))  # spawn/forkserver need a picklable dataset
    loader = make_loader(samples, TRANSFORM, batch_size=4, shuffle=True, workers=2, seed=1)
    assert loader.persistent_workers
    first, second = _indices(loader), _indices(loader)  # two epochs on the same workers
    assert sorted(first) == sorted(second) == list(range(len(samples)))
    assert first == _indices(make_loader(samples, TRANSFORM, batch_size=4, shuffle=True, workers=0, seed=1))


def test_min_size_uses_draft_mode(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, size=(1500, 2000, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg")
    ds = ImageFileDataset([Sample(tmp_path / "big.jpg", 0)], T.PILToTensor(), min_size=300)
    image, label, index = ds[0]
    assert label == 0 and index == 0
    assert 300 <= min(image.shape[1:]) < 1500


def test_default_workers() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_workers() == (0 if cores <= 1 else min(cores, 8))
