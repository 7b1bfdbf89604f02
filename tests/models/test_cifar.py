"""graft's own architectures: cifar_resnet18's shape, name, listing, weights and preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from graft.infrastructure.errors import GraftError
from graft.models import body_blocks, build_model, create_model, list_architectures, resolve_arch
from graft.models.cifar import CIFAR10_MEAN, CIFAR10_STD, cifar_resnet18


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return create_model("cifar_resnet18", 10, pretrained=False)


def test_it_is_torchvision_resnet18_with_a_small_stem(built) -> None:
    model, spec, _ = built
    assert type(model).__module__ == "torchvision.models.resnet"
    conv = model.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10 and spec.head_names == ["fc"]
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # kuangliu's ResNet18 too
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 32, 32))
    model.train()
    assert out.shape == (2, 10) and seen["shape"] == (2, 512, 4, 4)


def test_names_resolve_to_the_graft_source(built) -> None:
    assert resolve_arch("cifar_resnet18") == ("graft", "cifar_resnet18")
    assert resolve_arch("graft:CIFAR_ResNet18") == ("graft", "cifar_resnet18")
    with pytest.raises(GraftError, match="cifar_resnet18"):
        resolve_arch("cifar_resnet81")  # suggests the close name
    with pytest.raises(GraftError, match="graft:NAME"):
        resolve_arch("nope:resnet18")
    with pytest.raises(GraftError):
        resolve_arch("graft:resnet18")  # torchvision's, not graft's
    _, spec, _ = built
    assert (spec.source, spec.arch, spec.build_kwargs) == ("graft", "cifar_resnet18", {})


def test_preprocessing_and_blocks(built) -> None:
    model, spec, pre = built
    assert (pre.input_size, pre.crop_pct, pre.interpolation, pre.resize_size) == (32, 1.0, "bilinear", 32)
    assert (pre.mean, pre.std) == (CIFAR10_MEAN, CIFAR10_STD)
    names = [name for name, _ in body_blocks(model, spec)]
    assert names == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


def test_pretrained_weights_do_not_exist() -> None:
    with pytest.raises(GraftError) as info:
        create_model("cifar_resnet18", 10)
    msg = str(info.value)
    assert "no published weights" in msg and "--no-pretrained" in msg and "--mode scratch" in msg
    assert "\n" not in msg


def test_listing_shows_it_without_weights() -> None:
    row = {
        "name": "cifar_resnet18",
        "source": "graft",
        "weights": "none",
        "size": None,
        "where": "no published weights",
    }
    assert row in list_architectures()
    assert list_architectures("cifar*") == [row]
    assert list_architectures("graft:*") == [row]
    assert not [r for r in list_architectures("timm:cifar*") if r["source"] == "graft"]


def test_a_weights_file_and_a_spec_round_trip(built, tmp_path: Path) -> None:
    torch.manual_seed(1)
    own = cifar_resnet18()  # an ImageNet-shaped (1000-class) state_dict of the same network
    save_file(own.state_dict(), str(tmp_path / "w.safetensors"))
    model, spec, _ = create_model("cifar_resnet18", 4, weights=tmp_path / "w.safetensors")
    assert torch.equal(model.layer4[1].conv2.weight, own.layer4[1].conv2.weight)
    assert torch.equal(model.conv1.weight, own.conv1.weight)
    assert model.fc.out_features == 4
    again = build_model(spec)
    again.load_state_dict(model.state_dict(), strict=True)
