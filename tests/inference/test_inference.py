"""sample_probs gives each image the same probabilities however the files are grouped into calls."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from graft.data.dataset import Sample
from graft.inference.predict import sample_probs
from graft.models import create_model
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def model_and_samples(tmp_path_factory):
    torch.manual_seed(0)
    model, spec, pre = create_model("tf_efficientnet_lite0", 3, pretrained=False)
    pre = dataclasses.replace(pre, input_size=40)
    model.eval()
    root = make_image_folder(tmp_path_factory.mktemp("groups"), {"a": 7, "b": 6, "c": 6}, size=(64, 44))
    (root / "a" / "broken.png").write_bytes(b"not a png")
    samples = [Sample(p, None) for p in sorted(root.rglob("*.png"))]
    return model, spec, pre, samples


def _probs(model_and_samples, groups, tta=False):
    """Probabilities of the samples predicted in consecutive groups of the given sizes."""
    model, spec, pre, samples = model_and_samples
    out, kept, start = [], [], 0
    for size in groups:
        part = samples[start : start + size]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the broken file
            probs, idx = sample_probs(
                model, spec, pre, part, torch.device("cpu"), batch_size=8, workers=0, tta=tta
            )
        out.append(probs)
        kept += [start + int(i) for i in idx]
        start += size
    return np.concatenate(out), kept


@pytest.mark.parametrize("tta", [False, True])
def test_probabilities_are_bitwise_independent_of_the_grouping(model_and_samples, tta):
    n = len(model_and_samples[3])
    whole, kept = _probs(model_and_samples, [n], tta)
    assert len(kept) == n - 1  # the broken file is left out, so one batch of the whole is short
    for groups in ([1, n - 1], [9, 5, n - 14], [3] * (n // 3) + [n % 3]):
        parts, parts_kept = _probs(model_and_samples, [g for g in groups if g], tta)
        assert parts_kept == kept
        assert np.array_equal(parts, whole), (groups, np.abs(parts - whole).max())
