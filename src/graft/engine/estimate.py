"""How long a run will take on this machine, measured before it starts.

A few steps of each kind of work are timed on a handful of real training images (decoding, the
frozen body's forward pass, a training step of the whole network, a training step of the top on
activations of the frozen prefix), then scaled by the number of images and epochs. Steps run on
a copy of the model, so its weights and BatchNorm statistics are untouched.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.data.images import load_image
from graft.data.transforms import Preprocessing, train_transform
from graft.engine.cached import augmentation
from graft.features.forward import split_outputs
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.runtime import autocast, channels_last
from graft.models.split import PrefixSplit, Suffix

# Images per timed step: enough to time, few enough that measuring costs seconds on a CPU.
SAMPLE = 8
# A head epoch on cached features: per image, far below everything else (measured ~2e-5 s).
HEAD_SECONDS = 2e-5


@dataclass
class Costs:
    """Seconds per image of each kind of work on this machine.

    Attributes:
        decode: Reading, decoding and transforming one image.
        forward: The whole network's forward pass without gradients (features, validation).
        full_step: A training step through the whole network (forward and backward).
        top_step: A training step of the top on cached activations (None: not measured).
        top_forward: The top's forward pass without gradients (validation on activations).
    """

    decode: float
    forward: float
    full_step: float | None = None
    top_step: float | None = None
    top_forward: float | None = None


def _timed(fn: Callable[[], object], repeats: int = 1) -> float:
    """Seconds of one call of ``fn`` after a warm-up call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def measure(
    model: nn.Module,
    pre: Preprocessing,
    data: ImageData,
    cfg: TrainConfig,
    device: torch.device,
    *,
    split: PrefixSplit | None = None,
    full: bool = False,
    precision: str = "fp32",
) -> Costs:
    """Time each kind of work the run may do on :data:`SAMPLE` training images.

    Args:
        split: Also time the top's steps on activations of this cut.
        full: Also time a training step of the whole network (the slowest measurement).
        precision: Arithmetic of the timed passes.
    """
    transform = train_transform(pre, augmentation(cfg))
    images: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for s in data.splits["train"][: 2 * SAMPLE]:
        try:
            images.append(transform(load_image(s.path, pre.resize_size)))
        except Exception:  # an undecodable file is skipped here as in training (which warns)
            continue
        if len(images) == SAMPLE:
            break
    decode = (time.perf_counter() - t0) / max(len(images), 1)
    if not images:  # nothing decodes: time random inputs (training will say what is wrong)
        images = [torch.randn(3, pre.input_size, pre.input_size) for _ in range(SAMPLE)]
    x = channels_last(torch.stack(images).to(device))
    work = copy.deepcopy(model).eval()
    captured: list[torch.Tensor] = []

    def forward() -> None:
        with torch.inference_mode(), autocast(device, precision):
            work(x)

    costs = Costs(decode=decode, forward=_timed(forward) / len(x))
    if full:
        costs.full_step = _timed(lambda: _step(work, x, device, precision)) / len(x)
    if split is not None:
        hook = work.get_submodule(split.first).register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        with torch.no_grad():
            work(x)
        hook.remove()
        acts = captured[-1].detach().clone()
        top = Suffix(work, split)
        costs.top_step = _timed(lambda: _step(top, acts, device, precision), 2) / len(x)
        with torch.inference_mode():
            costs.top_forward = _timed(lambda: top(acts)) / len(x)
    return costs


def _step(net: nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> None:
    """Forward and backward of ``net`` on ``x`` in train mode (BatchNorm statistics fixed, as with
    ``--freeze-bn``; the copy is thrown away anyway)."""
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    with autocast(device, precision):
        logits, _ = split_outputs(net(x))
        loss = logits.float().logsumexp(1).mean()
    loss.backward()
    for p in net.parameters():
        p.grad = None


@dataclass
class Estimate:
    """Seconds a recipe is expected to take (``extract``: features and activations, once)."""

    recipe: str
    extract: float
    train: float

    @property
    def total(self) -> float:
        return self.extract + self.train


def estimates(
    costs: Costs, n_train: int, n_val: int, views: int, frozen_epochs: int, epochs: int, uncached: float
) -> dict[str, Estimate]:
    """Expected seconds of each recipe from measured per-image ``costs``.

    Args:
        views: Cached views per training image.
        uncached: Fraction of the images whose features are not cached yet (0 to 1).
    """
    extract = uncached * ((n_train + n_val) * costs.decode + (n_train * views + n_val) * costs.forward)
    head = frozen_epochs * n_train * HEAD_SECONDS
    out = {"frozen": Estimate("frozen", extract, head)}
    if costs.top_step is not None:
        per_epoch = n_train * costs.top_step + n_val * (costs.top_forward or 0.0)
        out["top"] = Estimate("top", extract, head + epochs * per_epoch)
    if costs.full_step is not None:
        per_epoch = n_train * (costs.decode + costs.full_step) + n_val * (costs.decode + costs.forward)
        out["full"] = Estimate("full", extract, head + epochs * per_epoch)
    return out


def duration(seconds: float) -> str:
    """``40 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
