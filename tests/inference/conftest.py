"""A small random-weight Lite0 at 40 px and seven generated images, for the inference tests."""

import dataclasses

import pytest
import torch

from graft.data.dataset import Sample
from graft.models import create_model
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def model_and_samples(tmp_path_factory):
    torch.manual_seed(0)
    model, spec, pre = create_model("tf_efficientnet_lite0", 3, pretrained=False)
    pre = dataclasses.replace(pre, input_size=40)
    model.eval()
    root = make_image_folder(tmp_path_factory.mktemp("images"), {"a": 3, "b": 2, "c": 2}, size=(64, 44))
    samples = [Sample(p, None) for p in sorted(root.rglob("*.png"))]
    return model, spec, pre, samples
