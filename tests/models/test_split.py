"""Cutting a body into a cached prefix and a trained top: the default top per family, and a
suffix that computes exactly what the whole model computes."""

from __future__ import annotations

import pytest
import torch

from graft.models import body_blocks, create_model
from graft.models.split import Suffix, default_top, prefix_split


def _built(arch: str):
    torch.manual_seed(0)
    model, spec, pre = create_model(arch, 3, pretrained=False)
    return model.eval(), spec, pre


@pytest.mark.parametrize(
    ("arch", "top"),
    [
        ("tf_efficientnet_lite0", ["blocks.5", "blocks.6", "conv_head", "bn2"]),  # feature_info
        ("timm:resnet18", ["layer4"]),
        ("torchvision:resnet18", ["layer4"]),  # no feature_info: traced output sizes
        ("torchvision:efficientnet_b0", ["features.6", "features.7", "features.8"]),
        ("convnext_atto", ["stages.3", "head.norm"]),
        ("vit_tiny_patch16_224", ["blocks.10", "blocks.11", "norm"]),  # isotropic: the last blocks
    ],
)
def test_default_top_is_the_last_stage(arch, top):
    model, spec, pre = _built(arch)
    assert default_top(model, spec, pre.input_size) == top


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "torchvision:resnet18", "vit_tiny_patch16_224"])
def test_suffix_of_cached_activations_gives_the_models_logits(arch):
    model, spec, pre = _built(arch)
    split = prefix_split(model, spec, default_top(model, spec, pre.input_size), pre.input_size)
    assert split is not None
    x = torch.randn(3, 3, pre.input_size, pre.input_size)
    before = {n: model.get_submodule(n) for n in split.prefix}
    kept: list[torch.Tensor] = []
    hook = model.get_submodule(split.first).register_forward_pre_hook(lambda m, a: kept.append(a[0]))
    with torch.no_grad():
        full = model(x)
    hook.remove()
    assert tuple(kept[0].shape[1:]) == split.shape
    with torch.no_grad():
        top = Suffix(model, split)(kept[0])
    torch.testing.assert_close(top, full, rtol=1e-4, atol=1e-5)
    # The prefix modules are back in place: the whole model still takes images.
    with torch.no_grad():
        torch.testing.assert_close(model(x), full)
    assert all(model.get_submodule(n) is module for n, module in before.items())


def test_training_the_suffix_leaves_the_prefix_without_gradients():
    model, spec, pre = _built("tf_efficientnet_lite0")
    top = default_top(model, spec, pre.input_size)
    split = prefix_split(model, spec, top, pre.input_size)
    acts = torch.randn(2, *split.shape)
    model.train()
    Suffix(model, split)(acts).sum().backward()
    grads = {name: any(p.grad is not None for p in params) for name, params in body_blocks(model, spec)}
    assert [name for name, has in grads.items() if has] == top


def test_models_whose_forward_works_outside_its_modules_are_not_cut():
    # inception's input transform slices channels before its first module: a cut would be wrong.
    model, spec, pre = _built("torchvision:inception_v3")
    assert prefix_split(model, spec, default_top(model, spec, pre.input_size), pre.input_size) is None


def test_nothing_to_cut_when_every_block_trains_or_the_choice_has_gaps():
    model, spec, pre = _built("torchvision:resnet18")
    names = [n for n, _ in body_blocks(model, spec)]
    assert prefix_split(model, spec, names, pre.input_size) is None
    assert prefix_split(model, spec, ["layer2", "layer4"], pre.input_size) is not None  # cut before layer2
    assert prefix_split(model, spec, [], pre.input_size) is None
