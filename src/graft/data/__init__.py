"""Finding, labeling, splitting and loading image datasets."""

from graft.data.dataset import ImageData, Sample, load_class_folder
from graft.data.images import IMAGE_EXTENSIONS, is_image_file, list_images, load_image
from graft.data.loaders import Batch, make_loader
from graft.data.transforms import Augmentation, Preprocessing, eval_transform, train_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "Batch",
    "ImageData",
    "Preprocessing",
    "Sample",
    "eval_transform",
    "is_image_file",
    "list_images",
    "load_class_folder",
    "load_image",
    "make_loader",
    "train_transform",
]
