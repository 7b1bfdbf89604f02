"""Test-time augmentation: the views, and predictions that average them on both inference paths."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from graft import GraftError
from graft.data.images import load_image
from graft.data.transforms import eval_transform
from graft.features.views import tta_views
from graft.inference.predict import _Stacked, sample_probs


def test_views_centre_mirror_and_corners(model_and_samples):
    _, _, pre, samples = model_and_samples
    assert [v.key for v in tta_views(pre)] == ["eval", "tta-flip"]
    views = tta_views(pre, 4)
    assert [v.key for v in views] == ["eval", "tta-flip", "tta-tl", "tta-br"]
    with pytest.raises(GraftError, match="2 or 4 views"):
        tta_views(pre, 3)
    assert all(v.seed is None for v in views)  # deterministic: no random crops
    image = load_image(samples[0].path)
    center, flip, tl, br = (v.transform(image) for v in views)
    assert torch.equal(center, eval_transform(pre)(image))
    assert torch.equal(flip, torch.flip(center, dims=[-1]))
    assert center.shape == tl.shape == br.shape == (3, 40, 40)
    # A landscape image: the two end crops see its left and right ends, which differ from the centre.
    assert not torch.equal(tl, center) and not torch.equal(br, center) and not torch.equal(tl, br)


def test_corner_crops_take_the_ends_of_the_resized_image(model_and_samples):
    _, _, pre, _ = model_and_samples
    # Left half black, right half white: the top-left crop is darker than the bottom-right one.
    arr = np.zeros((46, 92, 3), dtype=np.uint8)
    arr[:, 46:] = 255
    image = Image.fromarray(arr)
    _, _, tl, br = (v.transform(image) for v in tta_views(pre, 4))
    assert tl.mean() < -0.5 < 0.5 < br.mean()


@pytest.mark.parametrize("tta", [True, 4])
def test_tta_probabilities_are_the_mean_over_views(model_and_samples, tta):
    model, spec, pre, samples = model_and_samples
    probs, kept = sample_probs(model, spec, pre, samples, torch.device("cpu"), tta=tta, workers=0)
    assert kept.tolist() == list(range(len(samples)))
    views = tta_views(pre, 2 if tta is True else tta)
    expected = []
    with torch.inference_mode():
        for s in samples:
            image = load_image(s.path, pre.resize_size)
            x = torch.stack([v.transform(image) for v in views])
            expected.append(torch.softmax(model(x).double(), 1).mean(0).numpy())
    np.testing.assert_allclose(probs, np.stack(expected), atol=1e-5)
    plain, _ = sample_probs(model, spec, pre, samples, torch.device("cpu"), workers=0)
    assert not np.allclose(plain, probs, atol=1e-6)  # the views do change the answer


def test_cached_and_image_paths_agree_with_tta(model_and_samples):
    model, spec, pre, samples = model_and_samples
    direct, _ = sample_probs(model, spec, pre, samples, torch.device("cpu"), tta=True, workers=0)
    for _ in range(2):  # computed, then read back from the feature cache
        cached, _ = sample_probs(
            model, spec, pre, samples, torch.device("cpu"), tta=True, use_cache=True, workers=0
        )
        np.testing.assert_allclose(cached, direct, atol=1e-5)
    direct4, _ = sample_probs(model, spec, pre, samples, torch.device("cpu"), tta=4, workers=0)
    for _ in range(2):
        cached, _ = sample_probs(
            model, spec, pre, samples, torch.device("cpu"), tta=4, use_cache=True, workers=0
        )
        np.testing.assert_allclose(cached, direct4, atol=1e-5)
    assert not np.allclose(direct4, direct, atol=1e-6)


def test_views_survive_pickling_and_worker_processes(model_and_samples):
    model, spec, pre, samples = model_and_samples
    # Loader workers started with "spawn" (macOS, Windows) pickle the transform.
    restored = pickle.loads(pickle.dumps(_Stacked(tta_views(pre, 4))))
    image = load_image(samples[0].path)
    assert torch.equal(restored(image), _Stacked(tta_views(pre, 4))(image))
    in_process, _ = sample_probs(model, spec, pre, samples, torch.device("cpu"), tta=True, workers=0)
    in_worker, _ = sample_probs(model, spec, pre, samples, torch.device("cpu"), tta=True, workers=1)
    np.testing.assert_allclose(in_worker, in_process, atol=1e-6)


_STRIP_SCRIPT = """
import dataclasses, resource, sys
import numpy as np, torch
from PIL import Image
from graft.data.dataset import Sample
from graft.inference.predict import sample_probs
from graft.models import create_model

model, spec, pre = create_model("tf_efficientnet_lite0", 2, pretrained=False)
pre = dataclasses.replace(pre, input_size=40)
model.eval()
normal, strip = sys.argv[1], sys.argv[2]
sample_probs(model, spec, pre, [Sample(normal, None)], torch.device("cpu"), tta=4, workers=0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
probs, kept = sample_probs(model, spec, pre, [Sample(strip, None)], torch.device("cpu"), tta=4, workers=0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(kept), round(float(probs.sum()), 6), (after - before) // 1024)
"""


def test_tta_on_a_tiny_file_of_a_long_strip_stays_small(tmp_path):
    """Issue 18: a 111-byte 10000x1 PNG with 4 TTA views peaked at 3.5 GB (each view resized its
    1-px side to the model's size); a 40000x1 one ended in a MemoryError. Peak memory now grows
    by a few MB at most (measured in a fresh process: ru_maxrss before and after)."""
    import subprocess
    import sys

    Image.new("RGB", (64, 48), (120, 30, 30)).save(tmp_path / "normal.png")
    Image.new("RGB", (40000, 1), (30, 120, 30)).save(tmp_path / "strip.png")
    assert (tmp_path / "strip.png").stat().st_size < 1000
    out = subprocess.run(
        [sys.executable, "-c", _STRIP_SCRIPT, str(tmp_path / "normal.png"), str(tmp_path / "strip.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    kept, total, grown_mb = out.stdout.split()
    assert kept == "1" and float(total) == pytest.approx(1.0)
    assert int(grown_mb) < 150, f"peak memory grew by {grown_mb} MB for one 40000x1 image"
