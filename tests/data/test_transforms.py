"""Train transforms: the CIFAR-style pad-and-crop is the eval view shifted, seeded per sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import transforms as T

from graft.data import Augmentation, Preprocessing, Sample, train_transform
from graft.data.images import load_image
from graft.data.loaders import ImageFileDataset
from graft.data.transforms import ResizeCenterCrop
from tests.conftest import write_image

# mean 0, std 1: the transform's output is the crop's pixels in [0, 1].
PRE = Preprocessing(input_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0)
PAD = 4


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    return write_image(tmp_path_factory.mktemp("pad") / "a.png", (120, 140, 160), size=(40, 36), seed=3)


def _shift_of(out: torch.Tensor, view: torch.Tensor) -> tuple[int, int] | None:
    """The (dy, dx) such that ``out[y, x] == view[y + dy, x + dx]`` where that is inside the
    view and 0 elsewhere, or None when no shift explains ``out``."""
    size = view.shape[-1]
    for dy in range(-PAD, PAD + 1):
        for dx in range(-PAD, PAD + 1):
            padded = torch.nn.functional.pad(view, (PAD, PAD, PAD, PAD))
            if torch.equal(out, padded[:, PAD + dy : PAD + dy + size, PAD + dx : PAD + dx + size]):
                return dy, dx
    return None


def test_pad_and_crop_shifts_the_eval_view(image_path: Path) -> None:
    aug = Augmentation(crop_padding=PAD, hflip=0.0, rotate=0.0, jitter=0.0)
    transform = train_transform(PRE, aug)
    image = load_image(image_path)
    view = T.PILToTensor()(ResizeCenterCrop(PRE)(image)).float() / 255
    assert view.shape == (3, 32, 32) and view.min() > 0  # noisy colour: no pixel is 0
    shifts = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(image)
        assert out.shape == (3, 32, 32)
        shift = _shift_of(out, view)
        assert shift is not None, seed
        shifts.add(shift)
        dy, dx = shift
        zero_rows, zero_cols = (out == 0).all(dim=(0, 2)), (out == 0).all(dim=(0, 1))
        assert int(zero_rows.sum()) == abs(dy) and int(zero_cols.sum()) == abs(dx)
        torch.manual_seed(seed)
        assert torch.equal(transform(image), out)  # the same seed, the same crop
    assert len(shifts) > 3 and any(s != (0, 0) for s in shifts)


def test_pad_and_crop_is_seeded_per_sample_and_epoch(image_path: Path) -> None:
    pre = Preprocessing(input_size=32, crop_pct=1.0)
    transform = train_transform(pre, Augmentation(crop_padding=PAD, rotate=0.0, jitter=0.0))
    ds = ImageFileDataset([Sample(image_path, 0)], transform, seed=5)
    again = ImageFileDataset([Sample(image_path, 0)], transform, seed=5)
    epochs = [ds[(0, e)][0] for e in range(6)]
    assert all(torch.equal(a, again[(0, e)][0]) for e, a in enumerate(epochs))
    assert not all(torch.equal(a, epochs[0]) for a in epochs[1:])  # each epoch draws anew
    other = ImageFileDataset([Sample(image_path, 0)], transform, seed=6)
    assert not all(torch.equal(a, other[(0, e)][0]) for e, a in enumerate(epochs))


def test_without_padding_the_random_resized_crop_is_used() -> None:
    steps = train_transform(PRE, Augmentation(rotate=0.0, jitter=0.0)).transforms
    assert isinstance(steps[0], T.RandomResizedCrop)
    steps = train_transform(PRE, Augmentation(crop_padding=2)).transforms
    assert isinstance(steps[0], ResizeCenterCrop) and isinstance(steps[1], T.RandomCrop)
    assert steps[1].padding == 2 and isinstance(steps[2], T.RandomHorizontalFlip)
    assert isinstance(steps[3], T.RandomRotation) and isinstance(steps[4], T.ColorJitter)
