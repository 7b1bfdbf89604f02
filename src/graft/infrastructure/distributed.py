"""Several processes, one training run: torch.distributed as ``torchrun`` launches it.

``torchrun --nproc_per_node N -m graft train DATA`` starts N copies of graft with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment.
:func:`init_from_env` joins them into one process group (NCCL on GPUs, Gloo on CPUs). Then:

* unfrozen epochs run under DistributedDataParallel, each rank on its own part of the training
  images (a DistributedSampler) with ``batch_size / world_size`` images per step, so the global
  batch, and with it the learning rate, is the same at any number of processes;
* validation is split the same way and the logits are gathered, so every rank computes the same
  metrics from the same numbers;
* frozen-body features are computed in shards, one per rank, and gathered; the head's epochs on
  them (milliseconds each) run on every rank alike;
* rank 0 alone reads and writes the feature cache, logs, and writes the run folder.

Outside torchrun every helper here is a no-op for a world of one process.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from graft.infrastructure.errors import GraftError

T = TypeVar("T")

# Collectives wait this long for a slow or dead rank before failing (torch's default is 10 min
# for Gloo and NCCL; a feature pass over a large folder on one rank can take longer).
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes."""
        return self.rank == 0


_alone = False  # set inside local(): this rank works on its own for a while


def world() -> World:
    """This process's place in the initialised process group (a world of one without one,
    or inside :func:`local`)."""
    if _alone or not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Run a block on this rank alone, as a world of one (no collectives, no sharding): for work
    that rank 0 does while the others wait, such as the learning-rate range test."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def main_only(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on rank 0; a log that drops every line on the other ranks."""
    return log if world().is_main else _drop


def _drop(line: str) -> None:
    pass


def quiet() -> bool | None:
    """``disable=`` for tqdm: off on ranks other than 0; None (on for terminals) on rank 0."""
    return None if world().is_main else True


def launched() -> bool:
    """Whether torchrun (or another launcher setting ``WORLD_SIZE``) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> World:
    """Join the process group that the launcher's environment describes.

    The backend follows the device: NCCL when this rank will train on CUDA, else Gloo. On CUDA
    each rank takes the GPU of its ``LOCAL_RANK``, whatever index ``device`` names. Ranks other
    than 0 ignore warnings from here on; their progress bars and logs are off through
    :func:`quiet` and :func:`main_only`, so a run prints one log.

    Args:
        device: The run's ``--device`` (``auto``, ``cpu``, ``cuda``...).

    Raises:
        GraftError: When the launcher's variables are incomplete or torch lacks distributed support.
    """
    if not launched():
        return World()
    if dist.is_initialized():
        return world()
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise GraftError(
            f"WORLD_SIZE is set but {', '.join(missing)} not: launch distributed runs with torchrun"
        )
    if not dist.is_available():
        raise GraftError("this torch build has no torch.distributed support")
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise GraftError(f"device '{device}' asked for, but CUDA is not available on this machine")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    here = world()
    if not here.is_main:
        warnings.simplefilter("ignore")  # rank 0 warns about what every rank sees
    return here


def backend() -> str:
    """The process group's backend (``gloo``, ``nccl``), or ``none``."""
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"


def shutdown() -> None:
    """Leave the process group (after a barrier, so no rank leaves while others still talk)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, here: World) -> int:
    """Each rank's share of a global batch.

    Raises:
        GraftError: When the batch does not split evenly over the processes.
    """
    if batch_size % here.size:
        raise GraftError(
            f"--batch-size {batch_size} is the global batch and must split evenly over "
            f"{here.size} processes; choose a multiple of {here.size}"
        )
    return batch_size // here.size


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable: tensors, lists, dicts), in rank order, on every rank."""
    here = world()
    if not here.enabled:
        return [obj]
    out: list = [None] * here.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    if not world().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def main_first(work: Callable[[], object]) -> None:
    """Run ``work`` on rank 0 while the other ranks wait, then raise its GraftError on every rank.

    For a download every rank then finds in the cache, instead of each fetching its own copy.
    """
    if not world().enabled:
        return
    error = None
    if world().is_main:
        try:
            work()
        except GraftError as e:
            error = str(e)
    error = broadcast(error)
    if error is not None:
        raise GraftError(error)


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over the ranks (float64, so counts stay exact)."""
    here = world()
    if not here.enabled:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def shard(items: Sequence[T], here: World | None = None) -> list[T]:
    """This rank's share of ``items``: every ``size``-th one from position ``rank``."""
    here = here or world()
    return list(items[here.rank :: here.size])


def unshard(parts: Sequence[Sequence[T]], total: int) -> list[T]:
    """Undo :func:`shard`: interleave the ranks' parts back into the original order."""
    out: list = [None] * total
    for rank, part in enumerate(parts):
        out[rank :: len(parts)] = part
    return out


def sync_bn_view(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BatchNorm layers share batch statistics across ranks, and which
    shares every parameter and buffer with ``model``: training it trains ``model``, which keeps
    its plain BatchNorm layers for saving, folding and inference.

    timm's converter is used because it also converts timm's BatchNormAct2d (norm + activation
    in one module), which torch's own would turn into a bare norm. Torch's SyncBatchNorm runs
    on GPUs only.
    """
    from timm.layers import convert_sync_batchnorm

    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return convert_sync_batchnorm(copy.deepcopy(model, shared))
