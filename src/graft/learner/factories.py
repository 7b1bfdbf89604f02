"""The heavy work behind a :class:`~graft.learner.learner.Learner`: building its network from an
architecture name, or reading one back from a run folder or a checkpoint.

Each function returns the built parts (:class:`Network`, :class:`RunRecord`); the Learner's
constructor only assembles them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from graft.data.dataset import ImageData
from graft.data.stats import channel_stats
from graft.data.transforms import Preprocessing
from graft.engine.checkpoint import checkpoint_meta
from graft.inference.decision import Decision
from graft.inference.ood import REFERENCES_KEY, check_references
from graft.infrastructure.checks import texts
from graft.infrastructure.config import NORMALIZE, ResolvedConfig, TrainConfig
from graft.infrastructure.distributed import main_first
from graft.infrastructure.errors import GraftError
from graft.infrastructure.runtime import seed_everything
from graft.infrastructure.text import plural
from graft.learner.bundle import load_bundle, read_history
from graft.models import ModelSpec, build_model, check_input_size, create_model, fetch_weights
from graft.models.weights import load_state


@dataclass
class Network:
    """A built classifier: the network, what rebuilds it, its input preprocessing and its classes.

    Attributes:
        model: The network (weights loaded).
        spec: What rebuilds it without weights (:class:`~graft.models.ModelSpec`).
        preprocessing: The images it expects.
        classes: Its output classes, in order.
    """

    model: torch.nn.Module
    spec: ModelSpec
    preprocessing: Preprocessing
    classes: list[str]


@dataclass
class RunRecord:
    """How a network was (or is to be) trained, as a run folder or checkpoint records it.

    Attributes:
        config: The options asked for (:class:`TrainConfig`, never changed).
        resolved: What ran (:class:`ResolvedConfig`); None before any training.
        split: The data's exact split (``ImageData.to_record()``).
        history: One row per epoch.
        metrics: The run's numbers (best epoch, val and test accuracy, time...).
        precision_plan: The arithmetic each kind of training work ran in.
        run_dir: The run folder it was read from or saved to.
        decision: How its outputs become labels (softmax or sigmoids, thresholds, temperature,
            the unknown rule).
        references: The unknown score's reference features (None: a run saved before graft
            stored them, or a model without a single linear head).
    """

    config: TrainConfig
    resolved: ResolvedConfig | None = None
    split: dict | None = None
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    precision_plan: dict | None = None
    run_dir: Path | None = None
    decision: Decision = field(default_factory=Decision)
    references: torch.Tensor | None = None


def build_network(data: ImageData, cfg: TrainConfig) -> Network:
    """The network ``cfg`` asks for on ``data``: the architecture with a new head for its classes,
    starting weights loaded (fetched once under torch.distributed), and for ``normalize="data"``
    the training images' channel statistics (see :func:`graft.data.stats.channel_stats`).

    Reads ``arch``, ``pretrained``, ``weights``, ``head``, ``head_dropout``, ``input_size``,
    ``normalize``, ``seed`` and ``workers``; pass a resolved config where ``mode`` matters
    (``scratch`` builds from random weights).
    """
    if cfg.normalize not in NORMALIZE:
        raise GraftError(f"unknown normalize '{cfg.normalize}'; choose one of {', '.join(NORMALIZE)}")
    seed_everything(cfg.seed)
    if cfg.pretrained and not cfg.weights:
        main_first(lambda: fetch_weights(cfg.arch))  # one download, not one per rank
    model, spec, pre = create_model(
        cfg.arch,
        len(data.classes),
        pretrained=cfg.pretrained,
        weights=cfg.weights,
        head_hidden=cfg.head,
        head_dropout=cfg.head_dropout,
        input_size=cfg.input_size,
    )
    if cfg.input_size:
        check_input_size(spec, cfg.input_size)
        pre = dataclasses.replace(pre, input_size=cfg.input_size)
    if cfg.normalize == "data":
        mean, std = channel_stats(data.splits["train"], pre, seed=cfg.seed, workers=cfg.workers)
        pre = dataclasses.replace(pre, mean=mean, std=std)
    return Network(model, spec, pre, list(data.classes))


def load_data(cfg: TrainConfig) -> ImageData:
    """The dataset a config names, split as it says."""
    return ImageData.from_folder(
        cfg.data,
        labels=cfg.labels,
        valid_split=cfg.valid_split,
        test_split=cfg.test_split,
        seed=cfg.seed,
        multi_label=cfg.multi_label,
    )


def read_run(run_dir: str | Path) -> tuple[Network, RunRecord]:
    """The trained network of a run folder and its record, checked before anything is built.

    A ``graft.json`` written before the request and the resolved config were stored apart holds
    only ``config`` (then the resolved one): it serves as both.

    Raises:
        GraftError: If the folder is not a valid run, or its weights were modified.
    """
    state_dict, meta = load_bundle(run_dir)
    references = state_dict.pop(REFERENCES_KEY, None)
    try:
        spec, pre, classes = _checked_run(meta, state_dict)
    except GraftError as e:
        raise GraftError(f"{run_dir}/graft.json: {e}") from None
    model = build_model(spec)
    try:
        load_state(model, state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise GraftError(f"{run_dir}: the weights do not fit architecture {spec.arch}: {first}") from None
    asked = meta.get("config", {})
    decision = Decision.from_dict(meta.get("decision"), classes, where=f"{run_dir}/graft.json")
    record = RunRecord(
        config=TrainConfig.from_dict(asked),
        resolved=ResolvedConfig.from_dict(meta.get("resolved", asked)),
        split=meta.get("split"),
        history=read_history(run_dir),
        metrics=dict(meta.get("metrics") or {}),
        precision_plan=meta.get("precision"),
        run_dir=Path(run_dir),
        decision=decision,
        references=_checked_references(references, model, spec, run_dir),
    )
    return Network(model.eval(), spec, pre, classes), record


def _checked_references(
    refs: torch.Tensor | None, model: torch.nn.Module, spec: ModelSpec, run_dir: str | Path
) -> torch.Tensor | None:
    """The stored reference features, if they fit the model's feature width (a run saved before
    graft stored them has none: it predicts without the unknown score)."""
    if refs is None:
        return None
    try:
        check_references(model, spec, refs)
    except GraftError as e:
        raise GraftError(f"{run_dir}: {e}") from None
    return refs


def _checked_run(meta: dict, state_dict: dict) -> tuple[ModelSpec, Preprocessing, list[str]]:
    """The model, preprocessing and classes of a run file, checked against each other and the
    weights before a network is built (a run folder may come from anyone)."""
    spec = ModelSpec.from_dict(meta["model"])
    pre = Preprocessing.from_dict(meta["preprocessing"])
    classes = texts(meta, "classes", "run", max_items=spec.num_classes, unique=True)
    if len(classes) != spec.num_classes:
        named = plural(len(classes), "name")
        raise GraftError(f"classes lists {named} for a model with {spec.num_classes} outputs")
    outputs = {
        int(v.shape[0])
        for name in spec.head_names
        for k, v in state_dict.items()
        if k.startswith(name + ".") and k.endswith("weight") and v.ndim >= 1
    }
    if spec.num_classes not in outputs:
        raise GraftError(f"model.num_classes is {spec.num_classes}, but the weights' head has no such output")
    return spec, pre, classes


def read_checkpoint_run(
    run_dir: str | Path, device: str = "auto", workers: int | None = None
) -> tuple[Network, ImageData, RunRecord]:
    """What an interrupted run needs to go on: its network (weights not yet loaded: ``fit``
    reads the checkpoint's tensors once), its data with the exact split, and its options (those
    the checkpoint recorded, with ``device`` and ``workers`` of this machine).

    Raises:
        GraftError: If there is no readable checkpoint, or files of its split are gone.
    """
    meta = checkpoint_meta(run_dir)
    changed = {"device": device} | ({"workers": workers} if workers is not None else {})
    ran = ResolvedConfig.from_dict({**meta["config"], **changed})
    data = ImageData.from_record(meta["split"]["root"], meta["split"])
    spec = ModelSpec.from_dict(meta["model"])
    network = Network(
        build_model(spec), spec, Preprocessing.from_dict(meta["preprocessing"]), list(meta["classes"])
    )
    # The checkpoint records what ran (the rate lr "auto" found included): resumed, it is asked again.
    return network, data, RunRecord(config=TrainConfig.from_dict(ran.to_dict()), split=data.to_record())
