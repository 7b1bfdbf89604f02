"""Running out of memory: cut each batch into pieces instead of crashing."""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

from graft.infrastructure.distributed import world
from graft.infrastructure.errors import GraftError

T = TypeVar("T")

# What torch says when an allocation fails: CUDA and MPS raise torch.OutOfMemoryError (or a
# RuntimeError naming it); the CPU allocator raises a RuntimeError from alloc_cpu.cpp.
_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is torch failing to allocate memory (GPU or CPU)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _MESSAGES)


def free_memory() -> None:
    """Give cached blocks back to the device after a failed allocation."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


class Pieces:
    """How many pieces each batch is cut into: 1 until memory runs out, then doubled each time.

    The count is kept, so a run that ran out once goes on in pieces without failing again.
    Training accumulates the pieces' gradients into one optimizer step, so ``--batch-size``, the
    learning rate and the schedule keep their meaning (BatchNorm layers in train mode see the
    smaller pieces).

    Args:
        what: What runs, for the warning (e.g. ``"training"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 1

    def run(
        self,
        fn: Callable[..., T],
        *tensors: torch.Tensor,
        before: Callable[[], None] | None = None,
    ) -> list[T]:
        """``fn`` on each piece of ``tensors`` (cut along the first dimension), in order.

        Args:
            fn: Called with one piece of each tensor.
            before: Called before every attempt (training zeroes the gradients there, so an
                attempt that failed half-way leaves nothing behind).

        Raises:
            GraftError: If memory runs out with one image per piece, or under torch.distributed
                (the ranks must take identical steps).
        """
        size = tensors[0].shape[0]
        while True:
            if before is not None:
                before()
            try:
                split = [t.tensor_split(self.count) for t in tensors]
                return [fn(*parts) for parts in zip(*split, strict=True)]
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                if self.count >= size or world().enabled:
                    where = "" if self.count < size else " with one image at a time"
                    raise GraftError(
                        f"out of memory during {self.what}{where}: lower --batch-size or --input-size, "
                        "or pick a smaller model"
                    ) from None
            # Outside the except block, so the failed attempt's tensors are already released.
            free_memory()
            self.count = min(2 * self.count, size)
            warnings.warn(
                f"out of memory during {self.what} with {size} images at once: going on in "
                f"{self.count} pieces of at most {math.ceil(size / self.count)}",
                stacklevel=2,
            )
