"""The dataset builders of recipe 7 (``examples/label_datasets.py``), for the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "label_datasets", Path(__file__).resolve().parents[1] / "examples" / "label_datasets.py"
)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

make_collages = _module.make_collages
make_imbalanced = _module.make_imbalanced
