"""Views: the ways an image becomes the network's input (eval, seeded augmentations, test-time
augmentation), each with a key the feature cache files its vectors under."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from graft.data.transforms import (
    Augmentation,
    Preprocessing,
    corner_transform,
    eval_transform,
    train_transform,
)
from graft.infrastructure.errors import GraftError


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
