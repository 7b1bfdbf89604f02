"""graft: transfer learning on images.

    from graft import ImageData, Learner, load_learner
    graft.train(TrainConfig(data="hymenoptera", out="runs/bees"))   # what graft train runs

The names below are imported on first use, so ``graft --help`` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from graft.infrastructure.version import __version__

_EXPORTS = {
    "ImageData": "graft.data.dataset",
    "Learner": "graft.learner.learner",
    "load_learner": "graft.learner.learner",
    "resume_learner": "graft.learner.learner",
    "TrainConfig": "graft.infrastructure.config",
    "ResolvedConfig": "graft.infrastructure.config",
    "GraftError": "graft.infrastructure.errors",
    "SkippedFileWarning": "graft.infrastructure.errors",
    "DuplicateImageWarning": "graft.infrastructure.errors",
    "LargeImageWarning": "graft.infrastructure.errors",
    "EvalResult": "graft.evaluation.metrics",
    "Prediction": "graft.inference.predictions",
    "create_model": "graft.models",
    "Interpretation": "graft.evaluation.interpret",
    "write_report": "graft.workflows.report",
    "compare": "graft.workflows.compare",
    "doctor": "graft.workflows.doctor",
    "train": "graft.workflows.train",
    "TrainedRun": "graft.workflows.train",
}

__all__ = [
    "DuplicateImageWarning",
    "EvalResult",
    "GraftError",
    "ImageData",
    "Interpretation",
    "LargeImageWarning",
    "Learner",
    "Prediction",
    "ResolvedConfig",
    "SkippedFileWarning",
    "TrainConfig",
    "TrainedRun",
    "__version__",
    "compare",
    "create_model",
    "doctor",
    "load_learner",
    "resume_learner",
    "train",
    "write_report",
]

if TYPE_CHECKING:
    from graft.data.dataset import ImageData
    from graft.evaluation.interpret import Interpretation
    from graft.evaluation.metrics import EvalResult
    from graft.inference.predictions import Prediction
    from graft.infrastructure.config import ResolvedConfig, TrainConfig
    from graft.infrastructure.errors import (
        DuplicateImageWarning,
        GraftError,
        LargeImageWarning,
        SkippedFileWarning,
    )
    from graft.learner.learner import Learner, load_learner, resume_learner
    from graft.models import create_model
    from graft.workflows.compare import compare
    from graft.workflows.doctor import doctor
    from graft.workflows.report import write_report
    from graft.workflows.train import TrainedRun, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'graft' has no attribute {name!r}")
