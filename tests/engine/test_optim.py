"""Freezing, selective unfreezing and discriminative learning rates, on a real resnet18."""

from itertools import pairwise

import pytest
import torch
from torch import nn

from graft.engine.optim import apply_phase, make_optimizer, plan_phases, set_train_mode
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.errors import GraftError
from graft.models import body_blocks, create_model, head_parameters

BLOCKS = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model, spec, _ = create_model("resnet18", 3, pretrained=False)
    return model, spec


def _trainable_blocks(model, spec):
    return [name for name, params in body_blocks(model, spec) if all(p.requires_grad for p in params)]


def test_finetune_plan_is_frozen_then_discriminative():
    cfg = TrainConfig(data="d", freeze_epochs=2, epochs=3, lr=1e-3, lr_mult=100).resolved()
    frozen, unfrozen = plan_phases(cfg, BLOCKS)
    assert (frozen.name, frozen.epochs, frozen.blocks, frozen.lr) == ("frozen", 2, [], 1e-3)
    assert (unfrozen.name, unfrozen.epochs, unfrozen.blocks) == ("unfrozen", 3, BLOCKS)
    assert unfrozen.lr == pytest.approx(5e-4) and unfrozen.lr_mult == 100


def test_mode_plans():
    features = TrainConfig(data="d", mode="features").resolved()
    assert [p.name for p in plan_phases(features, BLOCKS)] == ["frozen"]
    (full,) = plan_phases(TrainConfig(data="d", mode="full", lr=0.01).resolved(), BLOCKS)
    assert full.blocks == BLOCKS and full.lr_mult == 1.0 and full.lr == 0.01


def test_full_mode_takes_discriminative_rates_when_asked(resnet):
    # fastai's fit_one_cycle(n, slice(1e-5, 3e-4)): first block 1e-5, head 3e-4.
    model, spec = resnet
    (phase,) = plan_phases(TrainConfig(data="d", mode="full", lr=3e-4, lr_mult=30).resolved(), BLOCKS)
    groups = apply_phase(model, spec, phase)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    block_lrs = [lr_of[id(params[0])] for _, params in body_blocks(model, spec)]
    assert block_lrs[0] == pytest.approx(1e-5) and lr_of[id(model.fc.weight)] == pytest.approx(3e-4)
    assert all(a < b for a, b in pairwise(block_lrs))


@pytest.mark.parametrize(
    ("optimizer", "kind", "weight_decay"),
    [("adamw", torch.optim.AdamW, 1e-2), ("adam", torch.optim.Adam, 0.0), ("sgd", torch.optim.SGD, 1e-4)],
)
def test_optimizers_and_their_default_weight_decay(resnet, optimizer, kind, weight_decay):
    model, spec = resnet
    cfg = TrainConfig(data="d", mode="features", optimizer=optimizer).resolved()
    (phase,) = plan_phases(cfg, BLOCKS)
    opt = make_optimizer(apply_phase(model, spec, phase), cfg)
    assert type(opt) is kind
    assert cfg.weight_decay == weight_decay
    # Adam adds the decay to the gradient (L2), AdamW decouples it: torch's own classes do each.
    assert [g["weight_decay"] for g in opt.param_groups] == [weight_decay, 0.0]


def test_frozen_phase_trains_only_the_head(resnet):
    model, spec = resnet
    cfg = TrainConfig(data="d", mode="features", lr=0.1).resolved()
    (phase,) = plan_phases(cfg, BLOCKS)
    groups = apply_phase(model, spec, phase)
    assert _trainable_blocks(model, spec) == []
    head = {id(p) for p in head_parameters(model, spec)}
    assert {id(p) for g in groups for p in g["params"]} == head
    set_train_mode(model, spec, phase)
    assert not model.bn1.training and not model.layer4[1].bn2.training and model.fc.training

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(groups, cfg)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Only the head moved: no body weight, and no BatchNorm running statistic.
    assert changed == {"fc.weight", "fc.bias"}
    assert all(p.grad is None for name, params in body_blocks(model, spec) for p in params)


def test_unfrozen_phase_gives_discriminative_rates(resnet):
    model, spec = resnet
    cfg = TrainConfig(data="d", lr=1e-3, lr_mult=100).resolved()
    phase = plan_phases(cfg, BLOCKS)[1]
    groups = apply_phase(model, spec, phase)
    assert _trainable_blocks(model, spec) == BLOCKS
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    block_lrs = [lr_of[id(params[0])] for _, params in body_blocks(model, spec)]
    head_lr = lr_of[id(model.fc.weight)]
    assert block_lrs[0] == pytest.approx(5e-4 / 100)
    assert head_lr == pytest.approx(5e-4)
    assert all(a < b for a, b in zip(block_lrs, [*block_lrs[1:], head_lr], strict=True))
    # Norm weights and biases get no weight decay; conv/linear weights do.
    wd_of = {id(p): g.get("weight_decay") for g in groups for p in g["params"]}
    assert wd_of[id(model.bn1.weight)] == 0.0 and wd_of[id(model.fc.bias)] == 0.0
    assert wd_of[id(model.conv1.weight)] is None


def test_selective_unfreeze_trains_named_blocks_only(resnet):
    model, spec = resnet
    cfg = TrainConfig(data="d", mode="full", unfreeze=["layer3", "layer4"]).resolved()
    (phase,) = plan_phases(cfg, BLOCKS)
    apply_phase(model, spec, phase)
    assert _trainable_blocks(model, spec) == ["layer3", "layer4"]
    set_train_mode(model, spec, phase)
    assert model.layer4.training and not model.layer2.training
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    assert model.layer3[0].conv1.weight.grad is not None and model.fc.weight.grad is not None
    assert model.layer2[0].conv1.weight.grad is None and model.conv1.weight.grad is None


def test_unknown_block_name_lists_the_valid_ones():
    cfg = TrainConfig(data="d", unfreeze=["layer9"]).resolved()
    with pytest.raises(GraftError, match=r"no body block named 'layer9'.*layer4"):
        plan_phases(cfg, BLOCKS)


@pytest.mark.parametrize("total", [1, 2, 3, 4, 100])
def test_one_cycle_warms_up_then_anneals(total):
    from graft.engine.optim import one_cycle

    factors = [one_cycle(s, total) for s in range(total + 1)]
    peak = factors.index(max(factors))
    assert factors[0] == pytest.approx(1 / 25)
    assert max(factors) == pytest.approx(1.0)
    if total >= 4:
        assert factors[-1] < 1e-5  # annealed to lr / (25 * 1e4) by the end
    assert all(a <= b for a, b in pairwise(factors[: peak + 1]))
    assert all(a >= b for a, b in pairwise(factors[peak:]))
