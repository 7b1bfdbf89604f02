"""Preprocessing that follows the model: size, mean, std, interpolation and crop fraction."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from PIL import Image
from torchvision import transforms as T

from graft.data.resize import center_crop_box
from graft.infrastructure import checks


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input images.

    Attributes:
        input_size: Side of the square crop fed to the network, in pixels.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by after the mean.
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
        crop_pct: Eval-time centre crop fraction: the shorter side is resized to
            ``round(input_size / crop_pct)`` and then centre-cropped to ``input_size``.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    @property
    def resize_size(self) -> int:
        """Shorter-side size before the eval centre crop."""
        return round(self.input_size / self.crop_pct)

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """Inverse of :meth:`to_dict`, every field checked (a run file may come from anyone).

        Raises:
            GraftError: A field missing, unknown, of the wrong type or out of range, named.
        """
        return cls(**checks.preprocessing(d))


@dataclass(frozen=True)
class Augmentation:
    """Train-time augmentation. ``enabled=False`` uses the eval transform for training too.

    Attributes:
        enabled: Apply augmentation at all.
        min_scale: Smallest area fraction kept by the random resized crop.
        crop_padding: When > 0, CIFAR-style cropping instead of the random resized crop: the eval
            view (resize and centre crop), zero-padded by this many pixels on each side, then a
            random crop of the input size (a shift of up to this many pixels).
        hflip: Probability of a horizontal flip.
        rotate: Largest rotation in degrees (either direction); 0 disables it.
        jitter: Strength of brightness/contrast/saturation jitter; 0 disables it.
    """

    enabled: bool = True
    min_scale: float = 0.35
    crop_padding: int = 0
    hflip: float = 0.5
    rotate: float = 10.0
    jitter: float = 0.2


_INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def _interp(name: str) -> T.InterpolationMode:
    return _INTERPOLATIONS.get(name, T.InterpolationMode.BILINEAR)


class ResizeCenterCrop:
    """``Resize(resize_size)`` then ``CenterCrop(input_size)`` in one resampling of the crop box.

    Pillow resamples only the source region that ends up in the crop (``Image.resize(box=...)``),
    which is 1.8× faster on hymenoptera's photos (1.4 vs 2.5 ms per image); the pixels differ from
    the two-step result by 0.008 grey levels on average (rounding of the intermediate image).
    Falls back to the two torchvision steps when the crop is larger than the resized image.
    """

    def __init__(self, pre: Preprocessing) -> None:
        self.size, self.resize = pre.input_size, pre.resize_size
        self.mode = _interp(pre.interpolation)
        self.fallback = T.Compose([T.Resize(self.resize, interpolation=self.mode), T.CenterCrop(self.size)])

    def __call__(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            return self.fallback(image)
        box = center_crop_box(*image.size, self.size, self.resize)
        if box is None:
            return self.fallback(image)
        return image.resize((self.size, self.size), _PIL_RESAMPLE[self.mode], box=box)


_PIL_RESAMPLE = {
    T.InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    T.InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    T.InterpolationMode.NEAREST: Image.Resampling.NEAREST,
}


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize the shorter side to ``pre.resize_size``, centre-crop, normalise."""
    return T.Compose([ResizeCenterCrop(pre), T.ToTensor(), T.Normalize(pre.mean, pre.std)])


class CornerCrop:
    """Crop a ``size`` square from the top-left (``first``) or the bottom-right corner."""

    def __init__(self, size: int, first: bool) -> None:
        self.size, self.first = size, first

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        left, top = (0, 0) if self.first else (max(w - self.size, 0), max(h - self.size, 0))
        return image.crop((left, top, left + self.size, top + self.size))


def corner_transform(pre: Preprocessing, first: bool) -> T.Compose:
    """:func:`eval_transform` with a corner crop (top-left or bottom-right) instead of the centre;
    a test-time augmentation view."""
    return T.Compose(
        [
            T.Resize(pre.resize_size, interpolation=_interp(pre.interpolation)),
            CornerCrop(pre.input_size, first),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def train_transform(pre: Preprocessing, aug: Augmentation) -> T.Compose:
    """Random resized crop (or, with ``crop_padding``, the eval view padded and randomly cropped),
    flip, small rotation and colour jitter, then normalise."""
    if not aug.enabled:
        return eval_transform(pre)
    if aug.crop_padding > 0:
        steps: list = [ResizeCenterCrop(pre), T.RandomCrop(pre.input_size, padding=aug.crop_padding)]
    else:
        steps = [
            T.RandomResizedCrop(
                pre.input_size, scale=(aug.min_scale, 1.0), interpolation=_interp(pre.interpolation)
            )
        ]
    if aug.hflip > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.rotate > 0:
        steps.append(T.RandomRotation(aug.rotate, interpolation=T.InterpolationMode.BILINEAR))
    if aug.jitter > 0:
        steps.append(T.ColorJitter(aug.jitter, aug.jitter, aug.jitter))
    steps += [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    return T.Compose(steps)
