"""build_model(spec) rebuilds exactly the structure create_model returned."""

from __future__ import annotations

import pytest
import torch

from graft.models import ModelSpec, build_model, create_model

CASES = [
    ("resnet18", None, True),
    ("squeezenet1_0", 16, True),
    ("googlenet", None, True),
    ("timm:tf_efficientnet_lite0", 32, True),
    ("timm:vit_tiny_patch16_224", None, False),
    ("inception_v3", 16, False),
    ("vit_b_16", None, False),
]


@pytest.mark.parametrize(("arch", "hidden", "forward"), CASES)
def test_build_model_round_trip(scratch, arch: str, hidden: int | None, forward: bool) -> None:
    if arch.endswith("lite0"):  # the one family with offline weights here
        model, spec, pre = create_model(arch, 3, head_hidden=hidden)
    else:
        model, spec, pre = scratch(arch, hidden)
    spec = ModelSpec.from_dict(spec.to_dict())  # as read back from a bundle
    rebuilt = build_model(spec)
    ref_sd, new_sd = model.state_dict(), rebuilt.state_dict()
    assert list(ref_sd) == list(new_sd)
    assert all(ref_sd[k].shape == new_sd[k].shape for k in ref_sd)
    rebuilt.load_state_dict(ref_sd, strict=True)
    if forward:
        model.eval()
        rebuilt.eval()
        x = torch.randn(2, 3, pre.input_size, pre.input_size)
        with torch.no_grad():
            assert torch.equal(model(x), rebuilt(x))
