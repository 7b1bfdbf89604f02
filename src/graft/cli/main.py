"""The ``graft`` command: a thin shell over the library.

Every subcommand parses its flags, calls the library, and prints. A :class:`GraftError`
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from graft.infrastructure.errors import GraftError

EXIT_USAGE = 2


# A folder with thousands of bad files must not bury the log: the summary counts them all.
MAX_SKIP_WARNINGS = 50
_skips_shown = 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    global _skips_shown
    from graft.infrastructure.errors import SkippedFileWarning

    if issubclass(category, SkippedFileWarning):
        _skips_shown += 1
        if _skips_shown > MAX_SKIP_WARNINGS:
            if _skips_shown == MAX_SKIP_WARNINGS + 1:
                more = "more files skipped, not listed (the summary counts them)"
                print(f"graft: warning: {more}", file=sys.stderr)
            return
    print(f"graft: warning: {message}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from graft.cli.analysis import tta_from_args
    from graft.learner.learner import load_learner

    learn = load_learner(args.run, device=args.device, precision=args.precision)
    rule = learn.rejection(args.reject) if args.ood else None
    interp = learn.interpret(args.data, split=args.split, tta=tta_from_args(args), batch_size=args.batch_size)
    result = interp.result
    if result.n == 0:  # every image failed to decode: there is no accuracy to print
        raise GraftError(
            f"none of the {result.undecodable:,} images in {args.data} could be decoded: nothing to evaluate"
        )
    ood = _ood(learn, interp, args, rule) if args.ood else None
    if args.json:
        print(json.dumps(result.to_dict() | ({"ood": ood.to_dict()} if ood else {})))
    else:
        print(result.format())
        if ood is not None:
            print("\n" + ood.format())
    return 0


def _ood(learn, interp, args: argparse.Namespace, rule):
    """``graft evaluate --ood``: the unknown score on the evaluated images and the outside ones."""
    from graft.cli.analysis import tta_from_args
    from graft.evaluation.ood import OodResult

    if not learn.scored:
        raise GraftError(f"{args.run} stores no reference features: it has no unknown score to measure")
    if learn.multi_label:
        raise GraftError("--ood measures single-label models (a multi-label one may answer no class)")
    _, _, outside = learn.predict_outputs(args.ood, tta=tta_from_args(args), batch_size=args.batch_size)
    if not len(outside):
        raise GraftError(f"no image of {args.ood} could be decoded: nothing to measure --ood on")
    result = OodResult.from_scores(interp.scores, outside, interp.preds == interp.labels, rule)
    if args.plot:
        from graft.evaluation.plots import plot_coverage, save_png

        both = [*interp.scores, *outside]
        marks = {"threshold": float((~rule.rejected(both)).mean())} if rule else None
        save_png(plot_coverage({"unknown score": result.coverage()}, marks), args.plot)
    return result


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
    from graft.infrastructure.runtime import PrecisionPlan
    from graft.learner.bundle import read_meta

    meta = read_meta(args.run)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    model, pre, m = meta["model"], meta["preprocessing"], meta.get("metrics", {})
    cfg = meta.get("resolved") or meta.get("config", {})  # what ran (older runs store only "config")
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
        "metrics:      " + _metrics_line(m),
        *_decision_lines(meta.get("decision")),
        *_trust_lines(meta.get("decision")),
        f"created:      {meta.get('created', '?')} with "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"weights:      sha256 {meta['weights_sha256']}",
    ]
    print("\n".join(lines))
    return 0


def _metrics_line(m: dict) -> str:
    """graft info's metrics, each val score with its 95% bootstrap interval where recorded."""
    from graft.workflows.train import INTERVAL_KEYS

    ranges = m.get("val_intervals") if isinstance(m.get("val_intervals"), dict) else {}
    parts = []
    for k, v in m.items():
        if k == "val_intervals":
            continue
        pair = ranges.get(INTERVAL_KEYS.get(k, ""))
        ci = (
            f" [{pair[0]:.3f}-{pair[1]:.3f}]"
            if isinstance(pair, list) and len(pair) == 2 and None not in pair
            else ""
        )
        parts.append(f"{k} {v:.4f}{ci}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


def _trust_lines(decision: dict | None) -> list[str]:
    """graft info's lines on the calibration temperature and the unknown rule (shown as stored)."""
    d = decision if isinstance(decision, dict) else {}
    lines = [f"calibration:  temperature {d['temperature']}"] if "temperature" in d else []
    r = d.get("reject")
    if isinstance(r, dict):
        lines.append(
            f"unknown:      {r.get('label')!r} past score {r.get('threshold')} ({r.get('chosen_by', '')})"
        )
    return lines


def _decision_lines(decision: dict | None) -> list[str]:
    """graft info's line on how outputs become labels (none for a plain softmax run)."""
    if not decision or (not decision.get("multi_label") and "threshold" not in decision):
        return []

    def num(t: object) -> str:  # graft info shows a damaged file as it is (loading it refuses it)
        return f"{t:.4f}" if isinstance(t, int | float) else repr(t)

    if decision.get("multi_label"):
        thresholds = decision.get("thresholds") or {}
        shown = ", ".join(f"{c} {num(t)}" for c, t in dict(thresholds).items()) or "0.5 each"
        return [f"decision:     multi-label, sigmoid per class, thresholds {shown}"]
    return [f"decision:     {decision.get('positive')!r} from probability {num(decision['threshold'])}"]


def cmd_demo(args: argparse.Namespace) -> int:
    from graft.cli.demo import run_demo

    return run_demo(out=Path(args.out), data=Path(args.data) if args.data else None, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    # Long only in declarations: one add_argument per flag, nothing to split out.
    from graft.cli.analysis import add_commands as add_analysis_commands
    from graft.cli.analysis import add_device_arguments, add_reject_argument, add_tta_argument
    from graft.cli.config_args import add_config_arguments, add_offline_argument
    from graft.cli.deploy import add_commands as add_deploy_commands
    from graft.cli.doctor import add_commands as add_doctor_commands
    from graft.cli.organize import add_commands as add_organize_commands
    from graft.cli.predict import add_commands as add_predict_commands
    from graft.cli.train import cmd_train

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
    p.add_argument(
        "--ood",
        metavar="OTHER",
        help="a folder of images of none of the classes: measure the unknown score (AUROC, how many "
        "of them and of DATA's images are answered unknown, accuracy vs coverage)",
    )
    p.add_argument("--plot", metavar="PNG", help="with --ood: write the accuracy vs coverage curve")
    add_reject_argument(p)
    add_tta_argument(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per batch")
    add_device_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    add_predict_commands(sub)
    add_organize_commands(sub)
    add_doctor_commands(sub)
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
