"""body_blocks: named blocks covering every non-head parameter exactly once."""

from __future__ import annotations

import pytest
from torch import nn

from graft.models import body_blocks, head_parameters


def _check_partition(model, spec) -> list[str]:
    blocks = body_blocks(model, spec)
    body_ids = [id(p) for _, params in blocks for p in params]
    head_ids = {id(p) for p in head_parameters(model, spec)}
    assert len(body_ids) == len(set(body_ids)), "a parameter appears in two blocks"
    assert not set(body_ids) & head_ids, "a head parameter is in the body"
    assert set(body_ids) | head_ids == {id(p) for p in model.parameters()}
    names = [name for name, _ in blocks]
    # Block names are submodule names (training puts frozen blocks in eval mode by name).
    for name in names:
        assert isinstance(model.get_submodule(name), nn.Module)
    return names


def test_resnet18_blocks(scratch) -> None:
    model, spec, _ = scratch("resnet18")
    assert _check_partition(model, spec) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


def test_lite0_blocks(scratch) -> None:
    model, spec, _ = scratch("timm:tf_efficientnet_lite0")
    expected = ["conv_stem", "bn1", *(f"blocks.{i}" for i in range(7)), "conv_head", "bn2"]
    assert _check_partition(model, spec) == expected


def test_densenet121_blocks_open_features(scratch) -> None:
    model, spec, _ = scratch("densenet121")
    names = _check_partition(model, spec)
    assert names[:4] == ["features.conv0", "features.norm0", "features.denseblock1", "features.transition1"]
    assert names[-1] == "features.norm5"


def test_inception_aux_body_is_split_from_its_head(scratch) -> None:
    model, spec, _ = scratch("inception_v3")
    names = _check_partition(model, spec)
    assert names[0] == "Conv2d_1a_3x3" and names[-1] == "Mixed_7c"
    assert "AuxLogits.conv0" in names and "AuxLogits.conv1" in names
    assert "AuxLogits" not in names


def test_vit_blocks_are_encoder_layers(scratch) -> None:
    model, spec, _ = scratch("vit_b_16")
    names = _check_partition(model, spec)
    assert names == ["conv_proj", *(f"encoder.layers.encoder_layer_{i}" for i in range(12)), "encoder.ln"]
    blocks = dict(body_blocks(model, spec))
    # Direct parameters of opened modules travel with the first child block.
    assert any(p is model.class_token for p in blocks["conv_proj"])
    assert any(p is model.encoder.pos_embedding for p in blocks["encoder.layers.encoder_layer_0"])


def test_timm_vit_blocks(scratch) -> None:
    model, spec, _ = scratch("timm:vit_tiny_patch16_224")
    names = _check_partition(model, spec)
    assert names == ["patch_embed", *(f"blocks.{i}" for i in range(12)), "norm"]


@pytest.mark.parametrize(
    "arch",
    ["alexnet", "squeezenet1_0", "mobilenet_v3_small", "efficientnet_b0", "googlenet", "timm:resnet18"],
)
def test_partition_other_families(scratch, arch: str) -> None:
    model, spec, _ = scratch(arch)
    assert len(_check_partition(model, spec)) >= 6


def test_mlp_head_is_not_in_the_body(scratch) -> None:
    model, spec, _ = scratch("mobilenet_v3_small", 16)
    names = _check_partition(model, spec)
    assert "classifier.0" in names  # the pretrained hidden Linear stays in the body
    assert not any(n.startswith("classifier.3") for n in names)
