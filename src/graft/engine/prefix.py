"""Fine-tuning at the price of a frozen head: epochs of the body's top stages on cached
activations of its frozen prefix (:class:`PrefixPass`).

The prefix runs once per image and view, in the same forward passes that compute the frozen
head's features (:func:`~graft.engine.cached.extract_splits`); its activations wait on disk,
and each epoch reads one batch of them at a time, so memory does not grow with the dataset.
Augmentation comes from the cached views (``--cache-views``): each epoch draws one per image.

BatchNorm in the trained stages behaves as in an unfrozen phase on the images: with
``--freeze-bn`` (the default) it normalises with the pretrained statistics and trains only its
scale and shift, so the top computes the same function of an activation in training and in
evaluation; without it, it uses batch statistics, as an unfrozen phase would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.data.loaders import Batch, balanced_weights
from graft.data.transforms import Preprocessing
from graft.engine.cached import activation_cache, extract_splits
from graft.engine.loop import EpochStats, StepHooks, train_epoch
from graft.engine.passes import LossFn, _Epoch
from graft.features.activations import RowReader
from graft.features.extract import Features
from graft.features.forward import split_outputs
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.memory import Pieces
from graft.infrastructure.runtime import PrecisionPlan, autocast, grad_scaler, inference_batch_size
from graft.infrastructure.text import plural
from graft.models import ModelSpec
from graft.models.split import PrefixSplit, Suffix


def prefix_pass(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    cfg: TrainConfig,
    device: torch.device,
    plan: PrecisionPlan,
    split: PrefixSplit,
    log: Callable[[str], None],
) -> PrefixPass | None:
    """The cached activations of train and val (computed now where missing), ready to train on;
    None when the cache could not hold them all (it could not be written: the caller trains on
    the images)."""
    t0 = time.perf_counter()
    train, val = extract_splits(model, spec, pre, data, cfg, device, plan, split)
    train_cache = activation_cache(model, spec, pre, plan.features, split)
    val_cache = activation_cache(model, spec, pre, plan.inference, split)
    lost = train_cache.missing(k for ks in train.keys for k in ks) + val_cache.missing(k[0] for k in val.keys)
    if lost:
        log(f"note: {plural(len(lost), 'activation')} could not be cached: the top trains on the images")
        return None
    train_rows, val_rows = sum(len(k) for k in train.keys), len(val.keys)
    rows = train_rows + val_rows
    mb = (2 * train_rows + 4 * val_rows) * math.prod(split.shape) / 2**20  # bfloat16 and float32
    log(
        f"activations of the frozen prefix: {split.describe()}; {plural(rows, 'activation')} "
        f"(about {mb:.0f} MB on disk), ready in {time.perf_counter() - t0:.1f} s"
    )
    balanced = torch.tensor(balanced_weights(data.splits["train"])) if cfg.balance == "sampler" else None
    return PrefixPass(
        model,
        split,
        (train, train_cache.reader()),
        data.targets("train"),
        (val, val_cache.reader()),
        data.targets("val"),
        cfg=cfg,
        device=device,
        plan=plan,
        sample_weights=balanced,
    )


class PrefixPass:
    """Epochs of the top of ``model`` (:class:`~graft.models.split.Suffix`) on cached activations.

    Each epoch shuffles the training images (or, with ``sample_weights``, draws them in
    proportion), picks one cached view per image (seeded), and reads each batch's rows from disk;
    the loop, loss, optimizer and schedule are those of an epoch on the images
    (:func:`~graft.engine.loop.train_epoch`).

    Args:
        model: The whole network (its top trains through the suffix).
        split: Where it is cut.
        train: Training features (their ``keys`` name the cached activations) and a reader.
        val: The same for val.
    """

    def __init__(
        self,
        model: nn.Module,
        split: PrefixSplit,
        train: tuple[Features, RowReader],
        labels: torch.Tensor,
        val: tuple[Features, RowReader],
        val_labels: torch.Tensor,
        *,
        cfg: TrainConfig,
        device: torch.device,
        plan: PrecisionPlan,
        sample_weights: torch.Tensor | None = None,
    ) -> None:
        self.model, self.split, self.device, self.cfg = model, split, device, cfg
        self.net = Suffix(model, split)
        (self.train_set, self.reader), (self.val_set, self.val_reader) = train, val
        self.y = labels[self.train_set.index]
        self.val_labels = val_labels
        self.sample_weights = (
            None if sample_weights is None else sample_weights[self.train_set.index].double()
        )
        self.precision, self.val_precision = plan.train, plan.inference
        self.batch_size = cfg.batch_size
        n = len(self.y)
        self.drop_last = n > self.batch_size  # a last batch of one breaks BatchNorm in train mode
        self.steps_per_epoch = max(1, n // self.batch_size if self.drop_last else -(-n // self.batch_size))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epochs_run = 0
        self.pieces = Pieces("training")

    @property
    def generators(self) -> dict[str, torch.Generator]:
        return {"prefix": self.generator}

    def _batches(self) -> Iterator[Batch]:
        keys = self.train_set.keys
        n, views = len(keys), len(keys[0]) if keys else 1
        if self.sample_weights is None:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=self.generator)
        pick = torch.randint(views, (n,), generator=self.generator)
        for step in range(self.steps_per_epoch):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            rows = self.reader.read([keys[i][pick[i]] for i in idx.tolist()])
            yield Batch(rows, self.y[idx], idx, [])

    def train_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss_fn: LossFn,
        desc: str,
        hooks: StepHooks | None = None,
    ) -> EpochStats:
        """One pass of the top over the cached training activations."""
        self.epochs_run += 1
        stats = train_epoch(
            self.net,
            _Epoch(self._batches, self.steps_per_epoch),
            optimizer,
            scheduler,
            loss_fn,
            self.device,
            grad_scaler(self.device, self.precision),
            self.cfg.aux_weight,
            desc=desc,
            precision=self.precision,
            pieces=self.pieces,
            hooks=hooks,
        )
        stats.failed = list(self.train_set.failed)
        return stats

    @torch.inference_mode()
    def validate(self, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``(logits, sample indices, failed)`` of the val set, from its cached activations."""
        keys = self.val_set.keys
        if not keys:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long), self.val_set.failed
        net = Suffix(model or self.model, self.split).eval()
        size = inference_batch_size(self.device, self.batch_size)
        outs = []
        for start in range(0, len(keys), size):
            rows = self.val_reader.read([k[0] for k in keys[start : start + size]]).to(self.device)
            with autocast(self.device, self.val_precision):
                logits, _ = split_outputs(net(rows))
            outs.append(logits.float().cpu())
        return torch.cat(outs), self.val_set.index, self.val_set.failed
