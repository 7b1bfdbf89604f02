"""``graft train``: a new run, ``--resume`` of a killed one, or ``--overwrite`` of an old one.

The run itself is :func:`graft.workflows.train.train` (the Python API's ``graft.train``); this
command parses the flags, calls it and prints its log.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from graft.infrastructure.errors import GraftError


def cmd_train(args: argparse.Namespace) -> int:
    from graft.cli.config_args import config_from_args
    from graft.infrastructure import distributed
    from graft.workflows.train import train

    if args.resume:
        _check_resume_args(args)
        config = None
    elif not args.data:
        raise GraftError("the dataset folder is missing: graft train DATA (or graft train --resume RUN)")
    else:
        config = config_from_args(args)
        config.resolved()  # bad options fail before anything starts
    if not distributed.init_from_env(args.device).is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 prints the one log
    train(
        config,
        resume=args.resume,
        overwrite=bool(args.overwrite),
        device=args.device if args.resume else None,
        workers=args.workers if args.resume else None,
        log=print,
    )
    return 0


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
