"""The end-of-epoch checkpoint that lets an interrupted run go on as if it had never stopped.

``RUN/checkpoint.safetensors`` holds, after every epoch, the current weights, the best weights so
far, the optimizer's tensors and the random-number generators; its safetensors metadata holds the
rest as JSON: where training stands (:class:`Progress`), the scheduler, and what a resume needs to
rebuild the learner (config, split, model, preprocessing). One file, written atomically, so a kill
at any moment leaves either the previous checkpoint or the new one. Nothing in it is a pickle.
"""

from __future__ import annotations

import dataclasses
import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from graft.engine import run_folder
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.distributed import broadcast, world
from graft.infrastructure.errors import GraftError
from graft.infrastructure.fileio import atomic_write

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = 1


@dataclass
class Progress:
    """Where ``fit`` stands between two epochs.

    Attributes:
        epoch: Epochs finished, over all phases.
        phase: Index of the phase to run next (or to go on with).
        phase_epochs: Epochs of that phase already run (0: it starts afresh).
        stale: Epochs of that phase without improvement (early stopping).
        best_epoch: The epoch whose weights are kept so far.
        history: One row per finished epoch.
        image_epochs: Epochs run on the images (the sampler's epoch counter).
        failed: Files that could not be decoded (each warned about once).
        unfreeze_skipped: Why the unfrozen phase was skipped, if it was.
        stopped: Why a phase stopped early, if one did.
    """

    epoch: int = 0
    phase: int = 0
    phase_epochs: int = 0
    stale: int = 0
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    image_epochs: int = 0
    failed: list[str] = field(default_factory=list)
    unfreeze_skipped: str | None = None
    stopped: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Progress:
        """Read back ``dataclasses.asdict(progress)``, also as checkpoints before the rename of
        ``skipped`` wrote it."""
        d = dict(d)
        if "skipped" in d:
            d.setdefault("unfreeze_skipped", d.pop("skipped"))
        return cls(**d)


@dataclass
class Checkpoint:
    """A checkpoint read back: :class:`Progress`, tensors and the JSON-ready rest."""

    progress: Progress
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict | None
    scheduler: dict | None
    rng: dict
    meta: dict
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def save_checkpoint(
    run_dir: str | Path,
    progress: Progress,
    model: torch.nn.Module,
    best: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    generators: dict[str, torch.Generator],
    meta: dict,
    extra: dict[str, torch.Tensor] | None = None,
) -> bool:
    """Write ``run_dir/checkpoint.safetensors`` atomically.

    The first one written in a folder whose old run is being replaced
    (:func:`graft.engine.run_folder.replacing`) clears that old run.

    Args:
        progress: Where training stands.
        model: The network (its current weights).
        best: The best weights so far, or None when they are the current ones (only the tensors
            that differ from the current ones are stored).
        optimizer: The optimizer of the phase in progress (None between phases).
        scheduler: Its learning-rate scheduler.
        generators: Named generators besides the global ones (e.g. the cached-feature shuffle).
        meta: JSON-ready description the resume rebuilds the learner from.
        extra: More tensors to give back on resume (:attr:`Checkpoint.extra`), e.g. the state
            of callbacks such as the EMA of the weights.

    Returns:
        False (with a warning) if the file could not be written, e.g. on a full disk: training
        goes on, and the previous checkpoint is left as it was.
    """
    current = model.state_dict()
    tensors = {f"model.{k}": v for k, v in current.items()}
    if best is not None:
        # Only what differs: while the body is frozen, that is the head (half the file, half the time).
        tensors.update({f"best.{k}": v for k, v in best.items() if not torch.equal(v, current[k])})
    scalars: dict[str, object] = {}
    groups = None
    if optimizer is not None:
        state = optimizer.state_dict()
        groups = state["param_groups"]
        for pid, values in state["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{pid}.{key}"] = value
                else:
                    scalars[f"{pid}.{key}"] = value
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    for name, g in generators.items():
        tensors[f"rng.gen.{name}"] = g.get_state()
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    body = {
        "format": FORMAT,
        "best": best is not None,
        "progress": dataclasses.asdict(progress),
        "optimizer": None if groups is None else {"param_groups": groups, "scalars": scalars},
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": [np_state[0], *np_state[2:]]},
        "meta": meta,
    }
    # safetensors refuses tensors that share memory; clones are whole and on the CPU.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    path = Path(run_dir) / CHECKPOINT_FILE
    try:
        text = json.dumps(body)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"graft": text}))
    except OSError as e:
        warnings.warn(
            f"could not write the checkpoint {path} ({e.strerror or e}); training goes on, "
            "and the previous checkpoint (if any) is kept",
            stacklevel=2,
        )
        return False
    run_folder.checkpoint_written(run_dir, CHECKPOINT_FILE)  # the new run is resumable: the old one goes
    return True


def _open(run_dir: str | Path, tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """The checkpoint's JSON body and (if asked) its tensors, checked to be a graft checkpoint."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise GraftError(f"no checkpoint to resume in {run_dir}: {CHECKPOINT_FILE} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            body = json.loads((f.metadata() or {})["graft"])
            found = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118
        Progress.from_dict(body["progress"])
        if body.get("format") != FORMAT:
            raise ValueError(f"unsupported checkpoint format {body.get('format')!r}")
    except Exception as e:  # a damaged file must be one clear line, whatever the parser raised
        raise GraftError(f"{path} is not a readable graft checkpoint: {e}") from None
    return body, found


def checkpoint_meta(run_dir: str | Path) -> dict:
    """What a resume rebuilds the learner from (config, split, model, preprocessing), without
    reading the tensors.

    Raises:
        GraftError: If there is no checkpoint, or it is not a graft checkpoint.
    """
    return _open(run_dir, tensors=False)[0]["meta"]


def read_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read ``run_dir/checkpoint.safetensors``.

    Raises:
        GraftError: If there is none, or it is not a graft checkpoint.
    """
    body, tensors = _open(run_dir, tensors=True)
    progress = Progress.from_dict(body["progress"])

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer = None
    if body["optimizer"] is not None:
        state: dict[int, dict] = {}
        for key, value in part("optim.").items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = value
        for key, value in body["optimizer"]["scalars"].items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = value
        optimizer = {"state": state, "param_groups": body["optimizer"]["param_groups"]}
    rng = dict(body["rng"])
    rng["torch"] = tensors["rng.torch"]
    rng["cuda"] = [tensors[f"rng.cuda.{i}"] for i in range(len(part("rng.cuda.")))]
    rng["generators"] = part("rng.gen.")
    rng["numpy_keys"] = tensors["rng.numpy"]
    weights = part("model.")
    return Checkpoint(
        progress=progress,
        model=weights,
        best={**weights, **part("best.")} if body.get("best") else None,
        optimizer=optimizer,
        scheduler=body["scheduler"],
        rng=rng,
        meta=body["meta"],
        extra=part("extra."),
    )


def restore_rng(rng: dict, generators: dict[str, torch.Generator]) -> None:
    """Put every random-number generator back as the checkpoint found it."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    for name, g in generators.items():
        if name in rng["generators"]:
            g.set_state(rng["generators"][name])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, rng["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))


def remove_checkpoint(run_dir: str | Path) -> None:
    """Delete the checkpoint once the finished run is saved (it is only for resuming)."""
    (Path(run_dir) / CHECKPOINT_FILE).unlink(missing_ok=True)


# Options that may change between a run and its resume: they do not change what is computed.
MAY_DIFFER = ("device", "workers", "out", "report")


def matching_checkpoint(run_dir: str | Path, cfg_dict: dict, split: dict) -> Checkpoint | None:
    """The checkpoint in ``run_dir`` if there is one, checked to belong to this very run.

    Under torch.distributed rank 0 reads it and sends it to the others (the run folder may exist
    only on the first machine). None while the folder's old run is being replaced
    (``graft train --overwrite``): its checkpoint is not this run's.

    Args:
        cfg_dict: The run's config (``TrainConfig.to_dict()``); ``lr: "auto"`` matches the rate
            the checkpointed run found.
        split: The data's ``to_record()``.

    Raises:
        GraftError: If the checkpoint was written by a run with other options or other data.
    """
    found: Checkpoint | GraftError | None = None
    if world().is_main:
        try:
            found = _matching(run_dir, cfg_dict, split)
        except GraftError as e:
            found = e
    found = broadcast(found)
    if isinstance(found, GraftError):
        raise found
    return found


def _matching(run_dir: str | Path, cfg_dict: dict, split: dict) -> Checkpoint | None:
    if run_folder.is_replacing(run_dir) or not (Path(run_dir) / CHECKPOINT_FILE).is_file():
        return None  # (an old run's checkpoint stays until the new run's first one replaces it)
    ck = read_checkpoint(run_dir)
    # An option newer than the checkpoint is missing from it: that run ran with its default.
    defaults = {
        f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING
    }
    saved = {**{k: defaults[k] for k in cfg_dict if k in defaults}, **ck.meta["config"]}
    differ = sorted(
        k
        for k in set(saved) | set(cfg_dict)
        if k not in MAY_DIFFER
        and saved.get(k) != cfg_dict.get(k)
        and not (k == "lr" and cfg_dict.get(k) == "auto")
    )
    if differ:
        raise GraftError(
            f"{run_dir} holds the checkpoint of a run with other options ({', '.join(differ)}); "
            "resume it with its own options (graft train --resume RUN), or choose another folder"
        )
    if ck.meta["split"]["classes"] != split["classes"] or ck.meta["split"]["splits"] != split["splits"]:
        raise GraftError(f"{run_dir} holds the checkpoint of a run on other data or another split")
    return ck
