"""The Learner: a model, its data and its training record, behind a few methods.

data = ImageData.from_folder("hymenoptera")
learn = Learner(data, "tf_efficientnet_lite0")
learn.fit(epochs=3)
learn.evaluate()                  # the labeled test split if there is one, else val
learn.predict("bee.jpg")
learn.save("runs/bees")
learn = load_learner("runs/bees")
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from graft.data.dataset import ImageData, Sample
from graft.data.selection import eval_samples, expand_paths
from graft.data.stats import channel_stats
from graft.data.transforms import Preprocessing, eval_transform
from graft.engine.checkpoint import MAY_DIFFER, checkpoint_meta, matching_checkpoint
from graft.engine.lr_find import LRFind, lr_find
from graft.engine.trainer import fit
from graft.evaluation.interpret import Interpretation
from graft.evaluation.metrics import EvalResult
from graft.features.extract import feature_head
from graft.inference.predict import predict_probs
from graft.inference.predictions import Prediction, top_k
from graft.infrastructure.checks import texts
from graft.infrastructure.config import DEFAULT_LR, INFERENCE_PRECISIONS, NORMALIZE, TrainConfig
from graft.infrastructure.distributed import broadcast, local, main_first, main_only, world
from graft.infrastructure.errors import GraftError
from graft.infrastructure.runtime import (
    autocast,
    channels_last,
    check_precision,
    seed_everything,
    select_device,
)
from graft.infrastructure.text import plural
from graft.learner.bundle import load_bundle, read_history, save_bundle
from graft.models import ModelSpec, build_model, check_input_size, create_model, fetch_weights
from graft.models.fuse import inference_model
from graft.models.weights import load_state


class Learner:
    """A classifier grafted onto a pretrained body, with what it was trained on and how.

    Args:
        data: The dataset to train on (None for a learner loaded only to predict).
        arch: timm or torchvision architecture (``timm:NAME`` / ``torchvision:NAME`` to force one).
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
    """

    def __init__(
        self,
        data: ImageData,
        arch: str = "tf_efficientnet_lite0",
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
    ) -> None:
        if normalize not in NORMALIZE:
            raise GraftError(f"unknown normalize '{normalize}'; choose one of {', '.join(NORMALIZE)}")
        config = TrainConfig(
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
        seed_everything(seed)
        if pretrained and not weights:
            main_first(lambda: fetch_weights(arch))  # one download, not one per rank
        model, spec, pre = create_model(
            arch,
            len(data.classes),
            pretrained=pretrained,
            weights=weights,
            head_hidden=head,
            head_dropout=head_dropout,
            input_size=input_size,
        )
        if input_size:
            check_input_size(spec, input_size)
            pre = dataclasses.replace(pre, input_size=input_size)
        if normalize == "data":
            mean, std = channel_stats(data.splits["train"], pre, seed=seed, workers=workers)
            pre = dataclasses.replace(pre, mean=mean, std=std)
        self._attach(model, spec, pre, list(data.classes), config, device, data=data, split=data.to_record())

    def _attach(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        pre: Preprocessing,
        classes: list[str],
        config: TrainConfig,
        device: str,
        *,
        data: ImageData | None,
        split: dict | None,
        metrics: dict | None = None,
        history: list[dict] | None = None,
        precision_plan: dict | None = None,
    ) -> None:
        """Set every attribute of a learner: the one place both construction paths go through."""
        self.data = data
        self.classes = classes
        self.config = config
        self.spec = spec
        self.preprocessing = pre
        self.device = select_device(device)
        # channels_last: oneDNN and cuDNN convolutions run faster on it (1.6× measured, CPU).
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.history: list[dict] = list(history or [])
        self.metrics: dict = dict(metrics or {})
        self.split = split
        self.precision = "fp32"
        self.precision_plan = precision_plan
        self._fast: tuple[tuple, torch.nn.Module] | None = None
        self.lr_finder: LRFind | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Learner:
        """Load the data and build the model that a (resolved) config describes."""
        data = ImageData.from_folder(
            cfg.data, labels=cfg.labels, valid_split=cfg.valid_split, test_split=cfg.test_split, seed=cfg.seed
        )
        learn = cls(
            data,
            cfg.arch,
            pretrained=cfg.pretrained,
            weights=cfg.weights,
            head=cfg.head,
            head_dropout=cfg.head_dropout,
            input_size=cfg.input_size,
            normalize=cfg.normalize,
            device=cfg.device,
            seed=cfg.seed,
            workers=cfg.workers,
        )
        learn.config = cfg
        return learn

    def fit(
        self,
        config: TrainConfig | None = None,
        *,
        log: Callable[[str], None] = print,
        checkpoint: str | Path | None = None,
        **overrides,
    ) -> list[dict]:
        """Train on ``self.data``; the best epoch's weights are kept.

        Args:
            config: A full config (as the CLI builds); default: this learner's.
            log: Receives the per-epoch table lines.
            checkpoint: A run folder. After every epoch ``checkpoint.safetensors`` is written
                there; if it already holds one of this same run (killed, say), training goes on
                from it and ends as the uninterrupted run would have.
            **overrides: Any :class:`TrainConfig` field, e.g. ``mode="features"``, ``epochs=5``.

        Returns:
            One dict per epoch (also in ``self.history``).
        """
        if self.data is None:
            raise GraftError("this learner has no data to train on")
        ranks = world()
        log = main_only(log)
        if "epochs" in overrides and "unfreeze_below" not in overrides:
            overrides["unfreeze_below"] = None  # asked-for epochs always run (as on the CLI)
        cfg = dataclasses.replace(config or self.config, **overrides)
        cfg = cfg.resolved(cached=feature_head(self.model, self.spec) is not None)
        if cfg.mode == "scratch" and self.config.pretrained:
            raise GraftError("mode 'scratch' needs a learner built with pretrained=False")
        if cfg.normalize != self.config.normalize:
            raise GraftError(
                f"normalize '{cfg.normalize}' is chosen when the learner is built; this one was built "
                f"with normalize='{self.config.normalize}' (Learner(data, arch, normalize=...))"
            )
        start = time.perf_counter()
        resume = matching_checkpoint(checkpoint, cfg.to_dict(), self.data.to_record()) if checkpoint else None
        resumed_after = resume.progress.epoch if resume is not None else None  # fit moves it on
        if resume is not None:
            keep = {k: getattr(cfg, k) for k in MAY_DIFFER}
            cfg = dataclasses.replace(TrainConfig.from_dict(resume.meta["config"]), **keep)
        found = None
        if cfg.lr == "auto":
            found = self._lr_find_once(cfg, log)
            cfg.lr = found.suggestion or DEFAULT_LR[cfg.optimizer]
            if found.suggestion is None:
                warnings.warn(f"lr-find could not suggest a rate; using the default {cfg.lr:g}", stacklevel=2)
            else:
                log(f"lr-find: suggested lr {cfg.lr:.2e} ({found.phase} phase, {found.seconds:.1f} s)")
        result = fit(
            self.model,
            self.spec,
            self.preprocessing,
            self.data,
            cfg,
            self.device,
            log=log,
            checkpoint=checkpoint,
            resume=resume,
        )
        self.config = cfg
        self.history = result.history
        self.precision_plan = result.precision.to_dict()
        self.lr_finder = found
        self.metrics = {
            "best_epoch": result.best_epoch,
            "train_seconds": round(time.perf_counter() - start, 2),
        }
        if found is not None:
            self.metrics["lr_found"] = cfg.lr
        if ranks.enabled:
            self.metrics["processes"] = ranks.size
        if result.stopped:
            self.metrics["stopped"] = result.stopped
        if result.skipped:
            self.metrics["skipped"] = result.skipped
        if result.failed:
            self.metrics["undecodable_files"] = len(result.failed)
        if resumed_after is not None:
            self.metrics["resumed_after_epoch"] = resumed_after
        if result.best_epoch is not None:
            kept = result.history[result.best_epoch - 1]
            self.metrics.update(val_loss=kept["val_loss"], val_acc=kept["val_acc"])
        return self.history

    def _lr_find_once(self, cfg: TrainConfig, log: Callable[[str], None]) -> LRFind:
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
        if cfg.lr == "auto":
            cfg.lr = None
        cfg = cfg.resolved(cached=feature_head(self.model, self.spec) is not None)
        return lr_find(
            self.model,
            self.spec,
            self.preprocessing,
            self.data,
            cfg,
            self.device,
            start_lr=start_lr,
            end_lr=end_lr,
            num_it=num_it,
            log=log,
        )

    def evaluate(
        self,
        data: str | Path | ImageData | None = None,
        split: str | None = None,
        *,
        tta: bool | int = False,
        batch_size: int | None = None,
    ) -> EvalResult:
        """Evaluate on labeled images the model did not train on.

        Args:
            data: None for this learner's data; an :class:`ImageData`; a folder of class
                folders; or a dataset root (with ``split``, or the labeled test split if any, else val).
                For datasets split by fractions, the split saved at training time is reused.
            split: ``"test"`` or ``"val"`` (or ``"train"``).
            tta: Average test-time augmentation views: True or 2 (centre and mirror), or 4 (also
                the two end crops).
            batch_size: Images per forward pass (default: 32 on a CPU, more on a GPU); it changes
                speed and memory, not the answers (beyond the last float bits).
        """
        return self.interpret(data, split, tta=tta, batch_size=batch_size).result

    def interpret(
        self,
        data: str | Path | ImageData | None = None,
        split: str | None = None,
        *,
        tta: bool | int = False,
        batch_size: int | None = None,
    ) -> Interpretation:
        """Predictions on labeled images, with confusion, top losses and plots (see :meth:`evaluate`
        for the arguments)."""
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
            raise GraftError(f"the batch size must be a whole number of at least 1, not {batch_size!r}")
        samples, source = eval_samples(
            data if data is not None else self.data, split, self.classes, self.split
        )
        probs, kept = predict_probs(
            self.model,
            self.spec,
            self.preprocessing,
            samples,
            self.device,
            precision=self.precision,
            batch_size=batch_size,
            workers=self.config.workers,
            use_cache=self.config.cache_features,
            tta=tta,
        )
        if probs.shape[0] == 0:
            probs = np.zeros((0, len(self.classes)))
        return Interpretation(
            classes=list(self.classes),
            paths=[samples[i].path for i in kept],
            labels=np.array([samples[i].label for i in kept], dtype=np.int64),
            probs=probs,
            preprocessing=self.preprocessing,
            source=source,
            skipped=len(samples) - len(kept),
            tta=2 if tta is True else int(tta),
        )

    def predict(
        self, paths: str | Path | Sequence[str | Path], k: int = 1, *, tta: bool | int = False
    ) -> list[Prediction]:
        """Top-``k`` predictions for image files and/or folders (searched recursively).

        Undecodable files are warned about and left out. ``tta``: see :meth:`evaluate`.
        """
        kept, probs = self.predict_probs(paths, tta=tta)
        return top_k(probs, kept, self.classes, k)

    def predict_probs(
        self, paths: str | Path | Sequence[str | Path], *, tta: bool | int = False
    ) -> tuple[list[Path], np.ndarray]:
        """Full class probabilities (columns in ``self.classes`` order) for the decodable images.

        Returns:
            ``(paths, probs)``: the images that could be decoded, and one row of probabilities each.
        """
        samples = [Sample(p, None) for p in expand_paths(paths)]
        probs, kept = predict_probs(
            self.model,
            self.spec,
            self.preprocessing,
            samples,
            self.device,
            precision=self.precision,
            workers=self.config.workers,
            fast=self._inference_model(),
            tta=tta,
        )
        return [samples[i].path for i in kept], probs

    @torch.inference_mode()
    def predict_images(self, images: Sequence[Image.Image | torch.Tensor]) -> np.ndarray:
        """Class probabilities (rows in input order) for decoded RGB images held in memory, as
        a server receives them; preprocessing as in :meth:`predict_probs`, in one batch. A tensor
        is taken as already preprocessed (the eval transform's output)."""
        if not images:
            return np.zeros((0, len(self.classes)))
        transform = eval_transform(self.preprocessing)
        x = torch.stack([im if isinstance(im, torch.Tensor) else transform(im) for im in images])
        x = channels_last(x.to(self.device))
        with autocast(self.device, self.precision):
            logits = self._inference_model()(x)
        return torch.softmax(logits.double(), dim=1).cpu().numpy()

    def _inference_model(self) -> torch.nn.Module:
        """The BatchNorm-folded copy used for prediction, rebuilt only when the weights changed
        (every in-place update, e.g. an optimizer step or ``load_state_dict``, bumps a tensor's
        version counter)."""
        state = self.model.state_dict()
        stamp = tuple((t.data_ptr(), t._version) for t in state.values())
        if self._fast is None or self._fast[0] != stamp:
            self._fast = (stamp, inference_model(self.model, self.preprocessing.input_size, self.device))
        return self._fast[1]

    @property
    def precision(self) -> str:
        """Arithmetic of evaluation and prediction: ``fp32`` (the default: the numbers agree with
        the val metrics of training, with the other commands and with the export, on any machine),
        or ``bf16``/``fp16``, faster where the hardware has them, by about 1e-2 in probability."""
        return self._precision

    @precision.setter
    def precision(self, name: str) -> None:
        self._precision = check_precision(name, self.device, INFERENCE_PRECISIONS)

    def save(self, run_dir: str | Path) -> Path:
        """Write the run folder (safetensors weights, graft.json, history.csv) atomically."""
        meta = {
            "model": self.spec.to_dict(),
            "classes": self.classes,
            "preprocessing": self.preprocessing.to_dict(),
            "config": self.config.to_dict(),
            "split": self.split,
            "metrics": self.metrics,
            "precision": self.precision_plan,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return save_bundle(run_dir, self.model.state_dict(), meta, self.history)


def load_learner(run_dir: str | Path, device: str = "auto", precision: str = "fp32") -> Learner:
    """Load a saved run for evaluation and prediction. Needs only the run folder.

    ``precision``: the arithmetic of its predictions (see :attr:`Learner.precision`).

    Raises:
        GraftError: If the folder is not a valid run, or its weights were modified.
    """
    state_dict, meta = load_bundle(run_dir)
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
    learn = Learner.__new__(Learner)  # no data to build from: assemble from the bundle instead
    learn._attach(
        model.eval(),
        spec,
        pre,
        classes,
        TrainConfig.from_dict(meta.get("config", {})),
        device,
        data=None,
        split=meta.get("split"),
        metrics=meta.get("metrics"),
        history=read_history(run_dir),
        precision_plan=meta.get("precision"),
    )
    learn.precision = precision
    return learn


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


def resume_learner(run_dir: str | Path, device: str = "auto") -> Learner:
    """The learner of an interrupted run, rebuilt from ``run_dir/checkpoint.safetensors`` (its
    options, its exact split, its weights); ``learn.fit(checkpoint=run_dir)`` then goes on.

    Raises:
        GraftError: If there is no readable checkpoint, or files of its split are gone.
    """
    meta = checkpoint_meta(run_dir)  # the tensors are read once, by fit
    cfg = TrainConfig.from_dict(meta["config"])
    cfg.device = device
    data = ImageData.from_record(meta["split"]["root"], meta["split"])
    spec = ModelSpec.from_dict(meta["model"])
    learn = Learner.__new__(Learner)  # built from the checkpoint, not from pretrained weights
    learn._attach(
        build_model(spec),
        spec,
        Preprocessing.from_dict(meta["preprocessing"]),
        list(meta["classes"]),
        cfg,
        device,
        data=data,
        split=data.to_record(),
    )
    return learn
