"""The loaders on the real datasets in ../shared/datasets (skipped when they are absent)."""

from __future__ import annotations

import pytest

from graft.data import ImageData, load_image
from graft.data.loaders import ImageFileDataset
from graft.data.transforms import Preprocessing, eval_transform
from graft.infrastructure.errors import DuplicateImageWarning


def _counts(data: ImageData) -> dict[str, int]:
    return {name: len(samples) for name, samples in data.splits.items()}


def test_hymenoptera(shared_dataset) -> None:
    root = shared_dataset("hymenoptera")
    data = ImageData.from_folder(root)
    assert data.layout == "folders" and data.classes == ["ants", "bees"]
    assert _counts(data) == {"train": 245, "val": 153}
    assert data.skipped == []
    gif = root / "train" / "ants" / "imageNotFound.gif"
    assert gif in {s.path for s in data.splits["train"]}  # a palette GIF: valid, not skipped
    assert load_image(gif).mode == "RGB"
    assert root / "train" / "ants" / "formica.jpeg" in {s.path for s in data.splits["train"]}


def test_hymenoptera_draft_mode_on_largest_jpeg(shared_dataset) -> None:
    path = shared_dataset("hymenoptera") / "val" / "ants"
    big = next(p for p in path.iterdir() if p.name.startswith("ants-devouring-remains"))  # 2592x1944
    assert load_image(big).size == (2592, 1944)
    small = load_image(big, min_size=224)
    assert 224 <= min(small.size) < 1944 // 4


def test_malaria_subset_split(shared_dataset) -> None:
    data = ImageData.from_folder(shared_dataset("malaria_subset"), valid_split=0.2, test_split=0.1)
    assert data.layout == "split" and data.classes == ["NotInfected", "infected"]
    assert _counts(data) == {"train": 140, "val": 40, "test": 20}
    paths = [s.path for samples in data.splits.values() for s in samples]
    assert len(set(paths)) == len(paths) == 200


def test_flowers5_ignores_ds_store(shared_dataset) -> None:
    # flowers5 holds byte-identical photos under two names; with seed 0 three pairs straddle train/val.
    with pytest.warns(DuplicateImageWarning, match=r"^3 images .* \(train/val: 3\)"):
        data = ImageData.from_folder(shared_dataset("flowers5"), seed=0)
    assert data.classes == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    assert sum(_counts(data).values()) == 4317 and data.skipped == []
    assert len(data.splits["val"]) == round(4317 * 0.2)


def test_cifar10_folders_train_test_without_val(shared_dataset) -> None:
    data = ImageData.from_folder(shared_dataset("cifar10_folders"))
    assert data.layout == "folders" and len(data.classes) == 10
    assert _counts(data) == {"train": 800, "val": 200, "test": 200}
    ds = ImageFileDataset(data.splits["test"][:2], eval_transform(Preprocessing(input_size=32)))
    assert ds[0][0].shape == (3, 32, 32)


def test_dog_tiny_csv(shared_dataset) -> None:
    root = shared_dataset("dog_tiny")
    data = ImageData.from_folder(root, labels=root / "labels.csv")
    assert data.layout == "csv" and len(data.classes) == 110
    labeled = data.splits["train"] + data.splits["val"]
    assert len(labeled) == 300 and {s.path.parent.name for s in labeled} == {"train"}
    assert len(data.splits["val"]) == 60
    assert len(data.splits["test"]) == 300 and all(s.label is None for s in data.splits["test"])
    small = [n for n in data.notes if "too few images for the val split" in n]
    assert len(small) == 1 and "20 have a single image" in small[0]
    train_labels = {s.label for s in data.splits["train"]}
    assert train_labels == set(range(110))  # every breed, even singletons, is in train


def test_dog_tiny_with_test_fraction(shared_dataset) -> None:
    data = ImageData.from_folder(
        shared_dataset("dog_tiny"), labels="labels.csv", valid_split=0.2, test_split=0.1
    )
    assert _counts(data) == {"train": 210, "val": 60, "test": 30}
    assert all(s.label is not None for s in data.splits["test"])


def test_cifar10_tiny_csv(shared_dataset) -> None:
    root = shared_dataset("cifar10_tiny")
    data = ImageData.from_folder(root, labels="trainLabels.csv")
    assert {s.path.parent.name for s in data.splits["train"]} == {"train_tiny"}
    assert sum(_counts(data).values()) == 100 and len(data.classes) == 10
    assert "49,900 rows of trainLabels.csv have no image in train_tiny/ (e.g. '6'); ignored" in data.notes


@pytest.mark.parametrize("name", ["hymenoptera", "malaria_subset", "cifar10_folders"])
def test_record_round_trip_real(shared_dataset, name: str) -> None:
    data = ImageData.from_folder(shared_dataset(name))
    again = ImageData.from_record(data.root, data.to_record())
    assert again.splits == data.splits and again.classes == data.classes
