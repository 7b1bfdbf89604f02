"""``graft export`` (a model file for other runtimes, checked against PyTorch before it is written)
and ``graft serve`` (an HTTP API and a web page)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    from graft.export.exporters import PARITY_TOLERANCE, export
    from graft.infrastructure.text import plural
    from graft.learner.learner import load_learner

    learn = load_learner(args.run, device="cpu")
    report = export(learn, args.format, args.out, check=args.check)
    size = report.path.stat().st_size / 1e6
    print(f"wrote {report.path} ({size:.1f} MB, {report.format})")
    same = "same labels" if learn.multi_label else "same top-1"
    print(
        f"parity with PyTorch on {plural(report.images, 'image')}: largest probability difference "
        f"{report.max_diff:.2e} (limit {PARITY_TOLERANCE:g}); {same} on {report.agree}/{report.images}"
        f"  ({report.seconds:.1f} s)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from graft.serving.app import serve

    serve(
        args.run,
        host=args.host,
        port=args.port,
        # Said only once everything checked out: a bad option or a port in use is one line, exit 2.
        on_ready=lambda: print(f"serving {args.run} on http://{args.host}:{args.port}/  (Ctrl-C stops)"),
        device=args.device,
        precision=args.precision,
        max_upload_mb=args.max_upload_mb,
        max_files=args.max_files,
        max_batch=args.max_batch,
        max_request_mpx=args.max_request_mpx,
        reject=args.reject,
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register export and serve on the ``graft`` parser."""
    from graft.cli.analysis import add_device_arguments, add_reject_argument

    p = sub.add_parser("export", help="export a run to ONNX or TorchScript, checked against PyTorch")
    p.add_argument("run", help="run folder written by graft train")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    p.add_argument("--out", help="output file (default: RUN/model.onnx or RUN/model.torchscript.pt)")
    p.add_argument(
        "--check",
        nargs="+",
        metavar="IMAGES",
        help="images or folders for the parity check (default: the run's test or val split)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP API (POST /predict) and a web page for a run")
    p.add_argument("run", help="run folder written by graft train")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default: 20)")
    p.add_argument("--max-files", type=int, default=32, help="most images in one request (default: 32)")
    p.add_argument(
        "--max-request-mpx",
        type=float,
        default=2000.0,
        help="most pixels in one request, in millions, as the images' headers state them (default: 2000)",
    )
    p.add_argument(
        "--max-batch", type=int, default=16, help="most images per forward pass across requests (default: 16)"
    )
    add_reject_argument(p)
    add_device_arguments(p)
    p.set_defaults(func=cmd_serve)
