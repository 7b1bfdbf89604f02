"""The Learner: a model, its data and its training record, behind a few methods.

data = ImageData.from_folder("hymenoptera")
learn = Learner(data, "tf_efficientnet_lite0")
learn.fit(epochs=3)
learn.evaluate()                  # the labeled test split if there is one, else val
learn.predict("bee.jpg")
learn.save("runs/bees")
learn = load_learner("runs/bees")

Building a network (weights, statistics) and reading one back are the factories' work
(:mod:`graft.learner.factories`); the constructor only assembles built parts.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from graft.data.dataset import ImageData
from graft.engine.callbacks import Callback
from graft.engine.checkpoint import MAY_DIFFER, Checkpoint, matching_checkpoint
from graft.engine.lr_find import LRFind, lr_find
from graft.engine.metrics import Metric
from graft.engine.optim import select_blocks
from graft.engine.passes import LossFn
from graft.engine.trainer import FitResult, fit
from graft.features.extract import feature_head
from graft.inference.decision import Decision
from graft.inference.ood import REFERENCES_KEY
from graft.infrastructure.config import DEFAULT_LR, ResolvedConfig, TrainConfig
from graft.infrastructure.distributed import broadcast, local, main_only, world
from graft.infrastructure.errors import GraftError
from graft.infrastructure.runtime import select_device
from graft.learner.bundle import save_bundle
from graft.learner.classifier import Classifier
from graft.learner.factories import (
    Network,
    RunRecord,
    build_network,
    load_data,
    read_checkpoint_run,
    read_run,
)
from graft.learner.thresholds import check_decision_options, chosen_decision
from graft.learner.timing import plan_by_time
from graft.learner.trust import measure_trust
from graft.models import body_blocks
from graft.models.split import default_top

DEFAULT_ARCH = "tf_efficientnet_lite0"


class Learner(Classifier):
    """A classifier grafted onto a pretrained body, with what it was trained on and how.

    ``Learner(data, "resnet18", ...)`` builds the network (as :meth:`create` does);
    ``Learner(data, network, record=...)`` assembles parts already built (what
    :meth:`from_config`, :func:`load_learner` and :func:`resume_learner` do).

    Args:
        data: The dataset to train on (None for a learner loaded only to predict).
        arch: timm or torchvision architecture (``timm:NAME`` / ``torchvision:NAME`` to force one),
            or a built :class:`~graft.learner.factories.Network`.
        pretrained: Start from the architecture's published ImageNet weights: bundled, cached, or
            downloaded on first use (unless ``GRAFT_OFFLINE=1``).
        weights: A weights file to start from instead of the cached ones.
        head: Hidden width of an MLP head; None for a single Linear layer.
        head_dropout: Dropout of the MLP head.
        input_size: Input side in pixels instead of the model's own (the resize keeps its crop fraction).
        normalize: ``"model"``: the mean and std of the model's pretrained config; ``"data"``: the
            per-channel mean and std of the training split's images, computed here (see
            :func:`graft.data.stats.channel_stats`; at most 5,000 images, sampled with ``seed``)
            and kept in ``self.preprocessing``, so the saved run, evaluation, prediction, export
            and serving use them. For models trained from scratch.
        device: ``auto`` (CUDA, MPS, CPU in that order) or a device name.
        seed: Seeds the new head's initialisation (and the sample of images for ``normalize="data"``).
        workers: Data-loading worker processes (default from the core count).
        record: With a built network: its options and training record (default: none yet).
        precision: Arithmetic of evaluation and prediction (see :attr:`precision`).

    The building options (``pretrained`` to ``workers``) are for an architecture name; a built
    network's options are in ``record.config``.
    """

    def __init__(
        self,
        data: ImageData | None,
        arch: str | Network = DEFAULT_ARCH,
        *,
        pretrained: bool = True,
        weights: str | Path | None = None,
        head: int | None = None,
        head_dropout: float = 0.5,
        input_size: int | None = None,
        normalize: str = "model",
        device: str = "auto",
        seed: int = 0,
        workers: int | None = None,
        record: RunRecord | None = None,
        precision: str = "fp32",
    ) -> None:
        if isinstance(arch, Network):
            network = arch
            root = str(data.root) if data else ""
            record = record or RunRecord(TrainConfig(data=root, arch=arch.spec.arch))
        else:  # the convenient form: build the network here (Learner.create)
            options = TrainConfig(
                data=str(data.root),
                arch=arch,
                pretrained=pretrained,
                weights=str(weights) if weights else None,
                head=head,
                head_dropout=head_dropout,
                input_size=input_size,
                normalize=normalize,
                device=device,
                seed=seed,
                workers=workers,
            )
            network, record = build_network(data, options), RunRecord(options)
        self.data = data
        self.classes = list(network.classes)
        self.spec = network.spec
        self.preprocessing = network.preprocessing
        self.device = select_device(device)
        # channels_last: oneDNN and cuDNN convolutions run faster on it (1.6× measured, CPU).
        self.model = network.model.to(self.device, memory_format=torch.channels_last)
        self.config: TrainConfig = record.config
        self.resolved_config: ResolvedConfig | None = record.resolved
        self.split = record.split if record.split is not None or data is None else data.to_record()
        self.history: list[dict] = list(record.history)
        self.metrics: dict = dict(record.metrics)
        self.precision_plan = record.precision_plan
        self.run_dir: Path | None = record.run_dir or (Path(record.config.out) if record.config.out else None)
        self.decision: Decision = record.decision
        self.references = record.references
        if data is not None and data.multi_label != self.decision.multi_label:
            self.decision = Decision(multi_label=data.multi_label)  # chosen on val by fit
        self.precision = precision
        self.lr_finder: LRFind | None = None
        self._fast: tuple[tuple, torch.nn.Module] | None = None
        self._top: list[str] | None = None

    @classmethod
    def create(cls, data: ImageData, arch: str = DEFAULT_ARCH, **options) -> Learner:
        """Build the network for ``data`` (weights fetched and loaded, statistics computed);
        ``options`` as for the constructor. The same as ``Learner(data, arch, **options)``."""
        return cls(data, arch, **options)

    @classmethod
    def from_config(cls, cfg: TrainConfig, data: ImageData | None = None) -> Learner:
        """Load the data and build the model that a config describes (the config is kept as the
        learner's options: :meth:`fit` without arguments trains as it says). ``data``: the
        dataset ``cfg`` names, if it is already loaded.

        Raises:
            GraftError: For an invalid option (checked before anything loads).
        """
        ran = cfg.resolved()  # fails fast; decides what is built (mode scratch: random weights)
        data = data if data is not None else load_data(cfg)
        learner = cls(data, build_network(data, ran), device=cfg.device, record=RunRecord(cfg))
        learner.resolve_config(cfg)  # the model's block names are known now: --unfreeze is checked
        return learner

    def fit(
        self,
        config: TrainConfig | None = None,
        *,
        log: Callable[[str], None] = print,
        checkpoint: str | Path | None = None,
        callbacks: Iterable[Callback] = (),
        loss: LossFn | None = None,
        metrics: Mapping[str, Metric] | None = None,
        **overrides,
    ) -> list[dict]:
        """Train on ``self.data``; the best epoch's weights are kept.

        Afterwards ``self.config`` is the request that ran and ``self.resolved_config`` what it
        resolved to (every default filled in, the rate ``lr="auto"`` found).

        Args:
            config: A full config (as the CLI builds); default: this learner's.
            log: Receives the per-epoch table lines.
            checkpoint: A run folder. After every epoch ``checkpoint.safetensors`` is written
                there; if it already holds one of this same run (killed, say), training goes on
                from it and ends as the uninterrupted run would have.
            callbacks: More callbacks for the engine's trainer, beside those it always uses
                (:mod:`graft.engine.callbacks`).
            loss: The training loss ``(logits, targets) -> scalar`` (default: cross-entropy with
                the config's label smoothing); also the val loss when given.
            metrics: ``name -> fn(logits, targets) -> float`` computed on the val predictions
                each epoch, recorded in the history as ``val_<name>`` (:mod:`graft.engine.metrics`).
            **overrides: Any :class:`TrainConfig` field, e.g. ``mode="features"``, ``epochs=5``.

        Returns:
            One dict per epoch (also in ``self.history``).
        """
        if self.data is None:
            raise GraftError("this learner has no data to train on")
        request = dataclasses.replace(config or self.config, **overrides)
        run, resume = self._resolve(request, checkpoint)
        log = main_only(log)
        start = time.perf_counter()
        timing: dict = {}
        if resume is None:  # a resumed run goes on with the recipe it chose
            parts = (self.model, self.spec, self.preprocessing, self.data)
            # Rank 0's measurement decides for every process: they must all run the same recipe.
            run, timing = broadcast(plan_by_time(*parts, run, self.device, self.default_top(), log))
        resumed_after = resume.progress.epoch if resume is not None else None  # fit moves it on
        found = None
        if run.lr == "auto":
            found = self._lr_find_once(run, log)
            run = dataclasses.replace(run, lr=found.suggestion or DEFAULT_LR[run.optimizer])
            if found.suggestion is None:
                warnings.warn(f"lr-find could not suggest a rate; using the default {run.lr:g}", stacklevel=2)
            else:
                log(f"lr-find: suggested lr {run.lr:.2e} ({found.phase} phase, {found.seconds:.1f} s)")
        result = fit(
            self.model,
            self.spec,
            self.preprocessing,
            self.data,
            run,
            self.device,
            log=log,
            checkpoint=checkpoint,
            resume=resume,
            callbacks=callbacks,
            loss=loss,
            metrics=metrics,
        )
        self.config, self.resolved_config = request, run
        trust = measure_trust(self.model, self.spec, self.preprocessing, self.data, run, self.device)
        self.references = trust.references
        self.decision = trust.applied(Decision(multi_label=self.data.multi_label))
        self.decision, at_thresholds = chosen_decision(self, run)
        for line in trust.lines:
            log(line)
        self.history = result.history
        self.precision_plan = result.precision.to_dict()
        self.lr_finder = found
        self.metrics = (
            _fit_metrics(result, time.perf_counter() - start, resumed_after)
            | at_thresholds
            | timing
            | trust.metrics
        )
        if found is not None:
            self.metrics["lr_found"] = run.lr
        return self.history

    def _resolve(
        self, request: TrainConfig, checkpoint: str | Path | None
    ) -> tuple[ResolvedConfig, Checkpoint | None]:
        """What ``request`` runs as on this learner, and the checkpoint of this very run to go on
        from (its options then, but for those that may change between a run and its resume)."""
        run = self.resolve_config(request)
        built = self.config  # the options this learner's network was built with
        if run.mode == "scratch" and built.pretrained and built.mode != "scratch":
            raise GraftError("mode 'scratch' needs a learner built with pretrained=False")
        if run.normalize != built.normalize:
            raise GraftError(
                f"normalize '{run.normalize}' is chosen when the learner is built; this one was built "
                f"with normalize='{built.normalize}' (Learner(data, arch, normalize=...))"
            )
        resume = matching_checkpoint(checkpoint, run.to_dict(), self.data.to_record()) if checkpoint else None
        if resume is not None:
            keep = {k: getattr(run, k) for k in MAY_DIFFER}
            run = ResolvedConfig.from_dict({**resume.meta["config"], **keep})
        return run, resume

    def _lr_find_once(self, cfg: ResolvedConfig, log: Callable[[str], None]) -> LRFind:
        """The range test; under torch.distributed rank 0 runs it alone and tells the others."""
        ranks = world()
        if not ranks.enabled:
            return self.lr_find(cfg, log=log)
        found = None
        if ranks.is_main:
            with local():
                found = self.lr_find(cfg, log=log)
        return broadcast(found)

    def lr_find(
        self,
        config: TrainConfig | None = None,
        *,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_it: int = 100,
        log: Callable[[str], None] = print,
        **overrides,
    ) -> LRFind:
        """The learning-rate range test on this learner's data; the weights are left unchanged.

        Tests what the first phase of the config trains: the head on the frozen body for
        ``finetune`` and ``features`` (seconds, on cached features), the whole network for
        ``full`` and ``scratch``. ``result.suggestion`` is a peak learning rate for ``fit(lr=…)``;
        ``result.plot()`` draws the curve.
        """
        if self.data is None:
            raise GraftError("this learner has no data to run lr-find on")
        cfg = dataclasses.replace(config or self.config, **overrides)
        run = self.resolve_config(cfg)
        if run.lr == "auto":  # the test sweeps its own rates; the phases are planned at the default
            run = dataclasses.replace(run, lr=DEFAULT_LR[run.optimizer])
        return lr_find(
            self.model,
            self.spec,
            self.preprocessing,
            self.data,
            run,
            self.device,
            start_lr=start_lr,
            end_lr=end_lr,
            num_it=num_it,
            log=log,
        )

    def resolve_config(self, request: TrainConfig) -> ResolvedConfig:
        """What ``request`` would run as on this learner: resolved for its model (can frozen
        epochs run on cached features?) and its data (multi-label? how imbalanced?)."""
        run = request.resolved(
            cached=feature_head(self.model, self.spec) is not None,
            multi_label=self.data.multi_label,
            imbalance=self.data.imbalance(),
            top=self.default_top(),
        )
        if run.unfreeze and run.unfreeze != ["all"]:
            select_blocks([name for name, _ in body_blocks(self.model, self.spec)], run.unfreeze)
        check_decision_options(run, self.data)
        return run

    def default_top(self) -> list[str]:
        """The body blocks fine-tuning trains by default (:func:`graft.models.split.default_top`)."""
        if self._top is None:
            self._top = default_top(self.model, self.spec, self.preprocessing.input_size)
        return self._top

    def save(self, run_dir: str | Path) -> Path:
        """Write the run folder (safetensors weights, graft.json, history.csv) atomically.

        ``graft.json`` holds the options asked for (``config``) and, once trained, what ran
        (``resolved``). The learner's :attr:`run_dir` becomes ``run_dir``.
        """
        meta = {
            "model": self.spec.to_dict(),
            "classes": self.classes,
            "preprocessing": self.preprocessing.to_dict(),
            "config": self.config.to_dict(),
            **({"resolved": self.resolved_config.to_dict()} if self.resolved_config is not None else {}),
            "split": self.split,
            "decision": self.decision.to_dict(self.classes),
            "metrics": self.metrics,
            "precision": self.precision_plan,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tensors = self.model.state_dict()
        if self.references is not None:
            tensors = {**tensors, REFERENCES_KEY: self.references}
        path = save_bundle(run_dir, tensors, meta, self.history)
        self.run_dir = Path(run_dir)
        return path


def _fit_metrics(result: FitResult, seconds: float, resumed_after: int | None) -> dict:
    """The run's numbers that ``graft.json`` keeps, from the engine's ``FitResult``."""
    metrics: dict = {"best_epoch": result.best_epoch, "train_seconds": round(seconds, 2)}
    ranks = world()
    if ranks.enabled:
        metrics["processes"] = ranks.size
    if result.stopped:
        metrics["stopped"] = result.stopped
    if result.unfreeze_skipped:
        metrics["skipped"] = result.unfreeze_skipped  # graft.json's key for it: kept
    if result.failed:
        metrics["undecodable_files"] = len(result.failed)
    if resumed_after is not None:
        metrics["resumed_after_epoch"] = resumed_after
    if result.best_epoch is not None:
        row = result.history[result.best_epoch - 1]
        prefix = "ema_" if result.kept == "ema" else ""  # the EMA's weights were kept: its scores
        # val_loss, val_acc and the standard metrics (val_bal_acc, val_map...) of the epoch kept
        metrics.update({k[len(prefix) :]: v for k, v in row.items() if k.startswith(f"{prefix}val_")})
    if "ema_val_loss" in (result.history[0] if result.history else {}):
        metrics["kept_weights"] = result.kept  # "ema" or "model": which --ema kept
    return metrics


def load_learner(run_dir: str | Path, device: str = "auto", precision: str = "fp32") -> Learner:
    """Load a saved run for evaluation and prediction. Needs only the run folder.

    ``precision``: the default arithmetic of its predictions (see :attr:`Learner.precision`).

    Raises:
        GraftError: If the folder is not a valid run, or its weights were modified.
    """
    network, record = read_run(run_dir)
    return Learner(None, network, device=device, record=record, precision=precision)


def resume_learner(run_dir: str | Path, device: str = "auto", workers: int | None = None) -> Learner:
    """The learner of an interrupted run, rebuilt from ``run_dir/checkpoint.safetensors`` (its
    options, its exact split, its weights); ``learn.fit(checkpoint=run_dir)`` then goes on.
    ``device`` and ``workers`` say where it runs now (they may differ from the killed run's).

    Raises:
        GraftError: If there is no readable checkpoint, or files of its split are gone.
    """
    network, data, record = read_checkpoint_run(run_dir, device=device, workers=workers)
    return Learner(data, network, device=device, record=record)
