"""Forward passes in eval mode over a loader: what validation, feature extraction and
prediction share."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from graft.data.loaders import Batch
from graft.infrastructure.distributed import quiet
from graft.infrastructure.errors import SkippedFileWarning
from graft.infrastructure.memory import Pieces
from graft.infrastructure.runtime import autocast, channels_last


def split_outputs(out: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits from a forward pass.

    Inception v3 and GoogLeNet return named tuples with auxiliary logits in train mode.
    """
    if isinstance(out, torch.Tensor):
        return out, []
    if isinstance(out, tuple) and hasattr(out, "logits"):
        aux = [
            t
            for name, t in zip(out._fields, out, strict=True)
            if name != "logits" and isinstance(t, torch.Tensor)
        ]
        return out.logits, aux
    raise TypeError(f"unexpected model output type {type(out).__name__}")


@torch.inference_mode()
def infer(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    desc: str = "predict",
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Run ``model`` in eval mode over ``loader``.

    Out of memory, each batch goes through in pieces (:class:`~graft.infrastructure.memory.Pieces`).

    Returns:
        ``(logits, indices, failed)``: float32 logits on the CPU for every decodable sample, the
        sample index of each row, and the indices of samples that could not be decoded.
    """
    model.eval()
    pieces = Pieces(desc)
    outs, idx, failed = [], [], []

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return split_outputs(model(channels_last(x)))[0].float().cpu()

    for batch in tqdm(loader, desc=desc, leave=False, unit="batch", disable=quiet()):
        batch: Batch
        failed += batch.failed
        if batch.images.numel() == 0:
            continue
        outs += pieces.run(forward, batch.images.to(device, non_blocking=True))
        idx.append(batch.indices)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), failed
    return torch.cat(outs), torch.cat(idx), failed


def warn_failed(failed: Sequence[int], paths: Sequence[object]) -> None:
    """One warning per file that could not be decoded during a pass."""
    for i in failed:
        warnings.warn(f"skipped {paths[i]}: the image could not be decoded", SkippedFileWarning, stacklevel=2)
