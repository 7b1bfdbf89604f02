"""Device choice, seeding and mixed precision."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from graft.infrastructure.config import PRECISIONS
from graft.infrastructure.distributed import world
from graft.infrastructure.errors import GraftError


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


CPU_BF16_ENV = "GRAFT_CPU_BF16"


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX), through oneDNN.

    Without it, torch emulates bf16 on the CPU, which was measured about 8× slower than fp32
    (tf_efficientnet_lite0, AVX2 EPYC), so graft only picks bf16 where it is native.
    ``GRAFT_CPU_BF16=0`` or ``=1`` overrides the detection: off on a CPU that has it, or on
    (emulated, slowly) on one that does not, so either path can be run on any machine.

    Raises:
        GraftError: For a ``GRAFT_CPU_BF16`` other than 0 or 1.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise GraftError(f"{CPU_BF16_ENV} must be 0 or 1, not '{forced}'")
        return forced == "1"
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class PrecisionPlan:
    """The arithmetic of each kind of work in a run: ``fp32``, ``bf16`` or ``fp16``.

    Reduced precision only ever computes what the model learns from; what graft reports and
    answers with (validation, evaluate, predict, serve, the export's parity check) is fp32,
    so those numbers agree with each other on any machine.

    Attributes:
        asked: The ``--precision`` the run asked for.
        device: ``cpu``, ``cuda`` or ``mps``.
        train: Forward and backward passes of training steps on images.
        features: The frozen body's features of the training images (computed once, cached).
        inference: Validation during training, and the trained model's evaluation and prediction.
        cpu_bf16: Whether the CPU runs bf16 natively (what ``auto`` decides by on the CPU).
    """

    asked: str
    device: str
    train: str
    features: str
    inference: str = "fp32"
    cpu_bf16: bool = False

    def to_dict(self) -> dict:
        """JSON-ready dict, as saved in ``graft.json`` under ``precision``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PrecisionPlan:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def describe(self) -> str:
        """One line, e.g. ``train fp32, frozen features bf16, inference fp32 (cpu, native bf16;
        --precision auto)``."""
        where = self.device
        if self.device == "cpu":
            where += ", native bf16" if self.cpu_bf16 else ", no native bf16"
        return (
            f"train {self.train}, frozen features {self.features}, inference {self.inference} "
            f"({where}; --precision {self.asked})"
        )


def precision_plan(name: str, device: torch.device) -> PrecisionPlan:
    """What a run's ``--precision`` means on ``device``.

    ``auto``: on CUDA, mixed precision for training and the frozen features (bf16 where the GPU
    has it, else fp16 with a GradScaler); on a CPU with native bf16, bf16 for the frozen
    features (they feed only the head's training) and fp32 for training steps (backward passes
    in bf16 on the CPU were not shown to keep accuracy); fp32 otherwise. ``fp32``, ``bf16`` and
    ``fp16`` set training and the frozen features alike. Inference is fp32 in every case.

    Raises:
        GraftError: For an unknown name, or fp16 on a CPU (torch has no fast fp16 CPU kernels).
    """
    check_precision(name, device)
    native = device.type == "cpu" and cpu_bf16_supported()
    if name != "auto":
        train = features = name
    elif device.type == "cuda":
        train = features = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        train, features = "fp32", "bf16" if native else "fp32"
    return PrecisionPlan(name, device.type, train, features, cpu_bf16=native)


def check_precision(name: str, device: torch.device, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """``name`` if it can run on ``device``.

    Raises:
        GraftError: For a name not in ``allowed``, or fp16 on a CPU.
    """
    if name not in allowed:
        raise GraftError(f"unknown precision '{name}'; choose one of {', '.join(allowed)}")
    if name == "fp16" and device.type == "cpu":
        raise GraftError("precision fp16 needs a GPU; on the CPU use bf16 or fp32")
    return name


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for a resolved precision.

    fp32 on CUDA also turns TF32 off for its duration: cuDNN convolutions use TF32 by default,
    whose 10-bit mantissa would make a GPU's "fp32" disagree with the CPU's and the export's.
    """
    if precision == "fp32":
        return _ieee_fp32() if device.type == "cuda" else contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def _ieee_fp32() -> Iterator[None]:
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


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
