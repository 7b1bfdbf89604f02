"""ResizeCenterCrop: one resampling of the crop box, against torchvision's Resize + CenterCrop."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from graft.data.transforms import Preprocessing, ResizeCenterCrop, _interp, eval_transform


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with some noise and a few edges: closer to a photo than pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    arr = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, size=(h, w, 3))
    arr[h // 3 : h // 2, w // 4 : w // 2] = (250, 20, 30)  # a sharp-edged block
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def two_step(pre: Preprocessing) -> T.Compose:
    return T.Compose(
        [T.Resize(pre.resize_size, interpolation=_interp(pre.interpolation)), T.CenterCrop(pre.input_size)]
    )


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


SIZES = {
    "landscape": (640, 427),
    "portrait": (333, 500),
    "square": (300, 300),
    "odd landscape": (257, 181),
    "smaller than the crop": (50, 37),
    "smaller, portrait": (31, 60),
}


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_matches_resize_then_center_crop(size, interpolation):
    for pre in (
        Preprocessing(input_size=224, interpolation=interpolation),
        Preprocessing(input_size=64, interpolation=interpolation, crop_pct=0.95),
    ):
        image = photo(*size)
        got = ResizeCenterCrop(pre)(image)
        want = two_step(pre)(image)
        assert got.size == want.size == (pre.input_size, pre.input_size)
        assert mean_abs_diff(got, want) < 1.0, (size, pre)


def test_off_by_one_crop_would_be_caught():
    """The comparison is sharp enough to see a crop shifted by a single pixel."""
    pre = Preprocessing(input_size=224)
    image = photo(640, 427)
    want = two_step(pre)(image)
    resized = T.Resize(pre.resize_size)(image)
    left, top = round((resized.width - 224) / 2), round((resized.height - 224) / 2)
    exact = resized.crop((left, top, left + 224, top + 224))
    assert mean_abs_diff(exact, want) == 0
    shifted = resized.crop((left + 1, top, left + 1 + 224, top + 224))
    assert mean_abs_diff(shifted, want) > 1.0


def test_crop_larger_than_the_resize_falls_back_to_torchvision():
    # crop_pct > 1: the resized image is smaller than the crop, which torchvision pads.
    pre = Preprocessing(input_size=64, crop_pct=1.25)
    assert pre.resize_size < pre.input_size
    for size in [(120, 80), (20, 30)]:
        image = photo(*size)
        got = ResizeCenterCrop(pre)(image)
        want = two_step(pre)(image)
        assert got.size == (64, 64)
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_tensors_go_through_torchvision():
    pre = Preprocessing(input_size=32)
    x = torch.rand(3, 50, 70)
    out = ResizeCenterCrop(pre)(x)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out, two_step(pre)(x))


def test_eval_transform_gives_a_normalised_crop():
    pre = Preprocessing(input_size=48, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = eval_transform(pre)(photo(100, 80))
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
