"""Finding, labeling, splitting and loading image datasets.

Names are imported on first use: ``graft.data.images``, ``dataset``, ``selection`` and ``resize``
need only Pillow and NumPy, so the ONNX runtime path can use them without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "IMAGE_EXTENSIONS": "graft.data.images",
    "Augmentation": "graft.data.transforms",
    "Batch": "graft.data.loaders",
    "ImageData": "graft.data.dataset",
    "Preprocessing": "graft.data.transforms",
    "Sample": "graft.data.dataset",
    "channel_stats": "graft.data.stats",
    "eval_transform": "graft.data.transforms",
    "is_image_file": "graft.data.images",
    "list_images": "graft.data.images",
    "load_class_folder": "graft.data.dataset",
    "load_image": "graft.data.images",
    "make_loader": "graft.data.loaders",
    "train_transform": "graft.data.transforms",
}

__all__ = [
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "Batch",
    "ImageData",
    "Preprocessing",
    "Sample",
    "channel_stats",
    "eval_transform",
    "is_image_file",
    "list_images",
    "load_class_folder",
    "load_image",
    "make_loader",
    "train_transform",
]

if TYPE_CHECKING:
    from graft.data.dataset import ImageData, Sample, load_class_folder
    from graft.data.images import IMAGE_EXTENSIONS, is_image_file, list_images, load_image
    from graft.data.loaders import Batch, make_loader
    from graft.data.stats import channel_stats
    from graft.data.transforms import Augmentation, Preprocessing, eval_transform, train_transform


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'graft.data' has no attribute {name!r}")
