"""The engine's side of real-world labels: val metrics against scikit-learn, class weights, the
multi-label loss, and the monitor and balance that ``auto`` resolves to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score

from graft.engine.callbacks import better
from graft.engine.losses import MultiLabelLoss, class_weights
from graft.engine.metrics import (
    accuracy,
    average_precision,
    balanced_accuracy,
    mean_average_precision,
    micro_f1,
    multilabel_macro_f1,
    standard_metrics,
)
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.errors import GraftError


def test_balanced_accuracy_matches_scikit_learn():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        targets = torch.randint(4, (60,), generator=g)
        logits = torch.randn(60, 4, generator=g) + 2 * torch.nn.functional.one_hot(targets, 4)
        want = balanced_accuracy_score(targets.numpy(), logits.argmax(1).numpy())
        assert balanced_accuracy(logits, targets) == pytest.approx(want)


def test_multi_label_metrics_match_scikit_learn():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        targets = (torch.rand(50, 5, generator=g) < 0.3).float()
        logits = torch.randn(50, 5, generator=g) + 1.5 * (2 * targets - 1)
        logits[:5, 0] = logits[5:10, 0] = 0.25  # ties
        y, predicted = targets.numpy().astype(int), (logits > 0).numpy().astype(int)
        present = y.any(0)
        want_ap = np.mean(
            [average_precision_score(y[:, c], logits[:, c].numpy()) for c in np.flatnonzero(present)]
        )
        assert mean_average_precision(logits, targets) == pytest.approx(want_ap)
        assert micro_f1(logits, targets) == pytest.approx(f1_score(y, predicted, average="micro"))
        seen = (y + predicted).any(0)
        want_macro = f1_score(y[:, seen], predicted[:, seen], average="macro", zero_division=0)
        assert multilabel_macro_f1(logits, targets) == pytest.approx(want_macro)
        assert accuracy(logits, targets) == pytest.approx((predicted == y).all(1).mean())  # exact match


def test_average_precision_of_a_hand_worked_case():
    # ranked: + - + -: precision 1 at recall 1/2, 2/3 at recall 1
    scores, positive = torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([True, False, True, False])
    assert average_precision(scores, positive) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_class_weights_make_each_class_weigh_the_same():
    w = class_weights([100, 20, 5, 0])
    total = (w[:3] * torch.tensor([100.0, 20, 5])).tolist()
    assert total == pytest.approx([total[0]] * 3)  # each class's images add up to the same
    assert w[3] == w.max()  # a class without images: the largest weight, not inf
    assert class_weights([10, 10]).tolist() == [1.0, 1.0]


def test_multi_label_loss_is_binary_cross_entropy_with_smoothing():
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert MultiLabelLoss()(logits, targets) == pytest.approx(plain.item())
    smoothed = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[0.95, 0.05]]))
    assert MultiLabelLoss(0.1)(logits, targets) == pytest.approx(smoothed.item())


def test_auto_resolves_from_the_data():
    plain = TrainConfig(data="x").resolved()
    assert (plain.monitor, plain.balance) == ("val_acc", "none")
    skewed = TrainConfig(data="x").resolved(imbalance=20)
    assert (skewed.monitor, skewed.balance) == ("val_bal_acc", "weights")
    multi = TrainConfig(data="x").resolved(multi_label=True, imbalance=20)
    assert (multi.monitor, multi.balance, multi.multi_label) == ("val_map", "none", True)
    asked = TrainConfig(data="x", monitor="val_loss", balance="sampler").resolved(imbalance=20)
    assert (asked.monitor, asked.balance) == ("val_loss", "sampler")
    assert TrainConfig(data="x").monitor == "auto"  # the request keeps what was asked
    with pytest.raises(GraftError, match="multi-label"):
        TrainConfig(data="x", monitor="val_map").resolved()
    with pytest.raises(GraftError, match="single-label"):
        TrainConfig(data="x", balance="weights").resolved(multi_label=True)
    with pytest.raises(GraftError, match="not both"):
        TrainConfig(data="x", threshold=0.3, target_recall=0.9).resolved()
    with pytest.raises(GraftError, match="threshold must be in"):
        TrainConfig(data="x", threshold=1.5).resolved()


def test_the_monitor_picks_the_best_epoch_and_ties_go_to_the_lower_loss():
    a = {"val_loss": 0.5, "val_acc": 0.9, "val_bal_acc": 0.6}
    b = {"val_loss": 0.6, "val_acc": 0.8, "val_bal_acc": 0.7}
    assert better(b, a, "val_bal_acc") and not better(b, a, "val_acc")
    assert better({**a, "val_loss": 0.4}, a, "val_bal_acc")
    assert set(standard_metrics(False)) == {"bal_acc", "macro_f1"}
    assert set(standard_metrics(True)) == {"macro_f1", "micro_f1", "map"}
