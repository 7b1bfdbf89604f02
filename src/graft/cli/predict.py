"""``graft predict`` (streamed to a CSV, resumable, shardable) and ``graft merge-predictions``."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from graft.errors import GraftError

if TYPE_CHECKING:
    import numpy as np

    from graft.evaluation.predictions import Prediction


def cmd_predict(args: argparse.Namespace) -> int:
    from graft.cli.analysis import tta_from_args
    from graft.evaluation.stream import parse_shard, predict_to_csv
    from graft.fileio import atomic_write_text

    shard = parse_shard(args.shard) if args.shard is not None else None
    if args.submission and (args.resume or shard):
        raise GraftError(
            "--submission needs every image's probabilities from one run: not with --resume or --shard"
        )
    tta = tta_from_args(args)
    if args.onnx or (args.run.endswith(".onnx") and Path(args.run).is_file()):
        # onnxruntime with NumPy preprocessing: torch is never imported on this path.
        from graft.export.onnx_runtime import OnnxClassifier

        if tta:
            raise GraftError("--tta is not available with --onnx")
        model = OnnxClassifier(args.run)
    else:
        from graft.training.learner import load_learner

        model = load_learner(args.run, device=args.device)
    show = (not args.csv and not args.submission) or args.print
    submission: list[list[str]] = []

    def on_chunk(preds: list[Prediction], probs: np.ndarray) -> None:
        if args.submission and args.submission_format == "probs":
            submission.extend(
                [Path(p.path).stem, *(f"{v:.6g}" for v in row)]
                for p, row in zip(preds, probs.tolist(), strict=True)
            )
        elif args.submission:
            submission.extend([Path(p.path).stem, p.label] for p in preds)
        if show and preds:
            lines = (
                f"{pred.path}\t"
                + "  ".join(f"{c} {p:.3f}" for c, p in zip(pred.labels, pred.probs, strict=True))
                for pred in preds
            )
            print("\n".join(lines), flush=True)  # one chunk at a time, as it is predicted

    result = predict_to_csv(
        model,
        args.paths,
        args.csv,
        top_k=args.top_k,
        resume=args.resume,
        shard=shard,
        chunk_size=args.chunk_size,
        tta=tta,
        on_chunk=on_chunk if args.submission or show else None,
    )
    if args.csv:
        notes = [f"{result.resumed} already there"] if args.resume else []
        if shard:
            notes.append(f"shard {args.shard.strip()}: {result.other_shards} files left to other shards")
        if result.undecodable:
            notes.append(f"{result.undecodable} undecodable")
        extra = f" ({'; '.join(notes)})" if notes else ""
        print(f"wrote {result.written} predictions to {args.csv}{extra}  ({result.seconds:.1f} s)")
    if args.submission:
        header = ["id", *model.classes] if args.submission_format == "probs" else ["id", "label"]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(submission)
        atomic_write_text(args.submission, buf.getvalue())
        print(f"wrote a {args.submission_format} submission of {len(submission)} rows to {args.submission}")
    return 0


def cmd_merge_predictions(args: argparse.Namespace) -> int:
    from graft.evaluation.stream import merge_prediction_csvs

    n = merge_prediction_csvs(args.parts, args.out)
    print(f"wrote {n} predictions from {len(args.parts)} files to {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register predict and merge-predictions on the ``graft`` parser."""
    from graft.cli.analysis import add_tta_argument
    from graft.evaluation.stream import DEFAULT_CHUNK_SIZE

    p = sub.add_parser("predict", help="predict classes of image files or folders")
    p.add_argument("run", help="run folder written by graft train, or (with --onnx) an exported .onnx file")
    p.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="RUN is a .onnx file from graft export: predict on onnxruntime, without torch "
        "(implied by a RUN ending in .onnx)",
    )
    p.add_argument("--top-k", type=int, default=1, help="classes to report per image (default: 1)")
    p.add_argument(
        "--csv",
        help="write path,label,prob (+ label_N,prob_N for top-k) to this CSV, appended chunk by chunk "
        "(an existing file is replaced unless --resume)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the --csv of an interrupted run: skip the files already in it",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="predict only shard I of N (0-based; by a hash of each path), e.g. 0/2 and 1/2 in two "
        "processes; join their CSVs with graft merge-predictions",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"images predicted and written per step (default: {DEFAULT_CHUNK_SIZE})",
    )
    p.add_argument("--submission", help="write a Kaggle-style submission CSV (id = file stem)")
    p.add_argument(
        "--submission-format",
        choices=("probs", "label"),
        default="probs",
        help="probs: one probability column per class; label: id,label (default: probs)",
    )
    p.add_argument("--print", action="store_true", help="also print predictions when writing files")
    add_tta_argument(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "merge-predictions", help="join the CSVs of graft predict --shard runs into one, in path order"
    )
    p.add_argument("parts", nargs="+", metavar="CSV", help="CSVs written by graft predict --csv")
    p.add_argument("--out", required=True, help="the merged CSV (written atomically)")
    p.set_defaults(func=cmd_merge_predictions)
