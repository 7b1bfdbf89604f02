"""Device choice, seeding and mixed precision."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from graft.config import PRECISIONS
from graft.errors import GraftError
from graft.training.distributed import world


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; other names are checked.

    Under torchrun, ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``).

    Raises:
        GraftError: For a device that is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return _this_gpu()
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GraftError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GraftError(f"device '{name}' asked for, but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        return _this_gpu()
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GraftError("device 'mps' asked for, but MPS is not available on this machine")
    return device


def _this_gpu() -> torch.device:
    if world().enabled:
        return torch.device("cuda", torch.cuda.current_device())  # init_from_env set it to LOCAL_RANK
    return torch.device("cuda")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run repeats on the same machine."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX), through oneDNN.

    Without it, torch emulates bf16 on the CPU, which was measured about 8× slower than fp32
    (tf_efficientnet_lite0, AVX2 EPYC), so graft only picks bf16 where it is native.
    """
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device, *, training: bool = False) -> str:
    """The precision to run in: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` means automatic mixed precision on CUDA (bf16 where supported, else fp16 with a
    GradScaler); on the CPU, bf16 for inference and frozen-body features where the CPU has
    native bf16, and fp32 for training the body (backward passes in bf16 on the CPU were not
    shown to keep accuracy); fp32 elsewhere (MPS).

    Raises:
        GraftError: For an unknown name, or fp16 on a CPU (torch has no fast fp16 CPU kernels).
    """
    if name not in PRECISIONS:
        raise GraftError(f"unknown precision '{name}'; choose one of {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type == "cpu":
        raise GraftError("precision fp16 needs a GPU; on the CPU use bf16 or fp32")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and not training and cpu_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for a resolved precision; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 on CUDA (bf16 and fp32 need none)."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """Image batches in channels_last memory order, which oneDNN and cuDNN convolutions run faster
    (measured 1.6× for tf_efficientnet_lite0 inference on a 2-core CPU)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def inference_batch_size(device: torch.device, train_batch_size: int) -> int:
    """Images per forward pass without gradients.

    On the CPU, small batches that stay in cache run faster: tf_efficientnet_lite0 on 2 cores
    measured 70 images/s at batch 8, 65 at 16 and 51 at 32. So 4 per thread, at least 8.
    Elsewhere, twice the training batch.
    """
    if device.type == "cpu":
        return max(8, 4 * torch.get_num_threads())
    return 2 * train_batch_size
