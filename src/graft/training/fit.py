"""The training driver: phases, validation, best checkpoint, early stopping, history."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from graft.config import TrainConfig
from graft.data.dataset import ImageData
from graft.data.loaders import inference_workers, make_loader
from graft.data.transforms import Augmentation, Preprocessing, eval_transform, train_transform
from graft.errors import GraftError
from graft.models import ModelSpec, body_blocks
from graft.training.cache import FeatureCache, default_cache_root
from graft.training.distributed import (
    all_gather,
    all_sum,
    broadcast,
    main_only,
    per_rank_batch,
    sync_bn_view,
    world,
)
from graft.training.features import (
    FeaturePass,
    augmented_views,
    body_key,
    eval_view,
    extract_features,
    feature_head,
    pre_head_dropout,
)
from graft.training.loop import EpochStats, infer, train_epoch, warn_failed
from graft.training.optim import (
    Phase,
    apply_phase,
    make_optimizer,
    make_scheduler,
    plan_phases,
    set_train_mode,
)
from graft.training.runtime import grad_scaler, inference_batch_size, resolve_precision, seed_everything


@dataclass
class FitResult:
    """What :func:`fit` did: one history row per epoch and the epoch whose weights were kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped: str | None = None
    skipped: str | None = None


def _better(row: dict, best: dict | None, monitor: str) -> bool:
    if best is None:
        return True
    if monitor == "val_acc":
        # Ties in accuracy are common on small val sets: break them with the loss.
        return (row["val_acc"], -row["val_loss"]) > (best["val_acc"], -best["val_loss"])
    return row["val_loss"] < best["val_loss"]


def _format_row(row: dict) -> str:
    val = f"{row['val_loss']:9.4f}  {row['val_acc']:7.4f}" if row["val_loss"] != "" else f"{'-':>9}  {'-':>7}"
    return (
        f"{row['epoch']:>5}  {row['phase']:<8}  {row['train_loss']:10.4f}  {row['train_acc']:9.4f}  "
        f"{val}  {row['lr']:9.2e}  {row['seconds']:7.1f}"
    )


HEADER = (
    f"{'epoch':>5}  {'phase':<8}  {'train_loss':>10}  {'train_acc':>9}  "
    f"{'val_loss':>9}  {'val_acc':>7}  {'lr':>9}  {'seconds':>7}"
)


def _augmentation(cfg: TrainConfig) -> Augmentation:
    return Augmentation(enabled=cfg.augment, min_scale=cfg.min_scale, rotate=cfg.rotate, jitter=cfg.jitter)


class ImagePass:
    """Epochs over the images themselves (unfrozen phases, or frozen ones without a cache).

    Under torch.distributed each rank trains on its part of the images with its share of the
    global batch, through DistributedDataParallel, and validates its part of val; the epoch's
    statistics and the val logits are combined over the ranks, so every rank returns the same.
    """

    def __init__(
        self, model: nn.Module, pre: Preprocessing, data: ImageData, cfg: TrainConfig, device: torch.device
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.world = world()
        self.precision = resolve_precision(cfg.precision, device, training=True)
        self.val_precision = resolve_precision(cfg.precision, device)
        self._net: tuple[tuple[int, ...], nn.Module] | None = None
        self.sync_bn = cfg.sync_bn and self.world.enabled
        if self.sync_bn and device.type != "cuda":
            raise GraftError("--sync-bn needs CUDA GPUs: torch's SyncBatchNorm does not run on the CPU")
        train_samples, val_samples = data.splits["train"], data.splits.get("val", [])
        shards = (self.world.rank, self.world.size) if self.world.enabled else None
        batch_size = per_rank_batch(cfg.batch_size, self.world)
        per_rank = -(-len(train_samples) // self.world.size)
        pin = device.type == "cuda"
        self.train_loader = make_loader(
            train_samples,
            train_transform(pre, _augmentation(cfg)),
            batch_size=batch_size,
            shuffle=True,
            workers=cfg.workers,
            seed=cfg.seed,
            min_size=pre.resize_size,
            pin_memory=pin,
            # A last batch of one image breaks BatchNorm in train mode.
            drop_last=per_rank > batch_size,
            shards=shards,
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
            )
            if val_samples
            else None
        )
        self.steps_per_epoch = len(self.train_loader)
        self.epochs_run = 0

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

    def train_epoch(self, optimizer, scheduler, loss_fn, desc: str) -> EpochStats:
        net = self._network()
        if self.world.enabled:
            self.train_loader.sampler.set_epoch(self.epochs_run)  # a new shuffle each epoch
            # Every rank was seeded alike; give each its own dropout and augmentation draws.
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
        )
        return combine_stats(stats) if self.world.enabled else stats

    def validate(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        if self.val_loader is None:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long), []
        logits, idx, failed = infer(
            self.model, self.val_loader, self.device, desc="val", precision=self.val_precision
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
    log: Callable[[str], None],
) -> FeaturePass:
    """Compute (or read from the cache) the frozen body's features of train and val."""
    t0 = time.perf_counter()
    precision = resolve_precision(cfg.precision, device)
    cache = FeatureCache(default_cache_root(), body_key(model, spec, pre, precision))
    train_views = augmented_views(pre, _augmentation(cfg), cfg.cache_views, cfg.seed) or [eval_view(pre)]
    train_samples, val_samples = data.splits["train"], data.splits.get("val", [])
    train, val = extract_features(
        model,
        spec,
        pre,
        [(train_samples, train_views), (val_samples, [eval_view(pre)])],
        device,
        cache=cache,
        precision=precision,
        batch_size=inference_batch_size(device, cfg.batch_size),
        workers=cfg.workers,
    )
    computed = train.computed + val.computed
    total = train.vectors.shape[0] * train.vectors.shape[1] + val.vectors.shape[0]
    log(
        f"features of the frozen body: {total - computed} from the cache, {computed} computed "
        f"({time.perf_counter() - t0:.1f} s, {precision})"
    )
    labels = torch.tensor([s.label for s in train_samples], dtype=torch.long)
    val_labels = torch.tensor([s.label for s in val_samples], dtype=torch.long)
    return FeaturePass(
        feature_head(model, spec),
        pre_head_dropout(model, spec),
        train,
        labels,
        val,
        val_labels,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=device,
    )


def _skip_unfreeze(phase: Phase, cfg: TrainConfig, best: dict | None) -> str | None:
    """Why the unfrozen phase is not worth running, or None to run it."""
    if phase.name != "unfrozen" or cfg.unfreeze_below is None or best is None or best["val_acc"] == "":
        return None
    # val_acc is a float32 mean: 38/40 comes out as 0.94999999, which must count as 0.95.
    if best["val_acc"] < cfg.unfreeze_below - 1e-6:
        return None
    return (
        f"skipped the unfrozen epochs: the frozen head reached val accuracy {best['val_acc']:.4f} "
        f">= {cfg.unfreeze_below} (--unfreeze-below); pass --epochs N to fine-tune anyway"
    )


def fit(
    model: nn.Module,
    spec: ModelSpec,
    pre: Preprocessing,
    data: ImageData,
    cfg: TrainConfig,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train ``model`` on ``data`` as ``cfg`` says and leave the best weights in it.

    Frozen phases run on cached body features when ``cfg.cache_features`` is on and the head
    allows it (:func:`~graft.training.features.feature_head`); other phases run on the images.

    Args:
        model: The network (already on ``device``).
        spec: Its :class:`ModelSpec` (tells body from head).
        pre: Its preprocessing.
        data: Train and val splits (val may be empty: then the last epoch is kept).
        cfg: A resolved :class:`TrainConfig`.
        device: Where to train.
        log: Where the per-epoch table goes.

    Returns:
        The history and the epoch kept.
    """
    seed_everything(cfg.seed)
    log = main_only(log)
    train_samples, val_samples = data.splits["train"], data.splits.get("val", [])
    val_labels = torch.tensor([s.label for s in val_samples], dtype=torch.long)
    train_loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()

    phases = plan_phases(cfg, [name for name, _ in body_blocks(model, spec)])
    cached = cfg.cache_features and feature_head(model, spec) is not None
    passes: dict[str, ImagePass | FeaturePass] = {}
    result = FitResult()
    best_row: dict | None = None
    best_state: dict[str, torch.Tensor] | None = None
    warned: set[int] = set()
    epoch = 0
    try:
        for phase in phases:
            skip = _skip_unfreeze(phase, cfg, best_row)
            if skip:
                log(skip)
                result.skipped = skip
                continue
            kind = "features" if phase.name == "frozen" and cached else "images"
            if kind not in passes:
                passes[kind] = (
                    feature_pass(model, spec, pre, data, cfg, device, log)
                    if kind == "features"
                    else ImagePass(model, pre, data, cfg, device)
                )
                if not result.history:
                    log(HEADER)
            runner = passes[kind]
            groups = apply_phase(model, spec, phase)
            optimizer = make_optimizer(groups, cfg)
            scheduler = make_scheduler(optimizer, cfg, phase.epochs, runner.steps_per_epoch)
            stale = 0
            for _ in range(phase.epochs):
                epoch += 1
                t0 = time.perf_counter()
                set_train_mode(model, spec, phase, cfg.freeze_bn)
                stats = runner.train_epoch(
                    optimizer, scheduler, train_loss_fn, f"epoch {epoch} ({phase.name})"
                )
                failed = set(stats.failed)
                row = {
                    "epoch": epoch,
                    "phase": phase.name,
                    "train_loss": stats.loss,
                    "train_acc": stats.acc,
                    "val_loss": "",
                    "val_acc": "",
                    "lr": stats.lr_max,
                    "seconds": 0.0,
                }
                logits, idx, val_failed = runner.validate()
                failed_val = set(val_failed)
                warn_failed(sorted(failed_val - warned), [s.path for s in val_samples])
                warned |= failed_val
                if logits.numel():
                    y = val_labels[idx]
                    row["val_loss"] = val_loss_fn(logits, y).item()
                    row["val_acc"] = (logits.argmax(1) == y).float().mean().item()
                warn_failed(sorted(failed - warned), [s.path for s in train_samples])
                warned |= failed
                row["seconds"] = time.perf_counter() - t0
                # Rank 0's row decides for all (best epoch, early stopping), so ranks never part ways.
                row = broadcast(row)
                result.history.append(row)
                log(_format_row(row))
                if row["val_loss"] == "" or _better(row, best_row, cfg.monitor):
                    best_row, stale = row, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    result.best_epoch = epoch
                else:
                    stale += 1
                    if cfg.patience is not None and stale >= cfg.patience:
                        log(
                            f"early stopping: {stale} epochs without {cfg.monitor} improvement ({phase.name})"
                        )
                        result.stopped = "early stopping"
                        break
    except GraftError as e:
        if best_state is None:
            raise
        log(f"training stopped: {e}")
        result.stopped = str(e)
    if best_state is not None:
        model.load_state_dict(best_state)
        if result.best_epoch != epoch:
            log(f"restored the best weights, from epoch {result.best_epoch} ({cfg.monitor})")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return result
