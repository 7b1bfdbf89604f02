"""``graft train``: a new run, ``--resume`` of a killed one, or ``--overwrite`` of an old one.

A run folder is only ever in one of these states, whenever the process is killed: it holds a
finished run (``graft.json`` vouching for ``model.safetensors``), a resumable one
(``checkpoint.safetensors``, newer than anything beside it), or nothing yet. ``--overwrite``
keeps the old run whole until the new one has its first checkpoint
(:mod:`graft.engine.run_folder`); temporary files of a killed attempt are deleted when a run
starts, and none is left when it finishes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from graft.infrastructure.errors import GraftError

if TYPE_CHECKING:
    from graft.evaluation.interpret import Interpretation
    from graft.infrastructure.config import TrainConfig
    from graft.infrastructure.distributed import World
    from graft.learner.learner import Learner


def cmd_train(args: argparse.Namespace) -> int:
    from graft.engine import run_folder
    from graft.infrastructure import distributed

    out, raw, cfg, ranks = _train_target(args)
    if not ranks.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 prints the one log
    learn, cfg = _train_learner(args, out, raw, cfg)
    if ranks.is_main:
        _prepare_out(out, resumed=raw is None)  # after the data loaded: bad data leaves no folder behind
    _print_setup(learn, cfg, ranks)
    # --overwrite: the old run stays whole until the new one's first checkpoint lands, then goes.
    with run_folder.replacing(out, active=raw is not None and args.overwrite):
        learn.fit(dataclasses.replace(raw or cfg, out=str(out)), checkpoint=out)
        distributed.shutdown()
        if not ranks.is_main:
            return 0  # rank 0 evaluates, saves and reports
        if learn.metrics.get("undecodable_files"):
            print(f"skipped while training: {learn.metrics['undecodable_files']} files could not be decoded")
        interp = _evaluate_trained(learn, cfg.report)
        _save_run(learn, out)
    m = learn.metrics
    if m.get("val_acc") not in (None, ""):
        print(f"val: accuracy {m['val_acc']:.4f}  loss {m['val_loss']:.4f}  (epoch {m['best_epoch']})")
    print(f"saved run to {out}  ({m['train_seconds']:.1f} s training)")
    try:
        _write_report(learn, interp, out, cfg.report)
    finally:
        _finish_run(out)
    return 0


def _train_target(args: argparse.Namespace) -> tuple[Path, TrainConfig | None, TrainConfig | None, World]:
    """The run folder, the options as given and resolved (None on --resume: the checkpoint holds
    them) and the processes; refuses a folder that must not be written."""
    from graft.cli.config_args import config_from_args
    from graft.engine.checkpoint import CHECKPOINT_FILE
    from graft.infrastructure import distributed

    if args.resume:
        _check_resume_args(args)
        out = Path(args.resume)
        # A checkpoint beside a graft.json is a newer run than it (an --overwrite or a final save
        # that was cut short): that is the one to go on with.
        if (out / "graft.json").exists() and not (out / CHECKPOINT_FILE).exists():
            raise GraftError(f"{out} holds a finished run: there is nothing to resume")
        return out, None, None, distributed.init_from_env(args.device)
    if not args.data:
        raise GraftError("the dataset folder is missing: graft train DATA (or graft train --resume RUN)")
    raw = config_from_args(args)
    # Resolving now fails fast on bad options; fit resolves again once it knows whether the
    # model's frozen epochs can run on cached features (which changes the epoch defaults).
    cfg = raw.resolved()
    ranks = distributed.init_from_env(cfg.device)  # a world of one unless torchrun started us
    out = Path(cfg.out or f"runs/{Path(cfg.data).resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(distributed.broadcast(str(out)))  # rank 0's clock names the run
    _check_out_folder(out, Path(cfg.data))
    _check_no_run(out, args.overwrite)
    return out, raw, cfg, ranks


def _train_learner(
    args: argparse.Namespace, out: Path, raw: TrainConfig | None, cfg: TrainConfig | None
) -> tuple[Learner, TrainConfig]:
    """The learner to train (rebuilt from the checkpoint on --resume) and its options."""
    from graft.learner.learner import Learner, resume_learner

    if raw is None:
        learn = resume_learner(out, device=args.device)
        if args.workers is not None:
            learn.config.workers = args.workers
        return learn, learn.config
    cfg.out = str(out)
    return Learner.from_config(cfg), cfg


def _print_setup(learn: Learner, cfg: TrainConfig, ranks: World) -> None:
    """The data and model lines at the top of the training log."""
    from graft.infrastructure import distributed

    data = learn.data
    print(f"data: {data.root} (layout: {data.layout}, {len(data.classes)} classes)")
    print(data.summary())
    for note in data.notes:
        print(f"note: {note}")
    spec = learn.spec
    pre = learn.preprocessing
    print(
        f"model: {spec.source}:{spec.arch} ({'pretrained' if cfg.pretrained else 'random init'}), "
        f"input {pre.input_size}px {pre.interpolation}, mean {_fmt(pre.mean)}, std {_fmt(pre.std)}"
        + (" (of the training images)" if cfg.normalize == "data" else "")
        + f", mode {cfg.mode}, device {learn.device}"
        + (f" × {ranks.size} processes ({distributed.backend()})" if ranks.enabled else "")
    )


def _evaluate_trained(learn: Learner, report: bool) -> Interpretation | None:
    """Score a labeled test split (into ``learn.metrics``); the predictions the report shows."""
    data = learn.data
    labeled_test = bool(data.splits.get("test")) and all(s.label is not None for s in data.splits["test"])
    split = "test" if labeled_test else "val" if data.splits.get("val") else None
    interp = learn.interpret(split=split) if split and (labeled_test or report) else None
    if labeled_test:
        result = interp.result
        learn.metrics.update(test_acc=result.accuracy, test_loss=result.loss, test_n=result.n)
        print(f"test: accuracy {result.accuracy:.4f} ({result.correct}/{result.n})  loss {result.loss:.4f}")
    return interp


def _save_run(learn: Learner, out: Path) -> None:
    """Write the finished run; the checkpoint stays until the report is written too, so a kill
    before then is resumed (from the last epoch: only the evaluation runs again)."""
    from graft.engine import run_folder
    from graft.engine.checkpoint import CHECKPOINT_FILE

    run_folder.settle(out)  # an old run no checkpoint replaced goes now, not beside the new one
    try:
        learn.save(out)
    except GraftError as e:
        if not (out / CHECKPOINT_FILE).exists():
            raise
        raise GraftError(
            f"{e}; the checkpoint of the last epoch is kept: fix that and run graft train --resume {out}"
        ) from None


def _write_report(learn: Learner, interp: Interpretation | None, out: Path, wanted: bool) -> None:
    if not wanted:
        return
    if interp is None:
        print("report: skipped (no val or labeled test split to show)")
        return
    from graft.workflows.report import write_report

    t0 = time.perf_counter()
    path = write_report(learn, interp, out)
    print(f"report: {path}  ({time.perf_counter() - t0:.1f} s)")


def _finish_run(out: Path) -> None:
    """The run is complete: no temporary file stays in it, then the checkpoint goes."""
    from graft.engine import run_folder
    from graft.engine.checkpoint import remove_checkpoint

    run_folder.tidy(out)
    remove_checkpoint(out)  # the finished run replaces it


def _check_resume_args(args: argparse.Namespace) -> None:
    """``--resume RUN`` takes every option from the run; only where it runs may change."""
    from graft.infrastructure.config import TrainConfig

    given = [
        "DATA" if f.name == "data" else "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(TrainConfig)
        if f.name not in ("device", "workers") and getattr(args, f.name) != f.default
    ]
    if args.overwrite:
        given.append("--overwrite")
    if given:
        raise GraftError(
            f"--resume continues a run with its own options; drop {', '.join(given)} "
            "(only --device and --workers may change)"
        )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _check_out_folder(out: Path, data: Path) -> None:
    """Refuse a run folder inside the dataset (the next scan would read it as a class) or a
    folder of the user's own files (a run would overwrite those of the same names)."""
    from graft.engine.checkpoint import CHECKPOINT_FILE
    from graft.infrastructure.fileio import is_temp_file

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
    from graft.engine.checkpoint import CHECKPOINT_FILE

    if overwrite:
        return
    if (out / CHECKPOINT_FILE).exists():  # first: it is newer than any graft.json beside it
        raise GraftError(
            f"{out} holds an interrupted run: continue it with graft train --resume {out}, "
            "or pass --overwrite to start again"
        )
    if (out / "graft.json").exists():
        raise GraftError(f"{out} already holds a run; pass --overwrite or choose another --out")


def _check_writable(out: Path) -> None:
    """Fail before training, not after, when the run folder cannot be written."""
    from graft.infrastructure.fileio import temp_file

    try:
        out.mkdir(parents=True, exist_ok=True)
        temp_file(out / ".graft-write-test").unlink()  # named as a temporary file: a kill here is tidied
    except OSError as e:
        raise GraftError(f"cannot write to {out}: {e.strerror or e}") from None


def _prepare_out(out: Path, resumed: bool) -> None:
    """Rank 0, before training: the run folder can be written, and nothing a killed earlier
    attempt left is in it (its temporary files; on a resume, all but the checkpoint: the old
    run an --overwrite was replacing, or half a final save)."""
    from graft.engine import run_folder
    from graft.engine.checkpoint import CHECKPOINT_FILE

    _check_writable(out)
    if resumed:
        run_folder.clear(out, keep=(CHECKPOINT_FILE,))
    else:
        run_folder.tidy(out)
