"""channel_stats: exact per-channel mean and std of the eval view, sampled, skipping bad files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data import Preprocessing, Sample, channel_stats
from graft.infrastructure.errors import GraftError

PRE = Preprocessing(input_size=16, crop_pct=1.0)


def _solid(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> Sample:
    Image.new("RGB", size, color).save(path)
    return Sample(path, 0)


def test_solid_colours_give_the_exact_mean_and_std(tmp_path: Path) -> None:
    colours = [(255, 0, 10), (0, 0, 200), (51, 0, 30), (255, 0, 90)]
    # Different sizes and aspect ratios: each becomes the same 16x16 eval view of one colour.
    samples = [_solid(tmp_path / f"{i}.png", c, (16 + 8 * i, 16 + 3 * i)) for i, c in enumerate(colours)]
    samples.append(Sample(tmp_path / "missing.png", 0))  # undecodable: left out
    (tmp_path / "bad.png").write_bytes(b"not a png")
    samples.append(Sample(tmp_path / "bad.png", 0))
    mean, std = channel_stats(samples, PRE, workers=0)
    values = np.array(colours, dtype=np.float64) / 255  # every image has the same pixel count
    expected_mean, expected_std = values.mean(axis=0), values.std(axis=0)
    expected_std[1] = 1 / 255  # the constant green channel gets the floor, not 0
    assert np.allclose(mean, expected_mean, rtol=0, atol=1e-6)
    assert np.allclose(std, expected_std, rtol=0, atol=1e-6)
    assert all(isinstance(v, float) for v in (*mean, *std))


def test_noisy_images_match_numpy_over_all_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(5)]
    samples = []
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        samples.append(Sample(tmp_path / f"{i}.png", None))
    mean, std = channel_stats(samples, PRE, workers=0, batch_size=2)
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 255
    assert np.allclose(mean, pixels.mean(axis=0), rtol=0, atol=1e-9)
    assert np.allclose(std, pixels.std(axis=0), rtol=0, atol=1e-9)


def test_a_large_split_is_sampled_with_the_seed(tmp_path: Path) -> None:
    samples = [_solid(tmp_path / f"{i}.png", (i * 20, 0, 255 - i * 20)) for i in range(10)]
    a = channel_stats(samples, PRE, max_images=4, seed=1, workers=0)
    assert channel_stats(samples, PRE, max_images=4, seed=1, workers=0) == a
    assert channel_stats(samples, PRE, max_images=4, seed=2, workers=0) != a
    assert channel_stats(samples, PRE, workers=0) != a  # all ten
    assert math.isclose(a[0][0] + a[0][2], 1.0, abs_tol=1e-9)  # red + blue = 255 in every image


def test_no_decodable_image_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GraftError, match="could be decoded"):
        channel_stats([Sample(tmp_path / "gone.png", 0)], PRE, workers=0)
