"""Out of memory: batches go on in pieces, with the same result as the whole batch."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from graft.data import ImageData, Preprocessing, eval_transform, make_loader
from graft.engine.loop import train_epoch
from graft.features.forward import infer
from graft.infrastructure.errors import GraftError
from graft.infrastructure.memory import Pieces, is_out_of_memory
from graft.infrastructure.runtime import grad_scaler


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )


def _limit_batch(model: nn.Module, most: int) -> list[int]:
    """Make ``model`` fail like an exhausted GPU on batches above ``most``; returns the sizes run."""
    seen: list[int] = []

    def hook(module, args):
        if args[0].shape[0] > most:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {args[0].shape[0]} images")
        seen.append(args[0].shape[0])

    model.register_forward_pre_hook(hook)
    return seen


@pytest.fixture
def loader(tmp_path: Path, make_image_folder):
    make_image_folder(tmp_path, classes={"a": 6, "b": 5, "c": 5})
    data = ImageData.from_folder(tmp_path, valid_split=0.0)
    return make_loader(
        data.splits["train"], eval_transform(Preprocessing(input_size=24)), batch_size=16, workers=0
    )


def _train(model: nn.Module, loader) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    device = torch.device("cpu")
    pieces = Pieces("training")  # as ImagePass keeps it from one epoch to the next
    for _ in range(2):
        train_epoch(
            model,
            loader,
            opt,
            sched,
            nn.CrossEntropyLoss(),
            device,
            grad_scaler(device, "fp32"),
            0,
            "t",
            pieces=pieces,
        )


def test_training_goes_on_in_pieces_with_the_same_step(loader) -> None:
    whole, cut = _net(), _net()
    _train(whole, loader)
    seen = _limit_batch(cut, 4)
    with pytest.warns(UserWarning) as caught:
        _train(cut, loader)
    messages = [str(w.message) for w in caught]
    assert messages == [
        "out of memory during training with 16 images at once: going on in 2 pieces of at most 8",
        "out of memory during training with 16 images at once: going on in 4 pieces of at most 4",
    ]
    assert seen == [4] * 8  # two epochs of one batch, four pieces each (and nothing above 4)
    for a, b in zip(whole.parameters(), cut.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_inference_goes_on_in_pieces(loader) -> None:
    model = _net().eval()
    limited = copy.deepcopy(model)
    _limit_batch(limited, 3)
    device = torch.device("cpu")
    logits, idx, _ = infer(model, loader, device)
    with pytest.warns(UserWarning, match="out of memory during predict with 16 images at once"):
        cut_logits, cut_idx, _ = infer(limited, loader, device)
    assert torch.equal(idx, cut_idx)
    torch.testing.assert_close(logits, cut_logits, rtol=0, atol=1e-6)


def test_one_image_that_does_not_fit_is_a_clear_error(loader) -> None:
    model = _net()
    _limit_batch(model, 0)
    with (
        pytest.warns(UserWarning),
        pytest.raises(GraftError, match="out of memory during training with one image"),
    ):
        _train(model, loader)


def test_real_cpu_allocation_failure_is_recognised() -> None:
    with pytest.raises(RuntimeError) as info:
        torch.empty(10**13)  # 40 TB
    assert is_out_of_memory(info.value)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert Pieces("x").run(lambda t: t.sum(), torch.ones(5)) == [torch.tensor(5.0)]
