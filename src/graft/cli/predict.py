"""``graft predict`` (streamed to a CSV, resumable, shardable) and ``graft merge-predictions``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from graft.infrastructure.errors import GraftError
from graft.infrastructure.text import plural

if TYPE_CHECKING:
    import numpy as np

    from graft.evaluation.stream import Predictor, StreamResult
    from graft.evaluation.submission import SampleSubmission
    from graft.inference.predictions import Prediction


def cmd_predict(args: argparse.Namespace) -> int:
    from graft.cli.analysis import tta_from_args
    from graft.evaluation.stream import model_decision, parse_shard, predict_to_csv

    shard = parse_shard(args.shard) if args.shard is not None else None
    sample = _checked_submission_args(args, shard)
    tta = tta_from_args(args)
    model = _load_model(args, tta)
    reject = model.rejection(args.reject)
    decision = model_decision(model)
    if decision.multi_label and args.top_k is not None:
        raise GraftError(
            "--top-k is for single-label models: this one answers every class at or above its "
            "threshold (a --csv holds every class's probability)"
        )
    if args.submission:  # a sample that does not fit the model fails now, not after predicting
        from graft.evaluation.submission import submission_columns

        submission_columns(model.classes, args.submission_format, sample, multi_label=decision.multi_label)
    show = (not args.csv and not args.submission) or args.print
    predicted: list[Path] = []
    chunks: list[np.ndarray] = []

    def on_chunk(preds: list[Prediction], probs: np.ndarray) -> None:
        if args.submission:
            predicted.extend(p.path for p in preds)
            chunks.append(probs)
        if show and preds:
            print("\n".join(map(_line, preds)), flush=True)  # one chunk at a time, as it is predicted

    result = predict_to_csv(
        model,
        args.paths,
        args.csv,
        top_k=args.top_k or 1,
        resume=args.resume,
        shard=shard,
        chunk_size=args.chunk_size,
        tta=tta,
        on_chunk=on_chunk if args.submission or show else None,
        reject=reject,
    )
    _check_something_predicted(result, args.csv)
    if args.csv:
        _print_csv_summary(args, result, shard is not None)
    if args.submission:
        _write_submission(args, model, predicted, chunks, sample)
    return 0


def _line(pred: Prediction) -> str:
    """One printed prediction: the path, a tab, then each answered class and its probability
    (``(none)`` when a multi-label model answers none of its classes); a rejected image starts
    with the unknown label, and a scored one ends with its score."""
    answers = "  ".join(f"{c} {p:.3f}" for c, p in zip(pred.labels, pred.probs, strict=True))
    line = f"{pred.path}\t{answers or '(none)'}"
    if pred.unknown:
        line = f"{pred.path}\t{pred.unknown} (closest: {answers or '(none)'})"
    return line if pred.score is None else f"{line}  [unknown score {pred.score:.3f}]"


def _checked_submission_args(
    args: argparse.Namespace, shard: tuple[int, int] | None
) -> SampleSubmission | None:
    """Refuse submission flags that cannot go together; the sample submission, read."""
    if args.submission and (args.resume or shard):
        raise GraftError(
            "--submission needs every image's probabilities from one run: not with --resume or --shard"
        )
    if (args.sample_submission or args.submission_format) and not args.submission:
        flag = "--sample-submission" if args.sample_submission else "--submission-format"
        raise GraftError(f"{flag} shapes a submission: add --submission FILE")
    if not args.sample_submission:
        return None
    from graft.evaluation.submission import read_sample_submission

    return read_sample_submission(args.sample_submission)


def _load_model(args: argparse.Namespace, tta: int) -> Predictor:
    """The run's learner, or with ``--onnx`` the exported model on onnxruntime (torch is never
    imported on that path: NumPy preprocessing)."""
    if args.onnx or (args.run.endswith(".onnx") and Path(args.run).is_file()):
        from graft.export.onnx_runtime import OnnxClassifier

        if tta:
            raise GraftError("--tta is not available with --onnx")
        if args.precision != "fp32":
            raise GraftError("--precision is for a run folder: an ONNX model runs as exported (fp32)")
        return OnnxClassifier(args.run)
    from graft.learner.learner import load_learner

    return load_learner(args.run, device=args.device, precision=args.precision)


def _print_csv_summary(args: argparse.Namespace, result: StreamResult, sharded: bool) -> None:
    notes = [f"{result.resumed} already there"] if args.resume else []
    if sharded:
        notes.append(f"shard {args.shard.strip()}: {result.other_shards} files left to other shards")
    if result.undecodable:
        notes.append(f"{result.undecodable} undecodable")
    extra = f" ({'; '.join(notes)})" if notes else ""
    print(f"wrote {result.written} predictions to {args.csv}{extra}  ({result.seconds:.1f} s)")


def _write_submission(
    args: argparse.Namespace,
    model: Predictor,
    predicted: list[Path],
    chunks: list[np.ndarray],
    sample: SampleSubmission | None,
) -> None:
    import numpy as np

    from graft.evaluation.stream import model_decision
    from graft.evaluation.submission import write_submission

    classes = model.classes
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(classes)))
    sub = write_submission(
        args.submission,
        predicted,
        probs,
        classes,
        format=args.submission_format,
        sample=sample,
        decision=model_decision(model),
    )
    for note in sub.notes:
        print(f"note: {note}")
    shape = f"{len(sub.columns)} columns" + (f" from {sample.path.name}" if sample else "")
    print(f"wrote a {sub.format} submission of {sub.rows} rows, {shape}, to {args.submission}")


def _check_something_predicted(result: StreamResult, csv: str | None) -> None:
    """Exit 2 with the reason when every image failed to decode (the per-file warnings may have
    been cut short); when only some did, say how many on stderr, the predictions on stdout."""
    if result.undecodable and not result.written and not result.resumed:
        where = f" ({csv} holds only its header)" if csv else ""
        given = plural(result.undecodable, "image")
        raise GraftError(f"{given} given, none could be decoded: nothing was predicted{where}")
    if result.undecodable and not csv:  # with --csv, the summary line counts them
        print(f"graft: note: skipped {plural(result.undecodable, 'undecodable file')}", file=sys.stderr)


def cmd_merge_predictions(args: argparse.Namespace) -> int:
    from graft.evaluation.stream import merge_prediction_csvs

    n = merge_prediction_csvs(args.parts, args.out)
    print(f"wrote {n} predictions from {len(args.parts)} files to {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register predict and merge-predictions on the ``graft`` parser."""
    # Long only in declarations: one add_argument per flag, nothing to split out.
    from graft.cli.analysis import add_device_arguments, add_reject_argument, add_tta_argument
    from graft.evaluation.stream import DEFAULT_CHUNK_SIZE
    from graft.evaluation.submission import SUBMISSION_FORMATS

    p = sub.add_parser("predict", help="predict classes of image files or folders")
    p.add_argument("run", help="run folder written by graft train, or (with --onnx) an exported .onnx file")
    p.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="RUN is a .onnx file from graft export: predict on onnxruntime, without torch "
        "(implied by a RUN ending in .onnx)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        help="classes to report per image (default: 1); a multi-label model reports every class at or "
        "above its threshold instead",
    )
    p.add_argument(
        "--csv",
        help="write path,label,prob (+ label_N,prob_N for top-k) to this CSV, appended chunk by chunk "
        "(an existing file is replaced unless --resume); multi-label: path,labels (space separated) "
        "then each class's probability",
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
        choices=SUBMISSION_FORMATS,
        help="probs: one probability column per class; label: id,label; labels (multi-label): "
        "id,labels, space separated (default: probs, or label(s) for a two-column sample such as "
        "id,label, and labels for a multi-label model without a sample)",
    )
    p.add_argument(
        "--sample-submission",
        metavar="CSV",
        help="the competition's sample submission: its header fixes the columns (classes the model "
        "lacks get 0) and its ids the order of the rows",
    )
    p.add_argument("--print", action="store_true", help="also print predictions when writing files")
    add_reject_argument(p)
    add_tta_argument(p)
    add_device_arguments(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "merge-predictions", help="join the CSVs of graft predict --shard runs into one, in path order"
    )
    p.add_argument("parts", nargs="+", metavar="CSV", help="CSVs written by graft predict --csv")
    p.add_argument("--out", required=True, help="the merged CSV (written atomically)")
    p.set_defaults(func=cmd_merge_predictions)
