"""Head replacement across model families: real models, real forward passes where cheap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graft.infrastructure.errors import GraftError
from graft.models import ModelSpec, create_model, head_parameters

N = 3

# (arch, expected head names); all are cheap enough to forward at their input size.
SMALL = [
    ("resnet18", ["fc"]),
    ("squeezenet1_0", ["classifier.1"]),
    ("mobilenet_v3_small", ["classifier.3"]),
    ("efficientnet_b0", ["classifier.1"]),
    ("googlenet", ["fc"]),
    ("timm:tf_efficientnet_lite0", ["classifier"]),
    ("timm:resnet18", ["fc"]),
]

# (arch, head name, in_features); big models: check the new module, no forward.
HEAVY = [
    ("alexnet", "classifier.6", 4096),
    ("vgg11_bn", "classifier.6", 4096),
    ("densenet121", "classifier", 1024),
    ("convnext_tiny", "classifier.2", 768),
    ("vit_b_16", "heads.head", 768),
]


def _forward(model: nn.Module, size: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(1, 3, size, size))


@pytest.mark.parametrize(("arch", "heads"), SMALL)
def test_small_models_forward_to_num_classes(scratch, arch: str, heads: list[str]) -> None:
    model, spec, pre = scratch(arch)
    assert spec.head_names == heads
    assert spec.num_classes == N
    assert _forward(model, pre.input_size).shape == (1, N)


@pytest.mark.parametrize(("arch", "head", "in_features"), HEAVY)
def test_heavy_models_get_a_fresh_linear(scratch, arch: str, head: str, in_features: int) -> None:
    model, spec, _ = scratch(arch)
    assert spec.head_names == [head]
    layer = model.get_submodule(head)
    assert isinstance(layer, nn.Linear)
    assert (layer.in_features, layer.out_features) == (in_features, N)
    # No other Linear in the model still predicts the 1000 ImageNet classes.
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in model.modules())


def test_squeezenet_head_is_a_1x1_conv_and_num_classes_follows(scratch) -> None:
    model, _, _ = scratch("squeezenet1_0")
    conv = model.get_submodule("classifier.1")
    assert isinstance(conv, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (512, N, (1, 1))
    assert model.num_classes == N


def test_inception_replaces_both_heads_and_trains_with_aux_logits() -> None:
    # Own instance: the train-mode forward updates BatchNorm statistics.
    model, spec, pre = create_model("inception_v3", N, pretrained=False)
    assert spec.head_names == ["AuxLogits.fc", "fc"]
    assert spec.build_kwargs == {"transform_input": True, "aux_logits": True}
    assert (pre.input_size, pre.resize_size) == (299, 342)
    assert model.fc.out_features == N and model.AuxLogits.fc.out_features == N
    model.train()
    out = model(torch.randn(2, 3, 299, 299))  # batch 2: BatchNorm needs >1 value per channel
    assert out.logits.shape == (2, N) and out.aux_logits.shape == (2, N)
    assert _forward(model, 299).shape == (1, N)


def test_googlenet_has_no_aux_heads(scratch) -> None:
    model, spec, _ = scratch("googlenet")
    assert model.aux1 is None and model.aux2 is None and not model.aux_logits
    assert spec.build_kwargs == {"transform_input": True, "aux_logits": False}


def test_mlp_head_structure_and_output() -> None:
    model, spec, pre = create_model("resnet18", N, pretrained=False, head_hidden=64, head_dropout=0.3)
    head = model.fc
    assert isinstance(head, nn.Sequential)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (512, 64)
    assert (head[3].in_features, head[3].out_features) == (64, N)
    assert head[2].p == pytest.approx(0.3)
    assert (spec.head_hidden, spec.head_dropout) == (64, 0.3)
    assert _forward(model, pre.input_size).shape == (1, N)
    assert {id(p) for p in head_parameters(model, spec)} == {id(p) for p in head.parameters()}


def test_mlp_head_on_timm_model(scratch) -> None:
    model, _, pre = scratch("timm:tf_efficientnet_lite0", 32)
    head = model.get_submodule("classifier")
    assert isinstance(head, nn.Sequential) and head[-1].out_features == N
    assert _forward(model, pre.input_size).shape == (1, N)


def test_inception_mlp_keeps_plain_aux_head(scratch) -> None:
    model, _, _ = scratch("inception_v3", 16)
    assert isinstance(model.fc, nn.Sequential) and model.fc[-1].out_features == N
    assert isinstance(model.AuxLogits.fc, nn.Linear) and model.AuxLogits.fc.out_features == N


def test_squeezenet_mlp_head_is_convolutional(scratch) -> None:
    model, _, pre = scratch("squeezenet1_0", 16)
    head = model.get_submodule("classifier.1")
    assert [type(m) for m in head] == [nn.Conv2d, nn.ReLU, nn.Dropout, nn.Conv2d]
    assert head[0].in_channels == 512 and head[3].out_channels == N
    assert _forward(model, pre.input_size).shape == (1, N)


def test_head_parameters_of_inception_cover_both_heads(scratch) -> None:
    model, spec, _ = scratch("inception_v3")
    ids = {id(p) for p in head_parameters(model, spec)}
    expected = {id(p) for name in ("fc", "AuxLogits.fc") for p in model.get_submodule(name).parameters()}
    assert ids == expected


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 0}, {"num_classes": 3, "head_hidden": 0}, {"num_classes": 3, "head_dropout": 1.0}],
)
def test_bad_head_arguments_are_graft_errors(kwargs: dict) -> None:
    with pytest.raises(GraftError):
        create_model("resnet18", pretrained=False, **kwargs)


def test_spec_round_trips_through_a_dict(scratch) -> None:
    _, spec, _ = scratch("inception_v3", 16)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
