"""The run folder: safetensors weights + JSON metadata + CSV history. Nothing in it is a pickle.

Layout of a run folder ``RUN``:

- ``model.safetensors``: the full state_dict of the trained network.
- ``graft.json``: architecture, classes, preprocessing, resolved config, data split, metrics,
  the precision each kind of work ran in, library versions and the sha256 of ``model.safetensors``.
- ``history.csv``: one row per epoch.
"""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from graft.engine.loggers import history_csv
from graft.engine.run_folder import META_FILE
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import atomic_write, atomic_write_text, sha256_file

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
HISTORY_FILE = "history.csv"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on, for the record."""
    import PIL
    import timm
    import torchvision

    from graft.infrastructure.version import __version__

    return {
        "graft": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def save_bundle(
    run_dir: str | Path, state_dict: dict[str, torch.Tensor], meta: dict, history: list[dict]
) -> Path:
    """Write a run folder atomically: weights first, then history, then the metadata that vouches for them.

    Any ``graft.json`` already there is deleted just before the new weights replace the old, so
    at no instant does one vouch for other weights. Other files of an older run are left alone
    (``graft train --overwrite`` clears them first: :mod:`graft.engine.run_folder`).

    Args:
        run_dir: Folder to create or update.
        state_dict: The network's tensors.
        meta: JSON-ready metadata; ``format``, ``versions`` and ``weights_sha256`` are added.
        history: One dict per epoch (same keys in each).

    Returns:
        The run folder.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GraftError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    # Tensors may share storage (tied weights) or be views; safetensors wants each one whole.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    try:
        # An older graft.json would vouch for weights it never saw: it goes the moment before they
        # change (not before: a failed write keeps the old run whole), so a kill mid-save leaves
        # no run rather than a mismatched one.
        atomic_write(
            run_dir / WEIGHTS_FILE,
            lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}),
            before_replace=lambda: (run_dir / META_FILE).unlink(missing_ok=True),
        )
        if history:
            atomic_write_text(run_dir / HISTORY_FILE, history_csv(history))
        else:
            (run_dir / HISTORY_FILE).unlink(missing_ok=True)  # an older run's epochs are not this one's
        full = {
            "format": FORMAT_VERSION,
            **meta,
            "versions": library_versions(),
            "weights_sha256": sha256_file(run_dir / WEIGHTS_FILE),
        }
        atomic_write_text(run_dir / META_FILE, json.dumps(full, indent=2) + "\n")
    except OSError as e:
        raise GraftError(f"cannot write run folder {run_dir}: {e.strerror or e}") from None
    return run_dir


def read_meta(run_dir: str | Path) -> dict:
    """Read and sanity-check ``graft.json`` (no weights are read).

    Raises:
        GraftError: Missing folder or file, malformed JSON, or an unsupported format.
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / META_FILE
    if not run_dir.is_dir():
        raise GraftError(f"run folder not found: {run_dir}")
    if not meta_path.is_file():
        raise GraftError(f"{run_dir} is not a graft run: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GraftError(f"{meta_path} is not valid JSON: {e}") from None
    except RecursionError:
        raise GraftError(f"{meta_path} is nested too deeply to be a graft run") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise GraftError(
            f"{meta_path}: unsupported bundle format {meta.get('format') if isinstance(meta, dict) else '?'}"
        )
    for key in ("model", "classes", "preprocessing", "weights_sha256"):
        if key not in meta:
            raise GraftError(f"{meta_path} lacks '{key}'")
    return meta


def load_bundle(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a run folder, verifying the weights against the recorded sha256.

    Returns:
        ``(state_dict, meta)``.

    Raises:
        GraftError: If anything is missing, malformed, or the weights were modified.
    """
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise GraftError(f"{run_dir} has no {WEIGHTS_FILE}")
    digest = sha256_file(weights)
    if digest != meta["weights_sha256"]:
        raise GraftError(
            f"{weights} does not match the sha256 recorded in {META_FILE} "
            f"(file {digest[:12]}…, recorded {str(meta['weights_sha256'])[:12]}…): "
            "refusing a modified or corrupt model"
        )
    try:
        state_dict = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise GraftError(f"cannot read {weights}: {e}") from None
    return state_dict, meta


def read_history(run_dir: str | Path) -> list[dict]:
    """Rows of ``history.csv`` as dicts of strings (empty if the file is absent)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
