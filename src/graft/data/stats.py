"""Statistics of a dataset's images: the per-channel mean and std to normalise with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import transforms as T

from graft.data.dataset import Sample
from graft.data.loaders import make_loader
from graft.data.transforms import Preprocessing, ResizeCenterCrop
from graft.infrastructure.errors import GraftError

# Images read for the statistics at most: a seeded sample of a larger split.
MAX_STAT_IMAGES = 5000
# The smallest std returned: a channel that is (almost) constant must not blow up the input.
MIN_STD = 1 / 255


def channel_stats(
    samples: Sequence[Sample],
    pre: Preprocessing,
    *,
    max_images: int = MAX_STAT_IMAGES,
    seed: int = 0,
    workers: int | None = None,
    batch_size: int = 256,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of the images as the eval transform sees them.

    Each image is resized and centre-cropped to ``pre``'s input size (no normalisation; pixels in
    [0, 1]); the statistics are exact over every pixel of those crops (streaming integer sums of
    the 8-bit values, then float64; the population std, as CIFAR-10's usual 0.2470, 0.2435,
    0.2616). When there are more
    than ``max_images`` samples, a sample of ``max_images`` of them drawn with ``seed`` is used.
    Files that cannot be decoded are left out, as everywhere in graft. A std below one grey level
    (1/255: a constant channel) is raised to it, so normalising never divides by zero.

    Returns:
        ``(mean, std)``, three floats each (R, G, B).

    Raises:
        GraftError: If no image could be decoded.
    """
    chosen = list(samples)
    if len(chosen) > max_images:
        picked = np.random.default_rng(seed).choice(len(chosen), size=max_images, replace=False)
        chosen = [chosen[i] for i in sorted(picked)]
    loader = make_loader(
        chosen,
        T.Compose([ResizeCenterCrop(pre), T.PILToTensor()]),  # uint8, 3 x H x W
        batch_size=batch_size,
        workers=workers,
        min_size=pre.resize_size,
    )
    # Sums of 8-bit values and of their squares in int64 are exact (no overflow below 10^14 pixels).
    total = torch.zeros(3, dtype=torch.int64)
    squares = torch.zeros(3, dtype=torch.int64)
    pixels = 0
    for batch in loader:
        if batch.images.numel() == 0:
            continue
        x = batch.images.to(torch.int64).transpose(0, 1).reshape(3, -1)
        total += x.sum(dim=1)
        squares += (x * x).sum(dim=1)
        pixels += x.shape[1]
    if pixels == 0:
        raise GraftError(
            f"none of the {len(chosen)} training images could be decoded to compute their mean and std"
        )
    mean = total.double() / (255 * pixels)
    var = squares.double() / (255 * 255 * pixels) - mean * mean
    std = var.clamp(min=0).sqrt().clamp(min=MIN_STD)
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]
