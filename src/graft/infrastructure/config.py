"""The one typed configuration of a training run: what was asked, and what ran.

Every option of ``graft train`` is a field of :class:`TrainConfig`; the CLI builds its flags from
these fields (``help`` and ``choices`` live in the field metadata). A ``TrainConfig`` is the user's
request and is never changed; :meth:`TrainConfig.resolved` returns a separate
:class:`ResolvedConfig` with every per-context default filled in. A run's ``graft.json`` stores
both (``config``: the request, ``resolved``: what ran), so a run can be understood and repeated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from graft.infrastructure.errors import GraftError

MODES = ("features", "finetune", "full", "scratch")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "step", "cosine")
# The metric that picks the kept epoch. auto: val_map for multi-label data, val_bal_acc (balanced
# accuracy) when the largest training class has BALANCE_RATIO times the smallest, else val_acc.
MONITORS = ("auto", "val_loss", "val_acc", "val_bal_acc", "val_macro_f1", "val_map")
# Class imbalance: none, inverse-frequency loss weights, or a class-balanced sampler; auto picks
# weights from BALANCE_RATIO (largest / smallest training class) on, for single-label data.
BALANCES = ("auto", "none", "weights", "sampler")
BALANCE_RATIO = 3.0
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# What evaluation and prediction may run in (fp32 unless asked: see graft.infrastructure.runtime).
INFERENCE_PRECISIONS = ("fp32", "bf16", "fp16")
NORMALIZE = ("model", "data")
# Loggers beside history.csv (which is always written).
LOGGERS = ("none", "tensorboard")

# Epochs whose default depends on whether the frozen phase runs on cached features.
CACHED_FROZEN_EPOCHS, IMAGE_FROZEN_EPOCHS = 10, 3
# finetune without --epochs: unfrozen epochs, run only when the frozen head is below this accuracy.
AUTO_UNFROZEN_EPOCHS, AUTO_UNFREEZE_BELOW = 3, 0.95

# Learning-rate and weight-decay defaults per optimizer (fastai's and torchvision's usual values).
DEFAULT_LR = {"adamw": 2e-3, "adam": 1e-3, "sgd": 1e-2}
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2, "adam": 0.0, "sgd": 1e-4}


def parse_lr(text: str) -> float | str:
    """A learning rate from the command line: a number or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number or 'auto': {text}") from None


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``2m``, ``1.5h``.

    Raises:
        GraftError: For anything else, or a duration that is not positive.
    """
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = str(text).strip().lower()
    scale = units.get(t[-1:])
    try:
        seconds = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise GraftError(
            f"time budget '{text}': give seconds or a number with s, m or h (90s, 2m, 1h)"
        ) from None
    if not seconds > 0:
        raise GraftError(f"time budget '{text}' must be positive")
    return seconds


def _opt(help: str, **kw: Any) -> dict:
    return {"help": help, **kw}


@dataclass(frozen=True)
class TrainConfig:
    """All options of one training run, as asked for (immutable: ``dataclasses.replace`` makes a
    changed copy). ``None`` means "pick the default for the context"; :meth:`resolved` returns the
    separate record of what actually runs."""

    # --- data ---
    data: str = field(default="", metadata=_opt("dataset folder", positional=True))
    labels: str | None = field(
        default=None,
        metadata=_opt(
            "CSV of id,label (or id,labels: space-separated, multi-label) beside a flat image folder"
        ),
    )
    multi_label: bool | None = field(
        default=None,
        metadata=_opt(
            "the labels CSV lists any number of space-separated labels per image (empty: none): one "
            "sigmoid per class (default: when its label column is named labels or tags)"
        ),
    )
    valid_split: float = field(
        default=0.2, metadata=_opt("fraction held out for validation when there is no val/ folder")
    )
    test_split: float = field(
        default=0.0, metadata=_opt("fraction held out as a test split (class-folder datasets)")
    )
    augment: bool = field(
        default=True, metadata=_opt("train-time augmentation (crop, flip, rotation, jitter)")
    )
    min_scale: float = field(default=0.35, metadata=_opt("smallest area fraction of the random resized crop"))
    crop_padding: int = field(
        default=0,
        metadata=_opt(
            "random crop of the input size after zero-padding each side by this many pixels, "
            "instead of the random resized crop (CIFAR style)"
        ),
    )
    rotate: float = field(default=10.0, metadata=_opt("largest random rotation in degrees"))
    jitter: float = field(default=0.2, metadata=_opt("brightness/contrast/saturation jitter"))
    normalize: str = field(
        default="model",
        metadata=_opt(
            "model: the mean/std of the model's pretrained config; data: per-channel mean and std of "
            "the training images (computed once, saved with the run; for models trained from scratch)",
            choices=NORMALIZE,
        ),
    )
    # --- model ---
    arch: str = field(
        default="tf_efficientnet_lite0", metadata=_opt("timm, torchvision or graft architecture name")
    )
    pretrained: bool = field(default=True, metadata=_opt("start from ImageNet weights"))
    weights: str | None = field(default=None, metadata=_opt("pretrained weights file (.safetensors or .pth)"))
    head: int | None = field(
        default=None, metadata=_opt("hidden width of an MLP head (Linear-ReLU-Dropout-Linear)")
    )
    head_dropout: float = field(default=0.5, metadata=_opt("dropout of the MLP head"))
    input_size: int | None = field(
        default=None, metadata=_opt("input side in pixels (default: the model's own)")
    )
    # --- training ---
    mode: str = field(default="finetune", metadata=_opt("what to train", choices=MODES))
    epochs: int | None = field(
        default=None,
        metadata=_opt(
            "epochs of the main phase: unfrozen epochs after the frozen ones (finetune: 3, run only "
            "if the frozen head's val accuracy is below --unfreeze-below), or all epochs (features: "
            "10 on cached features, else 3; full and scratch: 2)"
        ),
    )
    freeze_epochs: int | None = field(
        default=None,
        metadata=_opt("finetune: epochs with the body frozen first (10 on cached features, else 3)"),
    )
    unfreeze_below: float | None = field(
        default=None,
        metadata=_opt(
            "finetune: unfreeze only if the frozen head's val accuracy is below this (default 0.95 "
            "when --epochs is not given; otherwise always unfreeze)"
        ),
    )
    cache_features: bool = field(
        default=True,
        metadata=_opt("frozen body: compute features once, cache them on disk, train the head on them"),
    )
    cache_views: int = field(
        default=0,
        metadata=_opt("augmented views per training image for cached frozen epochs (0: the eval view)"),
    )
    precision: str = field(
        default="auto",
        metadata=_opt(
            "arithmetic of training: auto (CUDA: mixed precision; CPU: bf16 for the frozen body's features "
            "of the training images where the CPU has native bf16, else fp32), fp32, bf16, fp16; "
            "validation and everything after training run in fp32",
            choices=PRECISIONS,
        ),
    )
    compile: bool = field(default=False, metadata=_opt("torch.compile the model for unfrozen training"))
    unfreeze: list[str] | None = field(
        default=None,
        metadata=_opt(
            "comma-separated body blocks to train (e.g. layer3,layer4), others staying frozen; all: "
            "every block; default (auto): for finetune, the model's last stage (EfficientNet: the "
            "last two blocks groups and conv_head; ResNet: layer4), else all"
        ),
    )
    cache_prefix: bool = field(
        default=True,
        metadata=_opt(
            "when the trained blocks leave a frozen prefix, compute its activations once (cached on "
            "disk) and train the top on them instead of on the images"
        ),
    )
    time_budget: str | None = field(
        default=None,
        metadata=_opt(
            "finetune: measure this machine first, then run the most accurate recipe whose estimate "
            "fits (full unfreeze, top stages on cached activations, or the frozen head), e.g. 90s, 2m, 1h"
        ),
    )
    freeze_bn: bool = field(
        default=True,
        metadata=_opt("keep pretrained BatchNorm statistics fixed while fine-tuning (Keras' advice)"),
    )
    lr: float | str | None = field(
        default=None,
        metadata=_opt(
            "peak learning rate of the head (default per optimizer), or 'auto' to pick it with "
            "the learning-rate range test (graft lr-find)",
            parse=parse_lr,
        ),
    )
    lr_mult: float | None = field(
        default=None,
        metadata=_opt(
            "head lr / first trained body block lr, rates spaced geometrically between them "
            "(default: finetune 100; full and scratch 1, one rate for all)"
        ),
    )
    optimizer: str = field(default="adamw", metadata=_opt("optimizer", choices=OPTIMIZERS))
    momentum: float = field(default=0.9, metadata=_opt("SGD momentum"))
    weight_decay: float | None = field(
        default=None,
        metadata=_opt(
            "weight decay, not applied to norms and biases (default: adamw 0.01, decoupled; "
            "adam 0, added to the gradient; sgd 1e-4)"
        ),
    )
    schedule: str = field(default="onecycle", metadata=_opt("learning-rate schedule", choices=SCHEDULES))
    step_size: int = field(default=7, metadata=_opt("step schedule: epochs between decays"))
    gamma: float = field(default=0.1, metadata=_opt("step schedule: decay factor"))
    label_smoothing: float = field(default=0.0, metadata=_opt("label smoothing of the cross-entropy loss"))
    batch_size: int = field(
        default=32, metadata=_opt("images per optimizer step (under torchrun: over all processes together)")
    )
    monitor: str = field(
        default="auto",
        metadata=_opt(
            "metric that picks the best checkpoint (ties: lower loss); auto: val_map for multi-label "
            f"data, val_bal_acc when the largest class has {BALANCE_RATIO:g}x the smallest, else val_acc",
            choices=MONITORS,
        ),
    )
    balance: str = field(
        default="auto",
        metadata=_opt(
            "class imbalance: weights (inverse-frequency loss weights), sampler (class-balanced "
            f"batches), none; auto: weights when the largest class has {BALANCE_RATIO:g}x the "
            "smallest (single-label)",
            choices=BALANCES,
        ),
    )
    threshold: float | None = field(
        default=None,
        metadata=_opt(
            "decision threshold: multi-label, one for every class (default: per class, the best F1 "
            "on val); two classes, the probability of the positive class from which it is answered"
        ),
    )
    target_recall: float | None = field(
        default=None,
        metadata=_opt("two classes: choose the threshold on val so the positive class keeps this recall"),
    )
    positive: str | None = field(
        default=None,
        metadata=_opt(
            "two classes: the positive class of --threshold/--target-recall (default: the smaller)"
        ),
    )
    calibrate: bool = field(
        default=True,
        metadata=_opt(
            "after training, fit a softmax temperature on val so confidences match accuracy "
            "(single-label); --no-calibrate keeps the raw softmax"
        ),
    )
    unknown_accept: float = field(
        default=0.95,
        metadata=_opt(
            "the unknown threshold answers this share of val images (the rest, and anything further "
            "from the training images, is answered unknown); 0: never answer unknown"
        ),
    )
    unknown_label: str = field(
        default="unknown", metadata=_opt("the answer for an image too far from every training image")
    )
    patience: int | None = field(
        default=None, metadata=_opt("stop a phase after this many epochs without improvement")
    )
    sync_bn: bool = field(
        default=False,
        metadata=_opt("under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)"),
    )
    ema: bool = field(
        default=False,
        metadata=_opt(
            "also keep an exponential moving average of the weights (timm's ModelEmaV3), validate it "
            "every epoch, and keep it when it validates better"
        ),
    )
    ema_decay: float = field(default=0.998, metadata=_opt("--ema: decay per optimizer step (with warmup)"))
    log: str = field(
        default="none",
        metadata=_opt(
            "also log each epoch to: tensorboard (event files in RUN/tensorboard)", choices=LOGGERS
        ),
    )
    aux_weight: float = field(default=0.4, metadata=_opt("weight of auxiliary-logit losses (inception)"))
    seed: int = field(default=0, metadata=_opt("random seed (splits, init, shuffling, augmentation)"))
    workers: int | None = field(
        default=None, metadata=_opt("data-loading worker processes (default from core count)")
    )
    device: str = field(default="auto", metadata=_opt("auto, cpu, cuda, cuda:N or mps"))
    out: str | None = field(default=None, metadata=_opt("run folder to write (default runs/<data>-<time>)"))
    report: bool = field(
        default=True, metadata=_opt("write report.html (curves, confusion matrix, top losses) after training")
    )

    def resolved(
        self,
        cached: bool = True,
        multi_label: bool = False,
        imbalance: float = 1.0,
        top: list[str] | None = None,
    ) -> ResolvedConfig:
        """What this request runs as: per-context defaults filled in, values checked.

        Args:
            cached: Whether frozen epochs will run on cached features (they are cheap then, so
                more of them are the default).
            multi_label: Whether the data has any number of labels per image.
            imbalance: Largest / smallest class in train (``monitor`` and ``balance`` ``auto``).
            top: The model's default blocks to unfreeze (:func:`graft.models.split.default_top`):
                what ``unfreeze`` auto means for finetune; None leaves it unresolved.

        Raises:
            GraftError: For an out-of-range or inconsistent option.
        """
        c = SimpleNamespace(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        for option, value, choices in (
            ("mode", c.mode, MODES),
            ("optimizer", c.optimizer, OPTIMIZERS),
            ("schedule", c.schedule, SCHEDULES),
            ("monitor", c.monitor, MONITORS),
            ("balance", c.balance, BALANCES),
            ("logger", c.log, LOGGERS),
            ("normalize", c.normalize, NORMALIZE),
        ):
            if value not in choices:
                raise GraftError(f"unknown {option} '{value}'; choose one of {', '.join(choices)}")
        if c.mode == "scratch":
            c.pretrained = False
        if not c.pretrained and not c.weights:
            c.freeze_bn = False  # random-init statistics must be learned
        frozen_default = CACHED_FROZEN_EPOCHS if cached and c.cache_features else IMAGE_FROZEN_EPOCHS
        if c.mode != "finetune":
            c.freeze_epochs = 0
            c.unfreeze_below = None
        elif c.freeze_epochs is None:
            c.freeze_epochs = frozen_default
        if c.epochs is None:
            if c.mode == "finetune":
                c.epochs = AUTO_UNFROZEN_EPOCHS
                if c.unfreeze_below is None:
                    c.unfreeze_below = AUTO_UNFREEZE_BELOW
            else:
                c.epochs = frozen_default if c.mode == "features" else 2
        if c.precision not in PRECISIONS:
            raise GraftError(f"unknown precision '{c.precision}'; choose one of {', '.join(PRECISIONS)}")
        if c.unfreeze == ["auto"]:
            c.unfreeze = None
        if c.mode == "features" and c.unfreeze:
            raise GraftError("--unfreeze needs mode finetune or full (features keeps the whole body frozen)")
        if c.mode == "finetune" and c.unfreeze is None and top is not None:
            c.unfreeze = list(top)
        if c.time_budget is not None:
            parse_duration(c.time_budget)
            if c.mode != "finetune":
                raise GraftError("--time-budget chooses among finetune recipes: it needs mode finetune")
        if c.lr is None:
            c.lr = DEFAULT_LR[c.optimizer]
        if isinstance(c.lr, str) and c.lr != "auto":
            raise GraftError(f"lr must be a number or 'auto', not '{c.lr}'")
        if c.lr_mult is None:
            c.lr_mult = 100.0 if c.mode == "finetune" else 1.0
        if c.weight_decay is None:
            c.weight_decay = DEFAULT_WEIGHT_DECAY[c.optimizer]
        _resolve_labels(c, multi_label, imbalance)
        _check_values(c)
        return ResolvedConfig(**vars(c))

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (older or newer runs)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _resolve_labels(c: SimpleNamespace, multi_label: bool, imbalance: float) -> None:
    """The monitor and balance that ``auto`` stands for, for this data."""
    c.multi_label = multi_label
    imbalanced = imbalance >= BALANCE_RATIO and not multi_label
    if c.monitor == "auto":
        c.monitor = "val_map" if multi_label else "val_bal_acc" if imbalanced else "val_acc"
    if c.monitor == "val_map" and not multi_label:
        raise GraftError(
            "--monitor val_map is for multi-label data; use val_acc, val_bal_acc or val_macro_f1"
        )
    if c.balance == "auto":
        c.balance = "weights" if imbalanced else "none"
    if multi_label and c.balance != "none":
        raise GraftError("--balance is for single-label data (multi-label thresholds are chosen per class)")
    if c.target_recall is not None and c.threshold is not None:
        raise GraftError("give --threshold or --target-recall, not both")


def _check_values(c: SimpleNamespace) -> None:
    """Refuse out-of-range values of a config being resolved."""
    checks = [
        (c.epochs >= 0 and c.freeze_epochs >= 0, "epochs must be >= 0"),
        (c.epochs + c.freeze_epochs > 0, "nothing to train: epochs and freeze-epochs are both 0"),
        (c.batch_size >= 1, "batch size must be >= 1"),
        ((c.lr == "auto" or c.lr > 0) and c.lr_mult >= 1, "lr must be > 0 and lr-mult >= 1"),
        (0 <= c.label_smoothing < 1, "label smoothing must be in [0, 1)"),
        (0 < c.min_scale <= 1, "min-scale must be in (0, 1]"),
        (c.crop_padding >= 0, "crop-padding must be >= 0"),
        (c.head is None or c.head >= 1, "head width must be >= 1"),
        (c.input_size is None or c.input_size >= 16, "input size must be >= 16 pixels"),
        (c.patience is None or c.patience >= 1, "patience must be >= 1"),
        (c.cache_views >= 0, "cache-views must be >= 0"),
        (0 < c.ema_decay < 1, "ema-decay must be in (0, 1)"),
        (c.unfreeze_below is None or 0 < c.unfreeze_below <= 1, "unfreeze-below must be in (0, 1]"),
        (c.threshold is None or 0 <= c.threshold <= 1, "threshold must be in [0, 1]"),
        (c.target_recall is None or 0 < c.target_recall <= 1, "target-recall must be in (0, 1]"),
        (0 <= c.unknown_accept <= 1, "unknown-accept must be in [0, 1]"),
        (0 < len(str(c.unknown_label).strip()) <= 100, "unknown-label must be a name of 1 to 100 characters"),
    ]
    for ok, message in checks:
        if not ok:
            raise GraftError(message)


@dataclass(frozen=True)
class ResolvedConfig(TrainConfig):
    """What a run ran with: a :class:`TrainConfig` whose per-context defaults are filled in
    (``epochs``, ``freeze_epochs``, ``unfreeze_below``, ``lr``, ``lr_mult``, ``weight_decay``,
    ``pretrained`` and ``freeze_bn`` for ``scratch``…), made only by :meth:`TrainConfig.resolved`
    (or read back from a run). The same field names, so the training engine reads either.

    ``lr`` stays ``"auto"`` until the range test has run: :meth:`graft.Learner.fit` then records
    the rate it found here (a new record), never in the request. Resolving it again changes
    nothing.
    """
