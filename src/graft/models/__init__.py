"""Building classifiers: architecture lookup, pretrained weights (fetched on first use), head replacement."""

from graft.models.factory import (
    ModelSpec,
    body_blocks,
    build_model,
    check_input_size,
    create_model,
    head_parameters,
)
from graft.models.pretrained import fetch_weights, find_pretrained, list_architectures, weights_or_fallback
from graft.models.registry import resolve as resolve_arch
from graft.models.weights import read_state_dict

__all__ = [
    "ModelSpec",
    "body_blocks",
    "build_model",
    "check_input_size",
    "create_model",
    "fetch_weights",
    "find_pretrained",
    "head_parameters",
    "list_architectures",
    "read_state_dict",
    "resolve_arch",
    "weights_or_fallback",
]
