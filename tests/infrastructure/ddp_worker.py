"""Run by torchrun in the distributed tests: `graft train` (or one DDP step) with a record of
what this rank did.

    torchrun --standalone --nproc_per_node 2 ddp_worker.py RECORD_DIR WATCH_DIR train ARGS...
    torchrun --standalone --nproc_per_node 2 ddp_worker.py RECORD_DIR WATCH_DIR step DATA

Each rank writes ``RECORD_DIR/rank<r>.json`` at the end with:

* ``loaded``: the image files its training/validation loaders decoded, per loader kind, and
  (``train``) a digest of the weights fit ended with;
* ``writes``: every file-system change it made under ``WATCH_DIR`` (seen by an audit hook:
  opening for writing, creating folders, renaming, deleting);
* for ``step``: the model's weights after one training epoch, as lists.

Use ``--workers 0`` so the loaders decode in this process, where the record is kept.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RECORD, WATCH = Path(sys.argv[1]), str(Path(sys.argv[2]).resolve())
MODE, ARGS = sys.argv[3], sys.argv[4:]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
writes: list[str] = []
loaded: dict[str, list[str]] = {"images": [], "features": []}


def _watched(path: object) -> bool:
    if not isinstance(path, str | bytes | os.PathLike):
        return False  # a file descriptor
    return os.path.abspath(os.fsdecode(path)).startswith(WATCH)


def audit(event: str, args: tuple) -> None:
    if event == "open" and _watched(args[0]):
        mode, flags = args[1], args[2]
        if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS):
            writes.append(f"open {args[0]}")
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate") and _watched(args[0]):
        writes.append(f"{event} {args[0]}")
    elif event in ("os.rename", "os.replace") and (_watched(args[0]) or _watched(args[1])):
        writes.append(f"{event} {args[0]} -> {args[1]}")


def record_loads() -> None:
    """Wrap the two datasets that decode images so each rank notes what it read."""
    from graft.data import loaders
    from graft.features import extract as features

    image_getitem = loaders.ImageFileDataset.__getitem__
    view_getitem = features._ViewDataset.__getitem__

    def images(self, item):
        i = item[0] if isinstance(item, tuple) else item  # training loaders index by (i, epoch)
        loaded["images"].append(str(self.samples[i].path))
        return image_getitem(self, item)

    def views(self, i):
        loaded["features"].append(str(self.items[i][0]))
        return view_getitem(self, i)

    loaders.ImageFileDataset.__getitem__ = images
    features._ViewDataset.__getitem__ = views


def record_weights() -> None:
    """Note a digest of the weights that fit leaves in the model, to compare ranks."""
    import hashlib

    from graft.learner import learner

    fit = learner.fit

    def recording_fit(model, *args, **kwargs):
        result = fit(model, *args, **kwargs)
        h = hashlib.sha256()
        for k, v in model.state_dict().items():
            h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
        loaded["weights"] = [h.hexdigest()]
        return result

    learner.fit = recording_fit


def one_step(data: str) -> dict:
    """One epoch of ImagePass on a random-init resnet18 in eval mode (no dropout, fixed
    BatchNorm statistics): with one global batch per epoch, the result must not depend on how
    many processes share the batch."""
    import dataclasses

    import torch

    from graft.data.dataset import ImageData
    from graft.engine.optim import make_optimizer
    from graft.engine.passes import ImagePass
    from graft.infrastructure import distributed
    from graft.infrastructure.config import TrainConfig
    from graft.infrastructure.runtime import precision_plan
    from graft.models import create_model

    distributed.init_from_env("cpu")
    torch.manual_seed(0)
    images = ImageData.from_folder(data)
    model, _, pre = create_model("resnet18", len(images.classes), pretrained=False)
    model = model.to(memory_format=torch.channels_last).eval()  # as Learner keeps it
    n = len(images.splits["train"])
    cfg = TrainConfig(data=data, batch_size=n, augment=False, workers=0, optimizer="sgd", lr=0.5, momentum=0)
    cfg = cfg.resolved()
    pre = dataclasses.replace(pre, input_size=32)
    cpu = torch.device("cpu")
    runner = ImagePass(model, pre, images, cfg, cpu, precision_plan(cfg.precision, cpu))
    optimizer = make_optimizer([{"params": list(model.parameters())}], cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    stats = runner.train_epoch(optimizer, scheduler, torch.nn.CrossEntropyLoss(), "step")
    logits, idx, _ = runner.validate()
    distributed.shutdown()
    return {
        "loss": stats.loss,
        "n": stats.n,
        "fc": model.fc.weight.detach().tolist(),
        "conv1": model.conv1.weight.detach().flatten()[:200].tolist(),
        "val_idx": idx.tolist(),
        "val_logits": logits.tolist(),
    }


def main() -> int:
    sys.addaudithook(audit)
    record_loads()
    result: dict = {}
    code = 0
    if MODE == "train":
        from graft.cli.main import main as graft_main

        record_weights()

        code = graft_main(["train", *ARGS])
    else:
        result = one_step(ARGS[0])
    rank = os.environ.get("RANK", "0")
    RECORD.mkdir(parents=True, exist_ok=True)
    (RECORD / f"rank{rank}.json").write_text(json.dumps({"loaded": loaded, "writes": writes, **result}))
    return code


if __name__ == "__main__":
    sys.exit(main())
