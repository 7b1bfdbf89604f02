"""``graft doctor``: find mislabelled, duplicated, leaking and odd images in a dataset before
they cost accuracy, and write them to ``doctor.csv`` and ``doctor.html``.

One pass of a pretrained body over every image (through the feature cache, so a second look, or
training on the same data, reuses it) and one cheap decode per file give everything: k-fold
linear heads find likely label errors, hashes and features find copies, and the features'
nearest neighbours find outliers. The user edits the CSV and moves files with
:func:`graft.data.relocate.apply_actions` (``graft doctor DATA --apply doctor.csv``).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from graft.data.dataset import ImageData, Sample
from graft.data.inspect import ImageFacts, inspect_images
from graft.data.loaders import default_workers
from graft.evaluation.findings import ISSUES, Finding, findings_csv, sort_findings
from graft.evaluation.label_issues import LabelIssues, out_of_fold, rank_label_issues
from graft.evaluation.neighbours import copy_pairs
from graft.features.cache import FeatureCache, default_cache_root
from graft.features.extract import body_key, extract_features, feature_head, head_logits
from graft.features.views import eval_view
from graft.inference.decision import Decision
from graft.infrastructure.errors import DuplicateImageWarning, GraftError, SkippedFileWarning
from graft.infrastructure.fileio import atomic_write_text
from graft.infrastructure.runtime import inference_batch_size, select_device
from graft.infrastructure.text import plural
from graft.learner.factories import Network, read_run
from graft.models import create_model
from graft.workflows.doctor_checks import (
    Item,
    balance,
    copy_findings,
    label_findings,
    oddity_findings,
    one_move_per_file,
    outlier_findings,
    unreadable_findings,
)
from graft.workflows.doctor_page import render_page, write_page


@dataclass
class DoctorResult:
    """What :func:`doctor` found.

    Attributes:
        root: The dataset folder.
        findings: Every finding, grouped by issue and sorted by score.
        balance: Per split, the labelled images of each class.
        notes: What the balance (and the dataset scan) means for training.
        label_accuracy: Out-of-fold accuracy of the k-fold heads (None: no label check).
        seconds: Wall time.
        csv_path: Where ``doctor.csv`` was written (None: not written).
        html_path: Where ``doctor.html`` was written.
    """

    root: Path
    findings: list[Finding]
    balance: dict[str, dict[str, int]]
    notes: list[str] = field(default_factory=list)
    label_accuracy: float | None = None
    seconds: float = 0.0
    csv_path: Path | None = None
    html_path: Path | None = None

    def counts(self) -> dict[str, int]:
        """Findings per issue, in :data:`ISSUES` order, issues without findings left out."""
        found = {k: sum(f.issue == k for f in self.findings) for k in ISSUES}
        return {k: n for k, n in found.items() if n}

    def summary(self) -> list[str]:
        """The lines ``graft doctor`` prints."""
        images = sum(sum(c.values()) for c in self.balance.values())
        lines = [f"checked {plural(images, 'labelled image')} in {self.root} ({self.seconds:.1f} s)"]
        if self.label_accuracy is not None:
            lines.append(f"k-fold heads agree with {self.label_accuracy:.1%} of the labels")
        counts = self.counts()
        lines += [f"{ISSUES[k].lower()}: {n}" for k, n in counts.items()] or ["no problems found"]
        return lines


def doctor(
    data: str | Path,
    *,
    labels: str | Path | None = None,
    run: str | Path | None = None,
    out: str | Path | None = ".",
    arch: str = "tf_efficientnet_lite0",
    valid_split: float = 0.2,
    test_split: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
) -> DoctorResult:
    """Check a dataset and write ``doctor.csv`` and ``doctor.html`` into ``out``.

    Args:
        data: The dataset folder (any layout ``graft train`` reads).
        labels: Its labels CSV, for a flat folder of images.
        run: A run folder whose model gives the features, and whose predictions score the images
            it did not train on (default: the pretrained ``arch``, k-fold heads for every image).
        out: Folder for the two files (None: write nothing).
        arch: The pretrained body that gives the features, without ``run``.
        valid_split: Fraction held out for val when ``data`` has no val folder (the split graft
            train would make with ``seed``: copies across it leak).
        test_split: Likewise for test.
        seed: The split's seed, and the folds'.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        batch_size: Images per forward pass.
        workers: Decoding processes (default: as graft train).

    Raises:
        GraftError: If the dataset cannot be read, or ``run``'s classes are not the data's.
    """
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)  # reported as findings instead
        warnings.simplefilter("ignore", DuplicateImageWarning)
        dataset = ImageData.from_folder(
            data, labels=labels, valid_split=valid_split, test_split=test_split, seed=seed
        )
    items = [
        Item(s.path, split, _label_text(dataset.label_names(s.label)))
        for split, samples in dataset.splits.items()
        for s in samples
    ]
    if not items:
        raise GraftError(f"no images found in {data}")
    workers = default_workers() if workers is None else workers
    facts = inspect_images([i.path for i in items], workers=max(1, workers))
    network, trained_on, decision = _network(run, dataset, arch)
    dev = select_device(device)
    features, index = _features(network, items, dev, batch_size, workers)
    findings = unreadable_findings(dataset.skipped, items, facts) + oddity_findings(items, facts)
    findings += _copies(items, facts, features, index)
    findings += outlier_findings(items, features, index)
    accuracy = None
    if not dataset.multi_label:
        issues, labelled = _label_issues(
            items, dataset.classes, features, index, seed, network, trained_on, decision, dev
        )
        if issues is not None:
            findings += label_findings(items, labelled, issues, dataset.classes)
            accuracy = issues.accuracy
    table, notes = balance(items, dataset.classes, dataset.multi_label)
    result = DoctorResult(
        dataset.root, one_move_per_file(sort_findings(findings)), table, notes + list(dataset.notes), accuracy
    )
    result.seconds = time.perf_counter() - start
    if out is not None:
        _write(result, Path(out))
    return result


def _label_text(names: str | list[str] | None) -> str | None:
    """A sample's label as one string: a multi-label image's classes space-separated."""
    return names if names is None or isinstance(names, str) else " ".join(names)


def _network(run: str | Path | None, data: ImageData, arch: str) -> tuple[Network, set[str], Decision | None]:
    """The network that gives the features, the paths its run trained on, its decision rule."""
    if run is None:
        model, spec, pre = create_model(arch, len(data.classes))
        return Network(model.eval(), spec, pre, list(data.classes)), set(), None
    network, record = read_run(run)
    if network.classes != list(data.classes):
        raise GraftError(
            f"{run} was trained on the classes {network.classes[:6]}, the data has {data.classes[:6]}: "
            "doctor compares a run's predictions with labels of the same classes"
        )
    split = record.split or {}
    root = Path(str(split.get("root", data.root)))
    trained = {os.path.normpath(root / str(row[0])) for row in (split.get("splits") or {}).get("train", [])}
    return network, trained, record.decision


def _features(
    network: Network, items: list[Item], device: torch.device, batch_size: int, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Body features (float32, one row per decodable item) and each row's item index."""
    model, spec, pre = network.model, network.spec, network.preprocessing
    cache = FeatureCache(default_cache_root(), body_key(model, spec, pre, "fp32"))
    samples = [Sample(i.path, None) for i in items]
    (feats,) = extract_features(
        model,
        spec,
        pre,
        [(samples, [eval_view(pre)])],
        device,
        cache=cache,
        batch_size=inference_batch_size(device, batch_size),
        workers=workers,
        desc="doctor",
    )
    return feats.vectors[:, 0].numpy().astype(np.float32), feats.index.numpy()


def _copies(
    items: list[Item],
    facts: list[ImageFacts | None],
    features: np.ndarray,
    index: np.ndarray,
) -> list[Finding]:
    """Copy findings over every item (features of undecodable ones are zero: hashes still count)."""
    full = np.zeros((len(items), features.shape[1]), np.float32)
    full[index] = features
    hashes = np.array([f.phash if f else 0 for f in facts], dtype=np.uint64)
    digests = [f.digest if f else None for f in facts]
    seen = np.zeros(len(items), bool)  # decoded by both passes
    seen[index] = True
    seen &= np.array([f is not None for f in facts])
    return copy_findings(items, copy_pairs(full, hashes, digests, known=seen))


def _label_issues(
    items: list[Item],
    classes: list[str],
    features: np.ndarray,
    index: np.ndarray,
    seed: int,
    network: Network,
    trained_on: set[str],
    decision: Decision | None,
    device: torch.device,
) -> tuple[LabelIssues | None, np.ndarray | None]:
    """Out-of-fold label scores of the labelled items with features; with a run, its own
    (calibrated) probabilities for the images it did not train on."""
    rows = [r for r, i in enumerate(index) if items[i].label is not None]
    if len(rows) < 10:
        return None, None
    labelled = index[rows]
    labels = np.array([classes.index(items[i].label) for i in labelled])
    x = features[rows]
    probs = out_of_fold(x, labels, len(classes), seed=seed)
    head = feature_head(network.model, network.spec) if trained_on else None
    if head is not None and decision is not None:
        unseen = np.array([os.path.normpath(items[i].path) not in trained_on for i in labelled])
        if unseen.any():
            logits = head_logits(head, torch.from_numpy(x[unseen]), device).double().numpy()
            probs[unseen] = decision.activate(logits)
    return rank_label_issues(probs, labels), labelled


def _write(result: DoctorResult, out: Path) -> None:
    """``doctor.csv`` and ``doctor.html`` in ``out`` (created if needed), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    result.csv_path, result.html_path = out / "doctor.csv", out / "doctor.html"
    atomic_write_text(result.csv_path, findings_csv(result.findings, result.root))
    page = render_page(result.findings, result.root, result.summary(), result.balance, result.notes)
    write_page(result.html_path, page)
