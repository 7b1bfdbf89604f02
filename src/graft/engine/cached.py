"""What the cached passes share: the training views, and one extraction of train and val that
fills the feature cache and, for cached-prefix fine-tuning, the activation cache."""

from __future__ import annotations

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.data.transforms import Augmentation, Preprocessing
from graft.features.activations import ActivationCache, activation_key
from graft.features.cache import FeatureCache, default_cache_root, tensor_hash
from graft.features.extract import CACHE_FORMAT, ActivationTap, Features, body_key, extract_features
from graft.features.views import augmented_views, eval_view
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.runtime import PrecisionPlan, inference_batch_size
from graft.models import ModelSpec
from graft.models.split import PrefixSplit


def augmentation(cfg: TrainConfig) -> Augmentation:
    """The training augmentation a config asks for."""
    return Augmentation(
        enabled=cfg.augment,
        min_scale=cfg.min_scale,
        crop_padding=cfg.crop_padding,
        rotate=cfg.rotate,
        jitter=cfg.jitter,
    )


def prefix_key(
    model: nn.Module, spec: ModelSpec, pre: Preprocessing, precision: str, split: PrefixSplit
) -> str:
    """The cache key of a frozen prefix: its modules' tensors, the cut, preprocessing, precision
    (the top's weights are not in it: they change while the activations stay valid)."""
    inside = tuple(split.prefix)
    tensors = [(k, v) for k, v in model.state_dict().items() if any(k.startswith(p + ".") for p in inside)]
    extra = {
        "format": CACHE_FORMAT,
        "arch": spec.arch,
        "source": spec.source,
        "build_kwargs": spec.build_kwargs,
        "preprocessing": pre.to_dict(),
        "precision": precision,
        "prefix": list(inside),
    }
    return activation_key(tensor_hash(tensors, extra), split.first, split.shape)


def activation_cache(
    model: nn.Module, spec: ModelSpec, pre: Preprocessing, precision: str, split: PrefixSplit
) -> ActivationCache:
    """The activation cache of ``split`` computed in ``precision``."""
    return ActivationCache(default_cache_root(), prefix_key(model, spec, pre, precision, split))


def extract_splits(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    cfg: TrainConfig,
    device: torch.device,
    plan: PrecisionPlan,
    split: PrefixSplit | None = None,
) -> tuple[Features, Features]:
    """Features of train (its cached views, in ``plan.features``) and val (the eval view, in
    ``plan.inference``), through the feature cache; with ``split``, the same passes also cache
    the prefix's activations (train stored in bfloat16, val in float32: val scores then match
    what ``graft evaluate`` computes from the images)."""
    train_views = augmented_views(pre, augmentation(cfg), cfg.cache_views, cfg.seed) or [eval_view(pre)]
    jobs = [(data.splits["train"], train_views), (data.splits.get("val", []), [eval_view(pre)])]
    kinds = ("bfloat16", "float32")
    if plan.features == plan.inference:  # one pass over both
        train, val = _cached(model, spec, pre, jobs, device, plan.features, cfg, split, kinds)
    else:
        (train,) = _cached(model, spec, pre, jobs[:1], device, plan.features, cfg, split, kinds[:1])
        (val,) = _cached(model, spec, pre, jobs[1:], device, plan.inference, cfg, split, kinds[1:])
    return train, val


def _cached(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    jobs: list[tuple[list, list]],
    device: torch.device,
    precision: str,
    cfg: TrainConfig,
    split: PrefixSplit | None,
    kinds: tuple[str, ...],
) -> list[Features]:
    """:func:`extract_features` through the caches of the body in ``precision``."""
    tap = None
    if split is not None:
        tap = ActivationTap(split.first, activation_cache(model, spec, pre, precision, split), kinds)
    return extract_features(
        model,
        spec,
        pre,
        jobs,
        device,
        cache=FeatureCache(default_cache_root(), body_key(model, spec, pre, precision)),
        precision=precision,
        batch_size=inference_batch_size(device, cfg.batch_size),
        workers=cfg.workers,
        tap=tap,
    )
