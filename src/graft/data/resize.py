"""Resize-then-centre-crop geometry in Pillow alone (no torch), shared by training's transforms
and the ONNX runtime, so both cut exactly the same pixels."""

from __future__ import annotations

from PIL import Image

PIL_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def center_crop_box(width: int, height: int, size: int, resize: int) -> tuple[float, ...] | None:
    """The source box that, resized to ``size``², equals "resize the shorter side to ``resize``,
    then centre-crop ``size``" (torchvision's ``Resize(int)`` + ``CenterCrop``); None when the
    crop would be larger than the resized image."""
    # torchvision's Resize(int): the shorter side becomes `resize`, the longer one is truncated.
    if width <= height:
        rw, rh = resize, int(resize * height / width)
    else:
        rw, rh = int(resize * width / height), resize
    if min(rw, rh) < size:
        return None
    left, top = round((rw - size) / 2.0), round((rh - size) / 2.0)
    sx, sy = rw / width, rh / height
    return (left / sx, top / sy, (left + size) / sx, (top + size) / sy)


def resize_center_crop(image: Image.Image, size: int, resize: int, interpolation: str) -> Image.Image:
    """Resize the shorter side to ``resize`` and centre-crop ``size`` in one resampling; when the
    crop is larger than the resized image, the missing border is black (as torchvision pads)."""
    resample = PIL_RESAMPLE.get(interpolation, Image.Resampling.BILINEAR)
    box = center_crop_box(*image.size, size, resize)
    if box is not None:
        return image.resize((size, size), resample, box=box)
    w, h = image.size
    scale = resize / min(w, h)
    small = image.resize((max(1, int(w * scale)), max(1, int(h * scale))), resample)
    left, top = (small.width - size) // 2, (small.height - size) // 2
    return small.crop((left, top, left + size, top + size))
