"""``graft doctor``: check a dataset for label errors, copies, leakage and odd images; apply or
undo the moves a user chose in ``doctor.csv``."""

from __future__ import annotations

import argparse

from graft.infrastructure.errors import GraftError


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.apply and args.undo:
        raise GraftError("--apply and --undo are separate steps: give one")
    if args.apply:
        from graft.data.relocate import apply_actions

        done = apply_actions(args.apply, args.data)
        print(f"moved {len(done.moved)} files ({done.left} rows left as they are)")
        print(f"undo log: {done.log}  (graft doctor {args.data} --undo {done.log})")
        return 0
    if args.undo:
        from graft.data.relocate import undo_actions

        back = undo_actions(args.undo)
        print(f"restored {len(back.restored)} files")
        for problem in back.problems:
            print(f"graft: warning: {problem}")
        return 1 if back.problems else 0
    from graft.workflows.doctor import doctor

    result = doctor(
        args.data,
        labels=args.labels,
        run=args.run,
        out=args.out,
        arch=args.arch,
        valid_split=args.valid_split,
        test_split=args.test_split,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    print("\n".join(result.summary()))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.csv_path} and {result.html_path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register doctor on the ``graft`` parser."""
    p = sub.add_parser(
        "doctor",
        help="find likely label errors, duplicates, train/val/test leakage, outliers and odd images; "
        "--apply the moves chosen in doctor.csv, --undo them",
    )
    p.add_argument("data", help="dataset folder (any layout graft train reads)")
    p.add_argument("--labels", help="labels CSV of a flat image folder")
    p.add_argument(
        "--run", help="a run folder: its model gives the features and scores the images it did not train on"
    )
    p.add_argument("--out", default=".", help="folder for doctor.csv and doctor.html (default: .)")
    p.add_argument(
        "--arch",
        default="tf_efficientnet_lite0",
        help="pretrained body that gives the features (default: %(default)s)",
    )
    p.add_argument(
        "--valid-split",
        type=float,
        default=0.2,
        help="val fraction when there is no val folder (as graft train)",
    )
    p.add_argument("--test-split", type=float, default=0.0, help="test fraction when there is no test folder")
    p.add_argument("--seed", type=int, default=0, help="split and fold seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--workers", type=int, help="decoding processes (default: as graft train)")
    p.add_argument(
        "--apply", metavar="CSV", help="move files as the edited doctor.csv says (relabel, quarantine)"
    )
    p.add_argument("--undo", metavar="LOG", help="put back the files an --apply moved (its undo log)")
    p.set_defaults(func=cmd_doctor)
