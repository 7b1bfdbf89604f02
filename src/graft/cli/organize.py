"""``graft organize``: a Kaggle-style dataset written out as train/, valid/, train_valid/, test/ folders."""

from __future__ import annotations

import argparse


def cmd_organize(args: argparse.Namespace) -> int:
    from graft.data.organize import RECORD_FILE, organize

    result = organize(
        args.data,
        args.out,
        labels=args.labels,
        valid_split=args.valid_split,
        test=args.test,
        seed=args.seed,
        link=args.link,
        overwrite=args.overwrite,
    )
    print(f"organized {args.data} into {result.out}  ({result.seconds:.1f} s)")
    print(result.summary())
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.out / RECORD_FILE}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register organize on the ``graft`` parser."""
    from graft.data.organize import LINK_MODES

    p = sub.add_parser(
        "organize",
        help="write a flat folder + labels CSV (or class folders) as train/, valid/, train_valid/ and "
        "test/ class folders",
    )
    p.add_argument(
        "data", help="dataset folder: a flat image folder (or one holding it) with --labels, or class folders"
    )
    p.add_argument("--labels", help="CSV of id,label for a flat image folder")
    p.add_argument("--out", required=True, help="folder to write (must not exist, or be empty)")
    p.add_argument(
        "--valid-split",
        type=float,
        default=0.1,
        help="fraction of the labeled images for valid/, stratified; 0: no valid/ (default: 0.1)",
    )
    p.add_argument(
        "--test",
        metavar="DIR",
        help="folder of unlabeled test images for OUT/test/ (default: the test/ folder beside a "
        "labels CSV's images, if there is one)",
    )
    p.add_argument("--seed", type=int, default=0, help="split seed, as graft train's (default: 0)")
    p.add_argument(
        "--link",
        choices=LINK_MODES,
        default="auto",
        help="how files are placed: auto (hard link, else symbolic link, else copy), hardlink, symlink "
        "or copy (default: auto)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an OUT that an earlier graft organize wrote"
    )
    p.set_defaults(func=cmd_organize)
