"""What one epoch runs on: the images themselves (:class:`ImagePass`) or cached body features
(:func:`feature_pass`); both implement :class:`Pass`, all the trainer knows of them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn

from graft.data.dataset import ImageData
from graft.data.loaders import BalancedSampler, Batch, balanced_weights, inference_workers, make_loader
from graft.data.transforms import Preprocessing, eval_transform, train_transform
from graft.engine.cached import augmentation, extract_splits
from graft.engine.loop import EpochStats, StepHooks, train_epoch
from graft.features.extract import Features, feature_head, head_logits, pre_head_dropout
from graft.features.forward import infer
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.distributed import all_gather, all_sum, per_rank_batch, sync_bn_view, world
from graft.infrastructure.errors import GraftError
from graft.infrastructure.memory import Pieces
from graft.infrastructure.runtime import PrecisionPlan, grad_scaler, inference_batch_size
from graft.models import ModelSpec
from graft.models.split import PrefixSplit

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Pass(Protocol):
    """What the trainer runs an epoch on.

    Attributes:
        steps_per_epoch: Optimizer steps in one epoch (the schedule's length depends on it).
        epochs_run: Epochs trained so far (for images, the sampler's epoch: a resume sets it).
        generators: Random-number generators of its own that a checkpoint must record.
    """

    steps_per_epoch: int
    epochs_run: int

    @property
    def generators(self) -> dict[str, torch.Generator]: ...

    def train_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss_fn: LossFn,
        desc: str,
        hooks: StepHooks | None = None,
    ) -> EpochStats:
        """One epoch of training with a step per batch (:func:`~graft.engine.loop.train_epoch`)."""
        ...

    def validate(self, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``(logits, sample indices, failed)`` of the val split, for the model trained (or
        ``model``, a copy of it such as an EMA of its weights); empty without a val split."""
        ...


class ImagePass:
    """Epochs over the images themselves (unfrozen phases, or frozen ones without a cache).

    Under torch.distributed each rank trains on its part of the images with its share of the
    global batch, through DistributedDataParallel, and validates its part of val; the epoch's
    statistics and the val logits are combined over the ranks, so every rank returns the same.
    """

    def __init__(
        self,
        model: nn.Module,
        pre: Preprocessing,
        data: ImageData,
        cfg: TrainConfig,
        device: torch.device,
        plan: PrecisionPlan,
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.world = world()
        self.precision, self.val_precision = plan.train, plan.inference
        self._net: tuple[tuple[int, ...], nn.Module] | None = None
        self.sync_bn = cfg.sync_bn and self.world.enabled
        if self.sync_bn and device.type != "cuda":
            raise GraftError("--sync-bn needs CUDA GPUs: torch's SyncBatchNorm does not run on the CPU")
        train_samples, val_samples = data.splits["train"], data.splits.get("val", [])
        shards = (self.world.rank, self.world.size) if self.world.enabled else None
        batch_size = per_rank_batch(cfg.batch_size, self.world)
        per_rank = -(-len(train_samples) // self.world.size)
        pin = device.type == "cuda"
        num_classes = len(data.classes) if data.multi_label else None
        balanced = cfg.balance == "sampler"
        self.train_loader = make_loader(
            train_samples,
            train_transform(pre, augmentation(cfg)),
            batch_size=batch_size,
            shuffle=True,
            workers=cfg.workers,
            seed=cfg.seed,
            min_size=pre.resize_size,
            pin_memory=pin,
            # A last batch of one image breaks BatchNorm in train mode.
            drop_last=per_rank > batch_size,
            shards=shards,
            num_classes=num_classes,
            sampler=BalancedSampler(balanced_weights(train_samples), cfg.seed, shards) if balanced else None,
        )
        self.val_loader = (
            make_loader(
                val_samples,
                eval_transform(pre),
                batch_size=inference_batch_size(device, batch_size),
                workers=inference_workers(device) if cfg.workers is None else cfg.workers,
                min_size=pre.resize_size,
                pin_memory=pin,
                shards=shards,
                num_classes=num_classes,
            )
            if val_samples
            else None
        )
        self.steps_per_epoch = len(self.train_loader)
        self.epochs_run = 0
        self.pieces = Pieces("training")  # kept across epochs: memory that ran out once stays short

    def _network(self) -> nn.Module:
        """The module to train: the model, wrapped in DDP when distributed and compiled if asked.

        DDP records which parameters need gradients when it is built, so it is built again
        whenever that set changes (from a frozen phase to an unfrozen one)."""
        trainable = tuple(i for i, p in enumerate(self.model.parameters()) if p.requires_grad)
        if self._net is None or self._net[0] != trainable:
            net = self.model
            if self.sync_bn:
                net = sync_bn_view(net)
            if self.world.enabled:
                ids = [self.device.index] if self.device.type == "cuda" else None
                net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
            self._net = (trainable, torch.compile(net) if self.cfg.compile else net)
        return self._net[1]

    @property
    def generators(self) -> dict[str, torch.Generator]:
        return {}  # the loaders' shuffles follow from the seed and epochs_run

    def train_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss_fn: LossFn,
        desc: str,
        hooks: StepHooks | None = None,
    ) -> EpochStats:
        net = self._network()
        self.train_loader.sampler.set_epoch(self.epochs_run)  # a new shuffle and new augmentations
        if self.world.enabled:
            # Every rank was seeded alike; give each its own dropout draws.
            torch.manual_seed(self.cfg.seed + 1_000_003 * (self.epochs_run + 1) + self.world.rank)
        self.epochs_run += 1
        stats = train_epoch(
            net,
            self.train_loader,
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
        return combine_stats(stats) if self.world.enabled else stats

    def validate(self, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        if self.val_loader is None:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long), []
        logits, idx, failed = infer(
            model or self.model, self.val_loader, self.device, desc="val", precision=self.val_precision
        )
        if not self.world.enabled:
            return logits, idx, failed
        parts = all_gather((logits, idx, failed))
        logits = torch.cat([p[0] for p in parts if p[0].numel()] or [logits])
        idx = torch.cat([p[1] for p in parts])
        # The sampler repeats a few samples to even out the ranks: keep each sample once, in order.
        order = torch.argsort(idx, stable=True)
        first = torch.ones(len(idx), dtype=torch.bool)
        first[1:] = idx[order][1:] != idx[order][:-1]
        keep = order[first]
        return logits[keep], idx[keep], sorted({i for p in parts for i in p[2]})


def combine_stats(stats: EpochStats) -> EpochStats:
    """One epoch's statistics over every rank: summed counts, image-weighted mean loss and accuracy."""
    loss_sum, correct, n, lr_max = all_sum([stats.loss * stats.n, stats.acc * stats.n, stats.n, stats.lr_max])
    failed = sorted({i for part in all_gather(stats.failed) for i in part})
    n = round(n)
    return EpochStats(
        loss=loss_sum / n if n else 0.0,
        acc=correct / n if n else 0.0,
        n=n,
        lr_max=lr_max / world().size,
        failed=failed,
    )


def feature_pass(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    cfg: TrainConfig,
    device: torch.device,
    plan: PrecisionPlan,
    log: Callable[[str], None],
    split: PrefixSplit | None = None,
) -> FeaturePass:
    """Compute (or read from the cache) the frozen body's features of train and val.

    Train features are computed in ``plan.features``, val features in ``plan.inference``
    (fp32), so the val metrics of a frozen epoch are those ``graft evaluate`` reproduces. With
    ``split`` (a later phase trains on the cached prefix), the same forward passes also cache
    the prefix's activations.
    """
    t0 = time.perf_counter()
    train, val = extract_splits(model, spec, pre, data, cfg, device, plan, split)
    computed = train.computed + val.computed
    total = train.vectors.shape[0] * train.vectors.shape[1] + val.vectors.shape[0]
    log(
        f"features of the frozen body: {total - computed} from the cache, {computed} computed "
        f"({time.perf_counter() - t0:.1f} s; train {plan.features}, val {plan.inference})"
    )
    balanced = torch.tensor(balanced_weights(data.splits["train"])) if cfg.balance == "sampler" else None
    return FeaturePass(
        feature_head(model, spec),
        pre_head_dropout(model, spec),
        train,
        data.targets("train"),
        val,
        data.targets("val"),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=device,
        head_of=lambda m: feature_head(m, spec),
        sample_weights=balanced,
    )


class FeaturePass:
    """Frozen epochs on cached vectors, through the same loop as the images.

    Each epoch shuffles the training images and, with several cached views, picks one view per
    image at random (seeded), then trains ``head`` batch by batch exactly as the full model would
    (the same pre-head dropout, loss, optimizer and per-batch schedule), through
    :func:`~graft.engine.loop.train_epoch` with :class:`_DroppedHead` as the model.

    Args:
        head: The model's head module (trained in place).
        dropout: Pre-head dropout rate (:func:`pre_head_dropout`).
        train: Training vectors; ``labels`` holds every training sample's label.
        val: Eval-view vectors of the val samples (None without a val split).
        head_of: The head of another copy of the model (to validate, say, an EMA of its weights).
        sample_weights: Per training sample (``balance="sampler"``): each epoch draws the samples
            with replacement in proportion to them instead of shuffling.
    """

    def __init__(
        self,
        head: nn.Module,
        dropout: float,
        train: Features,
        labels: torch.Tensor,
        val: Features | None,
        val_labels: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
        head_of: Callable[[nn.Module], nn.Module | None] | None = None,
        sample_weights: torch.Tensor | None = None,
    ) -> None:
        self.head, self.dropout, self.device = head, dropout, device
        self.net = _DroppedHead(head, dropout)
        self.head_of = head_of
        self.train_set, self.val_set = train, val
        self.x, self.y = train.vectors, labels[train.index]
        # Class-balanced epochs: draws with replacement in proportion to these (None: a shuffle).
        self.sample_weights = None if sample_weights is None else sample_weights[train.index].double()
        self.val_labels = val_labels
        self.batch_size = batch_size
        n = len(self.y)
        # Same rule as the image loader: a last batch of one would break BatchNorm in MLP heads.
        self.drop_last = n > batch_size
        self.steps_per_epoch = max(1, n // batch_size if self.drop_last else -(-n // batch_size))
        self.generator = torch.Generator().manual_seed(seed)
        self.epochs_run = 0

    @property
    def generators(self) -> dict[str, torch.Generator]:
        return {"features": self.generator}

    def _batches(self) -> Iterator[Batch]:
        """This epoch's batches of vectors (the order and views drawn when the epoch starts)."""
        n, views = self.x.shape[0], self.x.shape[1]
        if self.sample_weights is None:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=self.generator)
        pick = torch.randint(views, (n,), generator=self.generator)
        for step in range(self.steps_per_epoch):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield Batch(self.x[idx, pick[idx]], self.y[idx], idx, [])

    def train_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss_fn: LossFn,
        desc: str,
        hooks: StepHooks | None = None,
    ) -> EpochStats:
        """One pass over the cached training vectors."""
        self.epochs_run += 1
        stats = train_epoch(
            self.net,
            _Epoch(self._batches, self.steps_per_epoch),
            optimizer,
            scheduler,
            loss_fn,
            self.device,
            grad_scaler(self.device, "fp32"),
            aux_weight=0.0,
            desc=desc,
            hooks=hooks,
        )
        stats.failed = list(self.train_set.failed)
        return stats

    @torch.inference_mode()
    def validate(self, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``(logits, sample indices, failed)`` of the val set, as
        :func:`~graft.features.forward.infer` returns them."""
        if self.val_set is None or not len(self.val_set.index):
            failed = self.val_set.failed if self.val_set is not None else []
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long), failed
        head = self.head if model is None else self.head_of(model)
        logits = head_logits(head, self.val_set.vectors[:, 0], self.device)
        return logits, self.val_set.index, self.val_set.failed


class _Epoch:
    """An iterable of one epoch's batches with a length (the progress bar shows it)."""

    def __init__(self, batches: Callable[[], Iterator[Batch]], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def __len__(self) -> int:
        return self.steps


class _DroppedHead(nn.Module):
    """The head behind the full model's pre-head dropout: what a cached vector goes through."""

    def __init__(self, head: nn.Module, dropout: float) -> None:
        super().__init__()
        self.head, self.dropout = head, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # training=True as the full model in train mode; the head's own mode is set_train_mode's.
        return self.head(nn.functional.dropout(x, self.dropout, training=True))
