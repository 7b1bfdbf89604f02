"""Command-line flags generated from :class:`~graft.infrastructure.config.TrainConfig`, so the two
never drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection

from graft.infrastructure.config import TrainConfig


def _base_type(annotation: object) -> object:
    """``int | None`` → ``int``; ``list[str] | None`` → ``list[str]``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_config_arguments(
    parser: argparse.ArgumentParser,
    exclude: Collection[str] = (),
    defaults: dict | None = None,
    optional_data: bool = False,
) -> None:
    """One flag per TrainConfig field (``valid_split`` → ``--valid-split``); booleans get ``--no-…``.

    Args:
        exclude: Fields that get no flag (the command sets them itself).
        defaults: Per-command defaults that replace the config's (shown in the help).
        optional_data: The dataset positional may be left out (``train --resume RUN``).
    """
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude:
            continue
        meta = f.metadata
        kind = _base_type(hints[f.name])
        kwargs: dict = {"help": meta.get("help", "")}
        if meta.get("positional"):
            extra = {"nargs": "?", "default": f.default} if optional_data else {}
            parser.add_argument(f.name, **kwargs, **extra)
            continue
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            kwargs["type"], kwargs["metavar"] = _comma_list, "A,B"
        else:
            kwargs["type"] = meta.get("parse", kind)
            kwargs["metavar"] = f.name.upper() if "choices" not in meta else None
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        default = (defaults or {}).get(f.name, f.default)
        if default is not None and kind is not bool:
            kwargs["help"] += f" (default: {default})"
        parser.add_argument(flag, dest=f.name, default=default, **kwargs)


def add_offline_argument(parser: argparse.ArgumentParser) -> None:
    """``--offline`` of the commands that may download pretrained weights."""
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never open a connection: use only bundled and cached weights (as GRAFT_OFFLINE=1)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed flags describe."""
    return TrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    )
