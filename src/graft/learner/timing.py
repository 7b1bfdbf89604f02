"""A recipe chosen by time: estimate the run on this machine before it starts and, under
``--time-budget``, pick the most accurate recipe whose estimate fits.

The recipes, from most to least accurate: ``full`` (every body block unfrozen, trained on the
images), ``top`` (the last stage trained on cached activations of the frozen prefix) and
``frozen`` (the head alone, on cached features).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.data.transforms import Preprocessing
from graft.engine.cached import augmentation
from graft.engine.estimate import Estimate, duration, estimates, measure
from graft.engine.optim import select_blocks
from graft.features.cache import FeatureCache, default_cache_root, file_hash
from graft.features.extract import body_key
from graft.features.views import augmented_views, eval_view
from graft.infrastructure.config import ResolvedConfig, parse_duration
from graft.infrastructure.runtime import precision_plan
from graft.models import ModelSpec, body_blocks
from graft.models.split import PrefixSplit, prefix_split

RECIPES = {
    "full": "full unfreeze on the images",
    "top": "top stages on cached activations",
    "frozen": "frozen head",
}
# Beyond this, a plan that unfreezes on the images says so, and what to pass instead.
LONG_SECONDS = 600.0
# Training images whose cache entries are looked up to guess how much is cached already.
CACHE_PROBE = 16


def plan_by_time(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    run: ResolvedConfig,
    device: torch.device,
    top: list[str],
    log: Callable[[str], None],
) -> tuple[ResolvedConfig, dict]:
    """Measure this machine, log the estimate, and under ``run.time_budget`` return the config of
    the recipe chosen. Returns the (possibly changed) config and what to record in the run's
    metrics (each recipe's estimated seconds, and the recipe chosen).

    Args:
        top: The model's default blocks of the ``top`` recipe.
    """
    if run.mode != "finetune" or not data.splits.get("train"):
        return run, {}
    budget = parse_duration(run.time_budget) if run.time_budget else None
    names = [n for n, _ in body_blocks(model, spec)]
    trained = names if not run.unfreeze or run.unfreeze == ["all"] else select_blocks(names, run.unfreeze)
    asked = _split(model, spec, pre, run, trained)
    split = asked if budget is None else _split(model, spec, pre, run, top)
    on_images = run.epochs > 0 and asked is None
    plan = precision_plan(run.precision, device)
    costs = measure(
        model, pre, data, run, device, split=split, full=budget is not None or on_images, precision=plan.train
    )
    views = max(1, run.cache_views if run.augment else 1)
    counts = (len(data.splits["train"]), len(data.splits.get("val", [])), views)
    found = estimates(
        costs, *counts, run.freeze_epochs, run.epochs, _uncached(model, spec, pre, data, run, device)
    )
    record = {"estimate_seconds": {k: round(e.total, 1) for k, e in found.items()}}
    where = f"this {device.type}"
    if budget is not None:
        chosen = _choose(found, budget)
        record["recipe"] = chosen
        shown = ", ".join(f"{RECIPES[k]} {duration(e.total)}" for k, e in found.items())
        log(f"estimate on {where}: {shown}")
        about = duration(found[chosen].total)
        log(f"time budget {duration(budget)}: running {RECIPES[chosen]} (about {about})")
        return _apply(run, chosen, top), record
    mine = found["full" if on_images else "top" if run.epochs and "top" in found else "frozen"]
    upto = " if the frozen head stays below --unfreeze-below" if run.unfreeze_below is not None else ""
    log(
        f"estimate on {where}: about {duration(mine.total)} (features {duration(mine.extract)}, "
        f"training {duration(mine.train)}{upto})"
    )
    if on_images and device.type == "cpu" and mine.total > LONG_SECONDS:
        log(
            f"note: the unfrozen epochs on the images will take up to {duration(mine.total)} here; "
            "for a faster run pass --unfreeze auto (the top stages on cached activations), "
            "--time-budget 10m, or --epochs 0 (the frozen head)"
        )
    return run, record


def _split(
    model: nn.Module, spec: ModelSpec, pre: Preprocessing, run: ResolvedConfig, trained: list[str]
) -> PrefixSplit | None:
    if not run.cache_prefix or run.compile:
        return None
    return prefix_split(model, spec, trained, pre.input_size)


def _choose(found: dict[str, Estimate], budget: float) -> str:
    """The most accurate recipe whose estimate fits ``budget`` (the frozen head if none does)."""
    return next((k for k in ("full", "top") if k in found and found[k].total <= budget), "frozen")


def _apply(run: ResolvedConfig, recipe: str, top: list[str]) -> ResolvedConfig:
    """``run`` changed to follow ``recipe``."""
    if recipe == "full":
        return dataclasses.replace(run, unfreeze=["all"])
    if recipe == "top":
        return dataclasses.replace(run, unfreeze=list(top), cache_prefix=True)
    return dataclasses.replace(run, epochs=0, unfreeze_below=None)


def _uncached(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    run: ResolvedConfig,
    device: torch.device,
) -> float:
    """Share of a few training images whose first view's features are not cached yet."""
    samples = data.splits["train"][:CACHE_PROBE]
    views = augmented_views(pre, augmentation(run), run.cache_views, run.seed) or [eval_view(pre)]
    cache = FeatureCache(
        default_cache_root(), body_key(model, spec, pre, precision_plan(run.precision, device).features)
    )
    keys = []
    for s in samples:
        try:
            keys.append(f"{views[0].key}:{file_hash(s.path)}")
        except OSError:
            continue
    if not keys:
        return 1.0
    return 1.0 - len(cache.get(keys)) / len(keys)
