"""Folding BatchNorm into convolutions: same outputs, no norms left, original untouched."""

import copy

import pytest
import torch
from torch import nn

from graft.models import create_model
from graft.models.fuse import fold_batchnorm, inference_model


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding changes weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model


def norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> bool:
    return (got - want).abs().max().item() <= rtol * want.abs().max().item()


def example(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "arch, pretrained", [("resnet18", False), ("tf_efficientnet_lite0", True)], ids=["resnet18", "lite0"]
)
def test_folding_keeps_outputs_and_removes_every_norm(arch, pretrained):
    model, _, _ = create_model(arch, 5, pretrained=pretrained)
    if not pretrained:
        randomize_bn(model)
    model.eval()
    before, count = state(model), norms(model)
    assert count > 10
    x = example(64)

    folded = fold_batchnorm(model, x)

    assert folded is not model
    assert norms(folded) == 0
    assert not folded.training
    check = example(64, n=3, seed=2)  # other inputs than the one folding was checked on
    with torch.inference_mode():
        want, got = model(check), folded(check)
    assert want.abs().max() > 0.1
    assert close(got, want)
    # The original keeps its norms and its exact weights.
    assert norms(model) == count
    assert_same_state(model, before)


def test_original_in_training_mode_stays_in_training_mode():
    model, _, _ = create_model("resnet18", 3, pretrained=False)
    randomize_bn(model)
    model.train()
    before = state(model)
    folded = fold_batchnorm(model, example(32))
    assert model.training and not folded.training
    assert_same_state(model, before)  # running stats not updated by the folding pass


def test_folding_changes_weights_it_folds():
    """The test above could pass with no folding at all: check the conv weights really changed."""
    model, _, _ = create_model("resnet18", 3, pretrained=False)
    randomize_bn(model)
    model.eval()
    folded = fold_batchnorm(model, example(32))
    assert not torch.allclose(folded.conv1.weight, model.conv1.weight)
    assert folded.conv1.bias is not None
    assert isinstance(folded.bn1, nn.Identity)


class SharedConvOutput(nn.Module):
    """A conv whose output feeds its norm and is used again: folding it would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_conv_output_used_twice_is_not_folded_wrongly():
    model = randomize_bn(SharedConvOutput()).eval()
    before = state(model)
    x = example(16)
    folded = fold_batchnorm(model, x)
    with torch.inference_mode():
        want = model(x)
        got = folded(x)
        # What a blind fold would compute: bn(y) + bn(y). Make sure that differs here.
        wrong = copy.deepcopy(model)
        wrong.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(wrong.conv, wrong.bn)
        wrong.bn = nn.Identity()
        assert not close(wrong(x), want, rtol=1e-2)
    assert close(got, want, rtol=1e-6)
    assert_same_state(model, before)


def test_inference_model_is_channels_last_and_exact():
    model, _, _ = create_model("resnet18", 4, pretrained=False)
    randomize_bn(model, seed=3)
    model.eval()
    fast = inference_model(model, 48, torch.device("cpu"))
    assert norms(fast) == 0
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = example(48, seed=5)
    with torch.inference_mode():
        assert close(fast(x.contiguous(memory_format=torch.channels_last)), model(x))
