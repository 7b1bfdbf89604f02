"""One training run, start to finish: what ``graft train``, ``graft.train`` and ``graft compare``
all run, so each leaves the same run folder.

train → evaluate on the labeled test split (or val) → save → report → clear the checkpoint.

A run folder is only ever in one of these states, whenever the process is killed: it holds a
finished run (``graft.json`` vouching for ``model.safetensors``), a resumable one
(``checkpoint.safetensors``, newer than anything beside it), or nothing yet. ``overwrite`` keeps
the old run whole until the new one has its first checkpoint (:mod:`graft.engine.run_folder`);
temporary files of a killed attempt are deleted when a run starts, and none is left when it
finishes. Under torch.distributed every rank trains; rank 0 alone evaluates, saves and reports.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.data.dataset import ImageData
from graft.engine import run_folder
from graft.engine.checkpoint import CHECKPOINT_FILE, remove_checkpoint
from graft.evaluation.bootstrap import interval_text
from graft.evaluation.interpret import Interpretation
from graft.infrastructure import distributed
from graft.infrastructure.config import BALANCE_RATIO, ResolvedConfig, TrainConfig
from graft.infrastructure.distributed import World, main_only
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import is_temp_file, temp_file
from graft.learner.learner import Learner, resume_learner
from graft.workflows.report import write_report


@dataclass
class TrainedRun:
    """What :func:`train` left.

    Attributes:
        learner: The trained learner (its ``metrics`` hold the test accuracy when there was a
            labeled test split).
        run_dir: The run folder.
        interpretation: The predictions on the test (or val) split that were scored and shown
            (None when there was neither, or on ranks other than 0).
        report: ``report.html``, if one was written.
    """

    learner: Learner
    run_dir: Path
    interpretation: Interpretation | None = None
    report: Path | None = None


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    workers: int | None = None,
    data: ImageData | None = None,
    log: Callable[[str], None] = print,
    **fit_options: Any,
) -> TrainedRun:
    """Train a run and write its folder, as ``graft train`` does.

    Args:
        config: The options of a new run; its ``out`` is the run folder (default
            ``runs/<data folder>-<time>``).
        resume: Instead of ``config``: the folder of an interrupted run, to go on with its own
            options from its last checkpoint.
        overwrite: Replace a run already in the folder (it stays whole until the new run's
            first checkpoint is written).
        device: Where to run (default: the config's ``device``; ``auto`` on a resume).
        workers: Data-loading worker processes (default: the config's, or the resumed run's).
        data: The dataset ``config`` names, if it is already loaded (it is loaded otherwise).
        log: Receives the log lines (the setup, the per-epoch table, the results).
        **fit_options: ``callbacks``, ``loss`` and ``metrics``, for :meth:`Learner.fit`.

    Raises:
        GraftError: For invalid options or data, a folder that must not be written, or a
            resume without a checkpoint.
    """
    if (config is None) == (resume is None):
        raise GraftError("train needs either a config or a run folder to resume")
    if config is not None:
        changed = {"device": device, "workers": workers}
        config = dataclasses.replace(config, **{k: v for k, v in changed.items() if v is not None})
    out, ranks = _target(config, resume, overwrite, device or "auto")
    log = main_only(log)
    if resume is not None:
        learn = resume_learner(out, device=device or "auto", workers=workers)
    else:
        learn = Learner.from_config(dataclasses.replace(config, out=str(out)), data=data)
    if ranks.is_main:
        _prepare_out(out, resumed=resume is not None)  # after the data loaded: bad data leaves no folder
    _log_setup(learn, ranks, log)
    # overwrite: the old run stays whole until the new one's first checkpoint lands, then goes.
    with run_folder.replacing(out, active=resume is None and overwrite):
        learn.fit(checkpoint=out, log=log, **fit_options)
        distributed.shutdown()
        if not ranks.is_main:
            return TrainedRun(learn, out)  # rank 0 evaluates, saves and reports
        if learn.metrics.get("undecodable_files"):
            log(f"skipped while training: {learn.metrics['undecodable_files']} files could not be decoded")
        interp = _evaluate_trained(learn, learn.config.report, log)
        _save_run(learn, out)
    m = learn.metrics
    if m.get("val_acc") not in (None, ""):
        log(f"val: {_val_scores(m, learn.multi_label)}  (epoch {m['best_epoch']})")
    if learn.decision.thresholds is not None:
        log(f"decision: {_thresholds(learn)}")
    log(f"saved run to {out}  ({m['train_seconds']:.1f} s training)")
    try:
        report = _write_report(learn, interp, out, learn.config.report, log)
    finally:
        _finish_run(out)
    return TrainedRun(learn, out, interp, report)


def _target(
    config: TrainConfig | None, resume: str | Path | None, overwrite: bool, device: str
) -> tuple[Path, World]:
    """The run folder and the processes; refuses options or a folder that must not be used."""
    if resume is not None:
        out = Path(resume)
        # A checkpoint beside a graft.json is a newer run than it (an overwrite or a final save
        # that was cut short): that is the one to go on with.
        if (out / "graft.json").exists() and not (out / CHECKPOINT_FILE).exists():
            raise GraftError(f"{out} holds a finished run: there is nothing to resume")
        return out, distributed.init_from_env(device)
    # Resolving now fails fast on bad options; fit resolves again once it knows whether the
    # model's frozen epochs can run on cached features (which changes the epoch defaults).
    config.resolved()
    ranks = distributed.init_from_env(config.device)  # a world of one unless torchrun started us
    out = Path(config.out or f"runs/{Path(config.data).resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(distributed.broadcast(str(out)))  # rank 0's clock names the run
    _check_out_folder(out, Path(config.data))
    _check_no_run(out, overwrite)
    return out, ranks


def _log_setup(learn: Learner, ranks: World, log: Callable[[str], None]) -> None:
    """The data and model lines at the top of the training log."""
    data, spec, pre = learn.data, learn.spec, learn.preprocessing
    cfg = learn.resolve_config(learn.config)
    log(f"data: {data.root} (layout: {data.layout}, {len(data.classes)} classes)")
    log(data.summary())
    for note in data.notes:
        log(f"note: {note}")
    labels = _labels_line(cfg, data)
    if labels:
        log(labels)
    log(
        f"model: {spec.source}:{spec.arch} ({'pretrained' if cfg.pretrained else 'random init'}), "
        f"input {pre.input_size}px {pre.interpolation}, mean {_fmt(pre.mean)}, std {_fmt(pre.std)}"
        + (" (of the training images)" if cfg.normalize == "data" else "")
        + f", mode {cfg.mode}, device {learn.device}"
        + (f" × {ranks.size} processes ({distributed.backend()})" if ranks.enabled else "")
    )


def _labels_line(cfg: ResolvedConfig, data: ImageData) -> str | None:
    """What graft does about multi-label or imbalanced data (None when there is nothing to say)."""
    if data.multi_label:
        how = (
            f"one threshold {cfg.threshold:g}"
            if cfg.threshold is not None
            else "per-class thresholds of best val F1"
        )
        return f"labels: multi-label: a sigmoid per class, binary cross-entropy, {how}; kept by {cfg.monitor}"
    ratio = data.imbalance()
    if ratio < BALANCE_RATIO and cfg.balance == "none":
        return None
    action = {
        "weights": "inverse-frequency class weights in the loss",
        "sampler": "class-balanced sampling of the training images",
        "none": "nothing (--balance none)",
    }[cfg.balance]
    return (
        f"imbalance: largest/smallest training class {ratio:.1f}:1; balance: {action}; "
        f"kept epoch by {cfg.monitor}"
    )


def _val_scores(m: dict, multi_label: bool) -> str:
    """The val line: the scores of the epoch kept."""
    names = (
        [
            ("val_map", "mAP"),
            ("val_macro_f1", "macro F1"),
            ("val_micro_f1", "micro F1"),
            ("val_acc", "exact match"),
        ]
        if multi_label
        else [("val_acc", "accuracy"), ("val_bal_acc", "balanced accuracy"), ("val_macro_f1", "macro F1")]
    )
    ranges = m.get("val_intervals") or {}
    parts = [
        f"{label} {m[key]:.4f}{_interval(ranges.get(INTERVAL_KEYS[key]), first=not i)}"
        for i, (key, label) in enumerate((k, n) for k, n in names if isinstance(m.get(k), float))
    ]
    if multi_label:
        parts = [p.replace("F1", "F1 at 0.5").replace("exact match", "exact match at 0.5") for p in parts]
        tuned = [
            f"{label} {m[key]:.4f}"
            for key, label in (
                ("val_macro_f1_at_thresholds", "macro F1"),
                ("val_micro_f1_at_thresholds", "micro F1"),
            )
            if isinstance(m.get(key), float)
        ]
        parts += [f"at the chosen thresholds: {', '.join(tuned)};"] if tuned else []
    loss = f"loss {m['val_loss']:.4f}"
    if isinstance(m.get("val_loss_calibrated"), float):
        loss += f" (calibrated {m['val_loss_calibrated']:.4f})"
    return "  ".join([*parts, loss])


# The val metrics' names in graft.json's metrics and in their bootstrap intervals.
INTERVAL_KEYS = {
    "val_acc": "accuracy",
    "val_bal_acc": "balanced_accuracy",
    "val_macro_f1": "macro_f1",
    "val_micro_f1": "micro_f1",
    "val_map": "map",
}


def _interval(pair: list | None, first: bool) -> str:
    """`` [95% CI 0.93-0.99]`` after the first metric, `` [0.93-0.99]`` after the others."""
    if not pair or None in pair:
        return ""
    return interval_text((float(pair[0]), float(pair[1])), first=first)


def _thresholds(learn: Learner) -> str:
    d = learn.decision
    if d.multi_label:
        shown = ", ".join(f"{c} {t:.3f}" for c, t in zip(learn.classes, d.thresholds, strict=True))
        return f"thresholds ({d.chosen_by}): {shown}"
    return f"{learn.classes[d.positive]!r} from probability {d.thresholds[0]:.4f} ({d.chosen_by})"


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _evaluate_trained(learn: Learner, report: bool, log: Callable[[str], None]) -> Interpretation | None:
    """Score a labeled test split (into ``learn.metrics``); the predictions the report shows."""
    data = learn.data
    labeled_test = bool(data.splits.get("test")) and all(s.label is not None for s in data.splits["test"])
    split = "test" if labeled_test else "val" if data.splits.get("val") else None
    interp = learn.interpret(split=split) if split and (labeled_test or report) else None
    if labeled_test:
        result = interp.result
        learn.metrics.update(test_acc=result.accuracy, test_loss=result.loss, test_n=result.n)
        log(f"test: {result.format().splitlines()[0]}")
    return interp


def _save_run(learn: Learner, out: Path) -> None:
    """Write the finished run; the checkpoint stays until the report is written too, so a kill
    before then is resumed (from the last epoch: only the evaluation runs again)."""
    run_folder.settle(out)  # an old run no checkpoint replaced goes now, not beside the new one
    try:
        learn.save(out)
    except GraftError as e:
        if not (out / CHECKPOINT_FILE).exists():
            raise
        raise GraftError(
            f"{e}; the checkpoint of the last epoch is kept: fix that and run graft train --resume {out}"
        ) from None


def _write_report(
    learn: Learner, interp: Interpretation | None, out: Path, wanted: bool, log: Callable[[str], None]
) -> Path | None:
    if not wanted:
        return None
    if interp is None:
        log("report: skipped (no val or labeled test split to show)")
        return None
    t0 = time.perf_counter()
    path = write_report(learn, interp, out)
    log(f"report: {path}  ({time.perf_counter() - t0:.1f} s)")
    return path


def _finish_run(out: Path) -> None:
    """The run is complete: no temporary file stays in it, then the checkpoint goes."""
    run_folder.tidy(out)
    remove_checkpoint(out)  # the finished run replaces it


def _check_out_folder(out: Path, data: Path) -> None:
    """Refuse a run folder inside the dataset (the next scan would read it as a class) or a
    folder of the user's own files (a run would overwrite those of the same names)."""
    resolved, root = out.resolve(), data.resolve()
    if resolved == root or root in resolved.parents:
        raise GraftError(f"--out {out} is inside the dataset {data}: choose a folder outside it")
    is_run = (out / "graft.json").exists() or (out / CHECKPOINT_FILE).exists()
    # A run killed while writing its first file leaves only a temporary one: still an empty folder.
    if out.is_dir() and not is_run and any(not is_temp_file(p.name) for p in out.iterdir()):
        raise GraftError(f"--out {out} holds files that are not a graft run: choose an empty or new folder")


def _check_no_run(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished or interrupted run unless asked to. Nothing is deleted here:
    with ``overwrite`` the old run goes once the new one is resumable (:mod:`graft.engine.run_folder`)."""
    if overwrite:
        return
    if (out / CHECKPOINT_FILE).exists():  # first: it is newer than any graft.json beside it
        raise GraftError(
            f"{out} holds an interrupted run: continue it with graft train --resume {out}, "
            "or pass --overwrite to start again"
        )
    if (out / "graft.json").exists():
        raise GraftError(f"{out} already holds a run; pass --overwrite or choose another --out")


def _prepare_out(out: Path, resumed: bool) -> None:
    """Rank 0, before training: the run folder can be written, and nothing a killed earlier
    attempt left is in it (its temporary files; on a resume, all but the checkpoint: the old
    run an overwrite was replacing, or half a final save)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        temp_file(out / ".graft-write-test").unlink()  # named as a temporary file: a kill here is tidied
    except OSError as e:
        raise GraftError(f"cannot write to {out}: {e.strerror or e}") from None
    if resumed:
        run_folder.clear(out, keep=(CHECKPOINT_FILE,))
    else:
        run_folder.tidy(out)
