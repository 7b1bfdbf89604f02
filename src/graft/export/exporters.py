"""``graft export``: ONNX or TorchScript files that carry their preprocessing contract, written only
after their predictions were checked against the PyTorch model on real images."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from graft.data.dataset import Sample
from graft.data.selection import eval_samples, expand_paths
from graft.export.onnx_runtime import META_KEY, SCORE_OUTPUT, meta_format
from graft.inference.decision import Decision
from graft.inference.ood import SCORE_NAME, Scored
from graft.inference.predict import sample_outputs
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import atomic_write, cannot_write, temp_file
from graft.infrastructure.text import plural

if TYPE_CHECKING:
    from graft.learner.learner import Learner

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
# Largest allowed difference in any class probability between the export and the PyTorch model.
PARITY_TOLERANCE = 1e-4
# Parity is checked on at most this many images (the val split is usually smaller).
MAX_CHECK_IMAGES = 500


@dataclass
class ExportReport:
    """What :func:`export` wrote and how closely it matches the PyTorch model.

    Attributes:
        path: The exported file.
        format: ``onnx`` or ``torchscript``.
        max_diff: Largest absolute difference in class probabilities over the checked images.
        images: How many images the parity check ran on.
        agree: How many of them got the same answer (the same top-1 class; for a multi-label
            model the same set of labels).
        seconds: Time to export and check.
    """

    path: Path
    format: str
    max_diff: float
    images: int
    agree: int
    seconds: float


def contract(learn: Learner, scored: bool | None = None) -> dict:
    """What a user of the exported file needs besides the weights: classes, preprocessing, model,
    and the decision (softmax or a sigmoid per class, and the thresholds).

    The graph outputs logits either way. A file whose decision is not a plain softmax is
    ``format`` 2, which a graft that does not know decisions refuses instead of misreading; one
    with a temperature or the unknown score is 3. ``scored``: whether the file has the score
    output (default: whenever the run stores reference features); without it the decision
    carries no unknown rule.
    """
    scored = learn.scored if scored is None else scored
    decision = learn.decision if scored else dataclasses.replace(learn.decision, reject=None)
    activation = "a sigmoid per class" if decision.multi_label else "softmax"
    if decision.temperature != 1.0:
        activation += f" of logits / decision.temperature ({decision.temperature:.4f})"
    out = {
        "format": meta_format(decision, scored),
        "classes": list(learn.classes),
        "preprocessing": learn.preprocessing.to_dict(),
        "model": learn.spec.to_dict(),
        "decision": decision.to_dict(learn.classes),
        "input": "image: float32 (batch, 3, H, W), RGB scaled to [0, 1], then (x - mean) / std",
        "output": f"logits: float32 (batch, classes); {activation} gives probabilities",
    }
    if scored:
        out["output"] += (
            f"; {SCORE_OUTPUT}: float32 (batch,), the {SCORE_NAME}: answer decision.reject.label "
            "when it is above decision.reject.threshold"
        )
    return out


def export(
    learn: Learner,
    fmt: str = "onnx",
    out: str | Path | None = None,
    check: Sequence[str | Path] | None = None,
) -> ExportReport:
    """Export ``learn``'s model, check parity on real images, then move the file into place.

    Args:
        fmt: ``onnx`` (opset from torch's exporter, dynamic batch) or ``torchscript`` (traced).
        out: Output file (default: ``<run>/model.onnx`` or ``<run>/model.torchscript.pt`` in the
            learner's run folder, :attr:`graft.Learner.run_dir`).
        check: Images or folders for the parity check (default: the run's labeled test split or
            val split, from the data folder it was trained on).

    Raises:
        GraftError: Unknown format, no images to check on, an export that fails, or a parity
            difference above :data:`PARITY_TOLERANCE` (nothing is written then).
    """
    if fmt not in FORMATS:
        raise GraftError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if out is None:
        if learn.run_dir is None:
            raise GraftError("export needs an output file (out=...)")
        out = Path(learn.run_dir) / f"model{FORMATS[fmt]}"
    out = Path(out)
    t0 = time.perf_counter()
    samples = _check_samples(learn, check)
    model = copy.deepcopy(learn.model).to("cpu", memory_format=torch.contiguous_format).float().eval()
    meta = json.dumps(contract(learn, scored=fmt == "onnx" and learn.scored))
    _temp_beside(out).unlink()  # before the slow part: an unwritable --out fails at once
    checked: list[tuple[float, int, int]] = []

    def write(tmp: Path) -> None:  # the file is renamed into place only if this returns
        checked.append(_write_checked(fmt, model, tmp, meta, learn, samples))

    try:
        # The same writer as every other file: fsync'ed, the mode of a new file, renamed into place.
        atomic_write(out, write)
    except OSError as e:  # a full disk, or the folder made read-only meanwhile
        raise cannot_write(out, e) from None
    diff, agree, kept = checked[0]
    return ExportReport(out, fmt, diff, kept, agree, time.perf_counter() - t0)


def _write_checked(
    fmt: str, model: torch.nn.Module, tmp: Path, meta: str, learn: Learner, samples: list[Sample]
) -> tuple[float, int, int]:
    """Export ``model`` to ``tmp`` and compare the file's probabilities (and unknown scores) with
    PyTorch's on ``samples``; returns (largest difference, images with the same answer, images
    compared).

    Raises:
        GraftError: A difference above :data:`PARITY_TOLERANCE`.
    """
    size = learn.preprocessing.input_size
    example = torch.randn(2, 3, size, size)
    scored = fmt == "onnx" and learn.scored  # the unknown score is a second output of the graph
    if fmt == "onnx":
        graph = Scored(model, learn.spec, learn.references.cpu()).eval() if scored else model
        _export_onnx(graph, example, tmp, meta, scored)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices
            traced = torch.jit.trace(model, example)
            torch.jit.save(traced, str(tmp), _extra_files={"graft.json": meta})
    reference, kept = _torch_probs(model, learn, samples, scored)
    exported = _exported_probs(fmt, tmp, learn, [samples[i] for i in kept])
    diff = float(np.abs(exported - reference).max()) if len(kept) else 0.0
    agree = _same_answers(learn.decision, exported, reference, scored) if len(kept) else 0
    if diff > PARITY_TOLERANCE:
        raise GraftError(
            f"the {fmt} export disagrees with the PyTorch model: largest probability difference "
            f"{diff:.2e} > {PARITY_TOLERANCE:g} over {plural(len(kept), 'image')}; nothing was written"
        )
    return diff, agree, len(kept)


def _same_answers(decision: Decision, exported: np.ndarray, reference: np.ndarray, scored: bool) -> int:
    """Rows whose answers agree: the top class, or the set of labels above their thresholds, and
    (``scored``: the last column is the unknown score) whether the image is answered unknown."""
    if scored:
        rule = decision.reject
        unknown = [rule.rejected(a[:, -1]) if rule else np.zeros(len(a), bool) for a in (exported, reference)]
        exported, reference = exported[:, :-1], reference[:, :-1]
    pairs = zip(decision.answers(exported), decision.answers(reference), strict=True)
    same = np.array([a == b for a, b in pairs], dtype=bool)
    return int((same & (unknown[0] == unknown[1])).sum() if scored else same.sum())


def _temp_beside(out: Path) -> Path:
    """An empty temporary file in ``out``'s folder (made if need be), to be renamed to ``out``.

    Raises:
        GraftError: If the folder cannot be made or written (read-only, a file in the way...).
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return temp_file(out)
    except OSError as e:
        raise cannot_write(out, e) from None


def _check_samples(learn: Learner, check: Sequence[str | Path] | None) -> list[Sample]:
    if check:
        files = expand_paths(check)
    else:
        if not learn.config.data or not Path(learn.config.data).is_dir():
            raise GraftError("no images to check the export on: pass --check IMAGES")
        files = [s.path for s in eval_samples(learn.config.data, None, learn.classes, learn.split)[0]]
    return [Sample(p, None) for p in files[:MAX_CHECK_IMAGES]]


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, meta: str, scored: bool) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation and tracing chatter
        try:
            program = torch.onnx.export(
                model,
                (example,),
                input_names=["image"],
                output_names=["logits", SCORE_OUTPUT] if scored else ["logits"],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                verbose=False,
            )
        except Exception as e:  # the exporter raises many types; the message says what failed
            raise GraftError(f"ONNX export failed: {str(e).strip().splitlines()[0]}") from None
    program.save(str(path))
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, meta
    onnx.save(proto, str(path))


def _exported_probs(fmt: str, path: Path, learn: Learner, samples: list[Sample]) -> np.ndarray:
    """Probabilities from the exported file (the unknown score as one more column when it has
    one): ONNX through its own NumPy preprocessing (the whole contract is checked), TorchScript
    through graft's transforms."""
    if fmt == "onnx":
        from graft.export.onnx_runtime import OnnxClassifier

        onnx_model = OnnxClassifier(path, providers=["CPUExecutionProvider"])
        _, probs, scores = onnx_model.predict_outputs([s.path for s in samples])
        return probs if scores is None else np.concatenate([probs, scores[:, None]], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path), map_location="cpu")
    probs, _ = _torch_probs(scripted, learn, samples, scored=False)
    return probs


def _torch_probs(
    model: torch.nn.Module, learn: Learner, samples: list[Sample], scored: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, kept)`` of ``model`` (the PyTorch model or the TorchScript file read back) on the
    CPU in fp32, through graft's transforms and the learner's activation and temperature; with
    ``scored``, the unknown score as one more column."""
    out = sample_outputs(
        model,
        learn.spec,
        learn.preprocessing,
        samples,
        torch.device("cpu"),
        precision="fp32",
        fast=model,
        activation=learn.decision.activation,
        temperature=learn.decision.temperature,
        references=learn.references.cpu() if scored else None,
    )
    if not scored:
        return out.probs, out.kept
    return np.concatenate([out.probs, out.scores[:, None]], axis=1), out.kept
