"""A body cut in two: a frozen prefix whose output is computed once and cached, and the top
stages that train on it (cached-prefix fine-tuning).

Most of what unfreezing a pretrained body buys comes from its last stages, and on a CPU a full
backward pass through the early, high-resolution layers costs most of a training step. So graft
runs the frozen prefix once per image and view, keeps the activation that enters the first
trained block, and trains only the top (:class:`Suffix`) on those activations.

How the model is cut needs no per-architecture code: one traced forward pass records the order
in which modules run; the modules that finish before the first trained block starts are the
prefix, and the suffix is the model's own ``forward`` with each of them swapped for an identity.
:func:`prefix_split` checks on a random input that suffix(prefix(x)) equals the model's output,
and gives None (train on the images) for models where it does not (a prefix that also does
work outside its modules, such as inception's input transform).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from graft.models.factory import ModelSpec, body_blocks

# Transformers whose feature_info is one entry per block (same reduction): train this share of
# the blocks at the top.
ISOTROPIC_TOP_SHARE = 6


@dataclass(frozen=True)
class PrefixSplit:
    """Where a model is cut.

    Attributes:
        first: Name of the first trained module: its input is the cached activation.
        prefix: Modules that run before it (outermost only), skipped by the suffix.
        shape: Shape of one image's activation (without the batch dimension).
        skip_pos_embed: The prefix includes a timm ViT's patch embedding, whose position
            embedding (a method, not a module) the suffix must skip too.
    """

    first: str
    prefix: tuple[str, ...]
    shape: tuple[int, ...]
    skip_pos_embed: bool = False

    def describe(self) -> str:
        """``blocks.0 .. blocks.4`` style summary of the prefix."""
        shape = "x".join(str(s) for s in self.shape)
        return (
            f"{self.prefix[0]} .. {self.prefix[-1]} ({shape} per image, cached), training from {self.first}"
        )


def default_top(model: nn.Module, spec: ModelSpec, input_size: int) -> list[str]:
    """The body blocks that cached-prefix fine-tuning trains by default: the model's last stage
    and what follows it (EfficientNet/Lite: the last two ``blocks`` groups, of stride 32, plus
    ``conv_head``; ResNet: ``layer4``; ConvNeXt: the last stage; ViT: the last sixth of the blocks).

    The stage boundary comes from timm's ``feature_info`` (the module that ends the second-to-last
    reduction). Models without one (torchvision's) are traced on a random input: the last stage
    starts at the first body block whose output has the final spatial size.
    """
    names = [name for name, _ in body_blocks(model, spec)]
    modules = _info_modules(getattr(model, "feature_info", None))
    boundary = None
    if len(modules) >= 2:
        reductions = [r for _, r in modules]
        if len(set(reductions)) == 1:  # a ViT: every block is a "stage"
            boundary = modules[-1 - max(1, len(modules) // ISOTROPIC_TOP_SHARE)][0]
        else:
            boundary = modules[-2][0]
    inside = [i for i, n in enumerate(names) if boundary and (_within(boundary, n) or _within(n, boundary))]
    if inside:
        return names[inside[-1] + 1 :] or names[-1:]
    sizes = _output_sizes(model, names, input_size)
    final = next((sizes[n] for n in reversed(names) if n in sizes), None)
    first = next((i for i, n in enumerate(names) if final and sizes.get(n) == final), None)
    if first is None or first == 0:
        return names[-2:]
    return names[first:]


def _output_sizes(model: nn.Module, names: list[str], input_size: int) -> dict[str, tuple[int, ...]]:
    """Spatial size of each body block's output (4-d outputs only), from one forward pass."""
    sizes: dict[str, tuple[int, ...]] = {}

    def record(name: str, out: object) -> None:  # returns None: the output is left as it is
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            sizes.setdefault(name, tuple(out.shape[2:]))

    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: record(n, o)) for n in names]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, input_size, input_size, device=device))
    except Exception:  # a model that cannot be traced this way: the caller falls back
        return {}
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sizes


def _info_modules(info: object) -> list[tuple[str, int]]:
    """``(module, reduction)`` of each entry of a timm ``feature_info`` (list or FeatureInfo)."""
    entries = getattr(info, "info", info)
    if not isinstance(entries, list):
        return []
    out = []
    for e in entries:
        if isinstance(e, dict) and isinstance(e.get("module"), str):
            out.append((e["module"], int(e.get("reduction", 0))))
    return out


def _within(name: str, block: str) -> bool:
    """Module ``name`` is ``block`` or inside it."""
    return name == block or name.startswith(block + ".")


def prefix_split(
    model: nn.Module, spec: ModelSpec, trained: list[str], input_size: int
) -> PrefixSplit | None:
    """The cut of ``model`` before the first of the ``trained`` body blocks, checked on a random
    input; None when nothing is left frozen before them or the cut does not reproduce the model.

    Args:
        trained: Body blocks that train (names from :func:`~graft.models.body_blocks`).
        input_size: Side of the input images.
    """
    names = [name for name, _ in body_blocks(model, spec)]
    chosen = [n for n in names if n in set(trained)]
    if not chosen or chosen[0] == names[0]:
        return None
    first = chosen[0]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return _traced_split(model, first, torch.randn(2, 3, input_size, input_size, device=device))
    finally:
        model.train(was_training)


@torch.no_grad()
def _traced_split(model: nn.Module, first: str, x: torch.Tensor) -> PrefixSplit | None:
    """Trace which modules finish before ``first`` starts, then check the cut reproduces the output."""
    events: list[tuple[str, str]] = []
    captured: list[torch.Tensor] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: events.append(("start", n))))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: events.append(("end", n))))
    target = model.get_submodule(first)
    handles.append(
        target.register_forward_pre_hook(lambda m, a: captured.append(a[0]) if not captured else None)
    )
    try:
        full = _logits(model(x))
    finally:
        for h in handles:
            h.remove()
    start = events.index(("start", first))
    done = [n for kind, n in events[:start] if kind == "end"]
    late = {n for kind, n in events[start:]}
    if any(n in late for n in done) or not captured:  # a module that also runs after the cut
        return None
    outermost = tuple(
        n for n in dict.fromkeys(done) if not any(n.startswith(o + ".") for o in done if o != n)
    )
    skip_pos = any(_within(n, "patch_embed") for n in outermost) and hasattr(model, "_pos_embed")
    split = PrefixSplit(first, outermost, tuple(captured[0].shape[1:]), skip_pos)
    try:
        got = _logits(Suffix(model, split)(captured[0]))
    except Exception:  # the forward does more than its modules before the cut (inception)
        return None
    if got.shape != full.shape or not torch.allclose(got, full, rtol=1e-3, atol=1e-4):
        return None
    return split


def _logits(out: object) -> torch.Tensor:
    """The main output of a forward pass (inception-style tuples: their first tensor)."""
    return out if isinstance(out, torch.Tensor) else next(t for t in out if isinstance(t, torch.Tensor))


class Suffix(nn.Module):
    """The top of ``model`` as a module: cached activations in, the model's output out.

    Its parameters are the model's own (nothing is copied): training it trains the model. Each
    forward swaps the prefix modules for identities, runs ``model``, and puts them back.
    """

    def __init__(self, model: nn.Module, split: PrefixSplit) -> None:
        super().__init__()
        self.model, self.split = model, split

    def forward(self, activations: torch.Tensor) -> object:
        with skipped(self.model, self.split):
            return self.model(activations)


@contextlib.contextmanager
def skipped(model: nn.Module, split: PrefixSplit) -> Iterator[None]:
    """``model`` with its prefix modules replaced by identities, for the duration."""
    saved = []
    for name in split.prefix:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        saved.append((parent, attr, parent._modules[attr]))
        parent._modules[attr] = nn.Identity()
    if split.skip_pos_embed:
        model._pos_embed = _identity  # an instance attribute shadows timm's method
    try:
        yield
    finally:
        for parent, attr, module in reversed(saved):
            parent._modules[attr] = module
        if split.skip_pos_embed:
            del model._pos_embed


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
