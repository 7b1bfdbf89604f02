"""The ``graft`` command: a thin shell over the library.

Every subcommand parses its flags, calls the library, and prints. A :class:`GraftError`
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

from graft.errors import GraftError

EXIT_USAGE = 2


# A folder with thousands of bad files must not bury the log: the summary counts them all.
MAX_SKIP_WARNINGS = 50
_skips_shown = 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    global _skips_shown
    from graft.errors import SkippedFileWarning

    if issubclass(category, SkippedFileWarning):
        _skips_shown += 1
        if _skips_shown > MAX_SKIP_WARNINGS:
            if _skips_shown == MAX_SKIP_WARNINGS + 1:
                more = "more files skipped, not listed (the summary counts them)"
                print(f"graft: warning: {more}", file=sys.stderr)
            return
    print(f"graft: warning: {message}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from graft.cli.config_args import config_from_args
    from graft.training import distributed
    from graft.training.checkpoint import CHECKPOINT_FILE, remove_checkpoint
    from graft.training.learner import Learner, resume_learner

    if args.resume:
        _check_resume_args(args)
        out = Path(args.resume)
        if (out / "graft.json").exists():
            raise GraftError(f"{out} holds a finished run: there is nothing to resume")
        raw = None
        ranks = distributed.init_from_env(args.device)
    else:
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
    if not ranks.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 prints the one log
    if raw is None:
        learn = resume_learner(out, device=args.device)
        if args.workers is not None:
            learn.config.workers = args.workers
        cfg = learn.config
    else:
        cfg.out = str(out)
        learn = Learner.from_config(cfg)
    if ranks.is_main:
        _check_writable(out)  # after the data loaded, so bad data leaves no empty run folder behind
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
    learn.fit(dataclasses.replace(raw or cfg, out=str(out)), checkpoint=out)
    distributed.shutdown()
    if not ranks.is_main:
        return 0  # rank 0 evaluates, saves and reports
    if learn.metrics.get("undecodable_files"):
        print(f"skipped while training: {learn.metrics['undecodable_files']} files could not be decoded")
    labeled_test = bool(data.splits.get("test")) and all(s.label is not None for s in data.splits["test"])
    split = "test" if labeled_test else "val" if data.splits.get("val") else None
    interp = learn.interpret(split=split) if split and (labeled_test or cfg.report) else None
    if labeled_test:
        result = interp.result
        learn.metrics.update(test_acc=result.accuracy, test_loss=result.loss, test_n=result.n)
        print(f"test: accuracy {result.accuracy:.4f} ({result.correct}/{result.n})  loss {result.loss:.4f}")
    try:
        learn.save(out)
    except GraftError as e:
        if not (out / CHECKPOINT_FILE).exists():
            raise
        raise GraftError(
            f"{e}; the checkpoint of the last epoch is kept: fix that and run graft train --resume {out}"
        ) from None
    remove_checkpoint(out)  # the finished run replaces it
    m = learn.metrics
    if m.get("val_acc") not in (None, ""):
        print(f"val: accuracy {m['val_acc']:.4f}  loss {m['val_loss']:.4f}  (epoch {m['best_epoch']})")
    print(f"saved run to {out}  ({m['train_seconds']:.1f} s training)")
    if cfg.report:
        if interp is None:
            print("report: skipped (no val or labeled test split to show)")
        else:
            from graft.evaluation.report import write_report

            t0 = time.perf_counter()
            path = write_report(learn, interp, out)
            print(f"report: {path}  ({time.perf_counter() - t0:.1f} s)")
    return 0


def _check_resume_args(args: argparse.Namespace) -> None:
    """``--resume RUN`` takes every option from the run; only where it runs may change."""
    from graft.config import TrainConfig

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
    from graft.training.checkpoint import CHECKPOINT_FILE

    resolved, root = out.resolve(), data.resolve()
    if resolved == root or root in resolved.parents:
        raise GraftError(f"--out {out} is inside the dataset {data}: choose a folder outside it")
    is_run = (out / "graft.json").exists() or (out / CHECKPOINT_FILE).exists()
    if out.is_dir() and not is_run and any(out.iterdir()):
        raise GraftError(f"--out {out} holds files that are not a graft run: choose an empty or new folder")


def _check_no_run(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished or interrupted run unless asked to."""
    from graft.training.checkpoint import CHECKPOINT_FILE

    if (out / "graft.json").exists() and not overwrite:
        raise GraftError(f"{out} already holds a run; pass --overwrite or choose another --out")
    if (out / CHECKPOINT_FILE).exists():
        if not overwrite:
            raise GraftError(
                f"{out} holds an interrupted run: continue it with graft train --resume {out}, "
                "or pass --overwrite to start again"
            )
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)  # every rank gets here


def _check_writable(out: Path) -> None:
    """Fail before training, not after, when the run folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".graft-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GraftError(f"cannot write to {out}: {e.strerror or e}") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from graft.cli.analysis import tta_from_args
    from graft.training.learner import load_learner

    learn = load_learner(args.run, device=args.device, precision=args.precision)
    if args.batch_size:
        learn.config.batch_size = args.batch_size
    result = learn.evaluate(args.data, split=args.split, tta=tta_from_args(args))
    if result.n == 0:  # every image failed to decode: there is no accuracy to print
        raise GraftError(
            f"none of the {result.skipped:,} images in {args.data} could be decoded: nothing to evaluate"
        )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.format())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from graft.models import list_architectures
    from graft.models.download import human_size

    words = args.words
    if words and words[0] == "fetch":
        return _fetch_models(words[1:])
    if len(words) > 1:
        raise GraftError("graft models takes one PATTERN, e.g. '*resnet*' (or: graft models fetch NAME...)")
    pattern = words[0] if words else None
    rows = list_architectures(pattern, sizes=args.sizes)
    if not rows:
        raise GraftError(f"no architecture matches '{pattern}'")
    width = max(len(r["name"]) for r in rows)
    print(f"{'architecture':<{width}}  {'source':<11}  {'weights':<12}  {'size':>8}  where")
    for r in rows:
        size = human_size(r["size"]) if r["size"] is not None else ""
        print(f"{r['name']:<{width}}  {r['source']:<11}  {r['weights']:<12}  {size:>8}  {r['where']}")
    return 0


def _fetch_models(names: list[str]) -> int:
    """``graft models fetch NAME...``: download (or check the cached copy of) each model's weights."""
    import torch

    from graft.models import fetch_weights
    from graft.models.download import human_size
    from graft.models.registry import hf_cache_dir

    if not names:
        raise GraftError("name the architectures to fetch: graft models fetch NAME...")
    failed = 0
    for name in names:
        try:
            got = fetch_weights(name, verify=True)
        except GraftError as e:
            print(f"graft: error: {e}", file=sys.stderr)
            failed += 1
            continue
        how = "downloaded" if got.downloaded else f"{got.origin}, sha256 checked"
        print(f"{name}: {got.path} ({human_size(got.size)}, {how})")
    if failed < len(names):
        print(
            f"for an offline machine, copy {Path(torch.hub.get_dir()) / 'checkpoints'} and {hf_cache_dir()} "
            "to the same places there (or point TORCH_HOME and HF_HUB_CACHE at the copies)"
        )
    return EXIT_USAGE if failed else 0


def cmd_info(args: argparse.Namespace) -> int:
    from graft.export.bundle import read_meta
    from graft.training.runtime import PrecisionPlan

    meta = read_meta(args.run)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    model, cfg, pre, m = meta["model"], meta.get("config", {}), meta["preprocessing"], meta.get("metrics", {})
    precision = meta.get("precision")
    split = meta.get("split") or {}
    counts = ", ".join(f"{k} {len(v)}" for k, v in split.get("splits", {}).items())
    classes = meta["classes"]
    shown = ", ".join(classes[:10]) + (f", … ({len(classes)} in all)" if len(classes) > 10 else "")
    lines = [
        f"run:          {args.run}",
        f"model:        {model['source']}:{model['arch']}"
        + (f" with MLP head {model['head_hidden']}" if model.get("head_hidden") else ""),
        f"classes:      {shown}",
        f"data:         {cfg.get('data', '?')} (layout {split.get('layout', '?')}; {counts})",
        f"training:     mode {cfg.get('mode')}, {cfg.get('freeze_epochs')}+{cfg.get('epochs')} epochs, "
        f"{cfg.get('optimizer')} lr {cfg.get('lr')}, {cfg.get('schedule')}",
        f"input:        {pre['input_size']}px {pre['interpolation']}, crop {pre['crop_pct']}, "
        f"mean {pre['mean']}, std {pre['std']}",
        "precision:    " + (PrecisionPlan.from_dict(precision).describe() if precision else "not recorded"),
        "metrics:      "
        + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()),
        f"created:      {meta.get('created', '?')} with "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"weights:      sha256 {meta['weights_sha256']}",
    ]
    print("\n".join(lines))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from graft.cli.demo import run_demo

    return run_demo(out=Path(args.out), data=Path(args.data) if args.data else None, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from graft.cli.analysis import add_commands as add_analysis_commands
    from graft.cli.analysis import add_device_arguments, add_tta_argument
    from graft.cli.config_args import add_config_arguments, add_offline_argument
    from graft.cli.deploy import add_commands as add_deploy_commands
    from graft.cli.organize import add_commands as add_organize_commands
    from graft.cli.predict import add_commands as add_predict_commands

    parser = argparse.ArgumentParser(
        prog="graft",
        description="Transfer learning on images: train, evaluate and use image classifiers, "
        "online or offline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a classifier on a folder of labeled images")
    add_config_arguments(p, optional_data=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    add_offline_argument(p)
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted run from its last end-of-epoch checkpoint, with its own options",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, per-class metrics and confusion matrix on labeled images")
    p.add_argument("run", help="run folder written by graft train")
    p.add_argument("data", help="folder of class folders, or a dataset root (with --split)")
    p.add_argument("--split", choices=("test", "val", "train"), help="which split of a dataset root")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_tta_argument(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per batch")
    add_device_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    add_predict_commands(sub)
    add_organize_commands(sub)
    add_analysis_commands(sub)
    add_deploy_commands(sub)

    p = sub.add_parser(
        "models",
        help="list architectures and their weights (bundled, cached, downloadable); fetch weights",
        usage="graft models [PATTERN] [--sizes] [--offline]\n       graft models fetch NAME... [--offline]",
        description="graft models [PATTERN]: list architectures, their pretrained tags and where their "
        "weights are. graft models fetch NAME...: download weights now (to copy to an offline machine).",
    )
    p.add_argument(
        "words",
        nargs="*",
        metavar="PATTERN | fetch NAME...",
        help="fnmatch pattern over graft, timm and torchvision names, e.g. '*resnet*' or 'timm:convnext*'; "
        "or `fetch` and architecture names",
    )
    p.add_argument("--sizes", action="store_true", help="ask the Hugging Face hub for the download sizes")
    add_offline_argument(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="summarise a run folder")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="print graft.json")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="train and evaluate on handwritten digits (no data or network needed)")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo, replaced if present)")
    p.add_argument("--data", help="where to write the digits dataset (default: a folder in the user cache)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``graft`` command; returns the exit code."""
    global _skips_shown
    warnings.showwarning = _show_warning
    _skips_shown = 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "offline", False):
        os.environ["GRAFT_OFFLINE"] = "1"  # for this process and any it starts (data workers, torchrun)
    try:
        if args.command != "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # N copies of another command would each do the whole job and write the same files.
            raise GraftError(
                f"only 'graft train' runs under torchrun; run 'graft {args.command}' as one process "
                "(to split a large prediction over processes, use graft predict --shard i/n)"
            )
        return args.func(args)
    except GraftError as e:
        print(f"graft: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`graft evaluate … | head`): not an error. Point stdout at devnull
        # so the interpreter's final flush does not raise again (Python docs, "SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # what the commands did not word themselves: still one line, exit 2
        print(f"graft: error: {_os_error_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as e:
        print(f"graft: error: out of memory{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return EXIT_USAGE


def _os_error_line(e: OSError) -> str:
    """``strerror: filename`` (``-> filename2`` for a rename), or the message of an OSError that
    has no errno."""
    if not e.strerror:
        return str(e) or type(e).__name__
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    return e.strerror + (f": {' -> '.join(names)}" if names else "")


def run() -> None:
    """The console entry point: :func:`main`, then exit without the interpreter's teardown.

    Unloading torch, torchvision and timm takes about a second (measured 1.0-1.5 s here), longer
    than the work of many commands. Every file graft writes is complete (closed, fsync'ed and
    renamed into place) before ``main`` returns, so skipping the teardown loses nothing.
    """
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
