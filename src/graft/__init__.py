"""graft: transfer learning on images.

    from graft import ImageData, Learner, load_learner

The names below are imported on first use, so ``graft --help`` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ImageData": "graft.data.dataset",
    "Learner": "graft.training.learner",
    "load_learner": "graft.training.learner",
    "resume_learner": "graft.training.learner",
    "TrainConfig": "graft.config",
    "GraftError": "graft.errors",
    "SkippedFileWarning": "graft.errors",
    "DuplicateImageWarning": "graft.errors",
    "LargeImageWarning": "graft.errors",
    "EvalResult": "graft.evaluation.metrics",
    "Prediction": "graft.evaluation.predictions",
    "create_model": "graft.models",
    "Interpretation": "graft.evaluation.interpret",
    "write_report": "graft.evaluation.report",
    "compare": "graft.training.compare",
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
    "SkippedFileWarning",
    "TrainConfig",
    "__version__",
    "compare",
    "create_model",
    "load_learner",
    "resume_learner",
    "write_report",
]

if TYPE_CHECKING:
    from graft.config import TrainConfig
    from graft.data.dataset import ImageData
    from graft.errors import DuplicateImageWarning, GraftError, LargeImageWarning, SkippedFileWarning
    from graft.evaluation.interpret import Interpretation
    from graft.evaluation.metrics import EvalResult
    from graft.evaluation.predictions import Prediction
    from graft.evaluation.report import write_report
    from graft.models import create_model
    from graft.training.compare import compare
    from graft.training.learner import Learner, load_learner, resume_learner


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'graft' has no attribute {name!r}")
