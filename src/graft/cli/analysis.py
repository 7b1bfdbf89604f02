"""``graft report``, ``graft lr-find`` and ``graft compare``: looking at what a model learned."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from graft.infrastructure.errors import GraftError
from graft.infrastructure.text import plural


def cmd_report(args: argparse.Namespace) -> int:
    from graft.learner.learner import load_learner
    from graft.workflows.report import write_report

    learn = load_learner(args.run, device=args.device, precision=args.precision)
    data = args.data or learn.config.data
    if not data:
        raise GraftError(f"{args.run} does not record its data folder; pass DATA")
    t0 = time.perf_counter()
    interp = learn.interpret(data, args.split, tta=tta_from_args(args))
    if not len(interp.paths):  # every image failed to decode: a report of nothing says nothing
        raise GraftError(
            f"none of the {interp.undecodable:,} images of {interp.source} could be decoded: no report"
        )
    path = write_report(learn, interp, args.out or args.run, top_losses=args.top_losses, samples=args.samples)
    result = interp.result
    # the headline of graft evaluate: accuracy and balanced accuracy, or exact match and mAP (multi-label)
    print(f"evaluated {interp.source}: {result.format().splitlines()[0]}  ({plural(result.n, 'image')})")
    print(f"wrote {path} and its PNGs ({time.perf_counter() - t0:.1f} s)")
    return 0


def _default_out(data: str, what: str) -> str:
    return f"runs/{Path(data).resolve().name}-{what}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_lr_find(args: argparse.Namespace) -> int:
    from graft.cli.config_args import config_from_args
    from graft.evaluation.plots import save_png
    from graft.infrastructure.fileio import atomic_write_text
    from graft.learner.learner import Learner

    cfg = config_from_args(args)
    out = Path(cfg.out or _default_out(cfg.data, "lr-find"))
    learn = Learner.from_config(cfg)
    found = learn.lr_find(cfg, start_lr=args.start_lr, end_lr=args.end_lr, num_it=args.num_it)
    save_png(found.plot(), out / "lr_find.png")
    atomic_write_text(out / "lr_find.csv", found.to_csv())
    print(
        f"lr-find: {len(found.lrs)} steps over the {found.phase} phase "
        f"({'stopped: loss diverged' if found.stopped == 'diverged' else 'full range'}), "
        f"{found.seconds:.1f} s"
    )
    if found.suggestion is None:
        raise GraftError("too few steps to suggest a rate: raise --num-it or use more training images")
    print(f"suggested lr: {found.suggestion:.2e}  (graft train {cfg.data} --lr {found.suggestion:.2g})")
    print(f"wrote {out / 'lr_find.png'} and {out / 'lr_find.csv'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from graft.cli.config_args import config_from_args
    from graft.workflows.compare import compare

    cfg = config_from_args(args)
    out = Path(cfg.out or _default_out(cfg.data, "compare"))
    held = [p for p in (out / "compare.json", out / "pretrained", out / "scratch") if p.exists()]
    if held and not args.overwrite:
        raise GraftError(f"{out} already holds a comparison; pass --overwrite or choose another --out")
    result = compare(cfg, pretrained_mode=args.pretrained_mode, out=out, overwrite=args.overwrite)
    print()
    print("validation accuracy per epoch")
    print(result.table())
    (pre, _), (scratch, _) = result.best("pretrained"), result.best("scratch")
    print(f"best val accuracy: pretrained {pre:.4f}, scratch {scratch:.4f} (difference {pre - scratch:+.4f})")
    print(f"wrote {out / 'compare.png'}, compare.csv, compare.json and the runs pretrained/ and scratch/")
    return 0


def add_tta_argument(parser: argparse.ArgumentParser) -> None:
    """``--tta`` (2 views) and ``--tta-views N``; read them back with :func:`tta_from_args`."""
    parser.add_argument(
        "--tta",
        action="store_true",
        help="average test-time augmentation views: the centre crop and its mirror",
    )
    parser.add_argument(
        "--tta-views",
        type=int,
        choices=(2, 4),
        help="views for --tta: 2 (default), or 4 to add the top-left and bottom-right crops (implies --tta)",
    )


def add_reject_argument(parser: argparse.ArgumentParser) -> None:
    """``--reject`` of the commands that answer images."""
    parser.add_argument(
        "--reject",
        default="auto",
        metavar="off|auto|VALUE",
        help="answer 'unknown' for images far from every training image: auto: past the threshold "
        "the run chose on val; off: never; VALUE: past this unknown score instead (default: auto)",
    )


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` of the commands that run a trained model."""
    from graft.infrastructure.config import INFERENCE_PRECISIONS

    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default="fp32",
        help="arithmetic of the forward pass: fp32 (default; agrees with the val metrics of training, "
        "the other commands and the export to 1e-4, on any machine), or bf16/fp16: faster on GPUs and "
        "CPUs with native bf16, probabilities differ by about 1e-2",
    )


def tta_from_args(args: argparse.Namespace) -> int:
    """The number of test-time augmentation views asked for (0: none)."""
    return args.tta_views or (2 if args.tta else 0)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register report, lr-find and compare on the ``graft`` parser."""
    from graft.cli.config_args import add_config_arguments, add_offline_argument

    p = sub.add_parser("report", help="write report.html: curves, confusion matrix, top losses, predictions")
    p.add_argument("run", help="run folder written by graft train")
    p.add_argument("data", nargs="?", help="labeled data to evaluate (default: the run's own data)")
    p.add_argument(
        "--split",
        choices=("test", "val", "train"),
        help="which split (default: a labeled test split if any, else val)",
    )
    add_tta_argument(p)
    p.add_argument("--out", help="folder for report.html and the PNGs (default: the run folder)")
    p.add_argument("--top-losses", type=int, default=9, help="images in the top-losses grid (default: 9)")
    p.add_argument(
        "--samples", type=int, default=12, help="images in the sample-predictions grid (default: 12)"
    )
    add_device_arguments(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("lr-find", help="learning-rate range test: plot and suggested --lr")
    add_config_arguments(p, exclude={"epochs", "patience", "monitor", "report", "unfreeze_below", "compile"})
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default: 10)")
    p.add_argument("--num-it", type=int, default=100, help="steps at most (default: 100)")
    add_offline_argument(p)
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("compare", help="train pretrained and from scratch with the same budget; plot both")
    add_config_arguments(
        p, exclude={"mode", "pretrained", "freeze_epochs", "unfreeze_below"}, defaults={"epochs": 5}
    )
    p.add_argument(
        "--pretrained-mode",
        choices=("finetune", "full", "features"),
        default="finetune",
        help="finetune: every weight trains, the body at lower (discriminative) rates; full: every "
        "weight at --lr, exactly as from scratch; features: only the head trains (default: finetune)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing comparison in --out")
    add_offline_argument(p)
    p.set_defaults(func=cmd_compare)
