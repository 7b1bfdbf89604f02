"""The activation cache of cached-prefix fine-tuning: rows read back exactly as stored, shards
visible only once complete, and one extraction that fills both caches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from graft.data.dataset import Sample
from graft.data.images import load_image
from graft.data.transforms import eval_transform
from graft.features.activations import ActivationCache, activation_key
from graft.features.cache import FeatureCache
from graft.features.extract import ActivationTap, body_key, extract_features
from graft.features.views import eval_view
from graft.models import create_model
from graft.models.split import default_top, prefix_split
from tests.conftest import make_image_folder

CPU = torch.device("cpu")


def test_rows_read_back_as_stored(tmp_path):
    cache = ActivationCache(tmp_path, activation_key("body", "blocks.5", (4, 3, 3)))
    rows = torch.randn(5, 4, 3, 3) * 100
    for dtype in ("float32", "bfloat16"):
        writer = cache.writer(dtype)
        writer.add([f"{dtype}:{i}" for i in range(3)], rows[:3])
        writer.add([f"{dtype}:{i}" for i in range(3, 5)], rows[3:])
        writer.close()
    reader = ActivationCache(tmp_path, cache.folder.name.removeprefix("prefix-")).reader()
    for dtype, tol in (("float32", 0.0), ("bfloat16", 4e-3)):
        got = reader.read([f"{dtype}:{i}" for i in (4, 0, 2)])
        torch.testing.assert_close(got, rows[[4, 0, 2]], rtol=tol, atol=0.0)
    reader.close()


def test_unfinished_or_damaged_shards_are_cache_misses(tmp_path):
    cache = ActivationCache(tmp_path, "k")
    writer = cache.writer("float32")
    writer.add(["a", "b"], torch.ones(2, 3))
    # Killed before close(): only a temporary file exists, and no shard is visible.
    assert ActivationCache(tmp_path, "k").missing(["a", "b"]) == ["a", "b"]
    writer.close()
    assert ActivationCache(tmp_path, "k").missing(["a", "b", "c"]) == ["c"]
    (data,) = cache.folder.glob("shard-*.bin")
    with open(data, "r+b") as f:
        f.truncate(4)  # a shard cut short is ignored, never half-read
    assert ActivationCache(tmp_path, "k").missing(["a", "b"]) == ["a", "b"]


def test_a_cache_that_cannot_be_written_warns_and_goes_on(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # the cache folder cannot be made under it (even by root)
    writer = ActivationCache(blocked, "k").writer("bfloat16")
    with pytest.warns(UserWarning, match="could not write the activation cache"):
        writer.add(["a"], torch.ones(1, 2))
    writer.add(["b"], torch.ones(1, 2))  # one warning, then the rows are dropped
    writer.close()
    assert ActivationCache(blocked, "k").missing(["a", "b"]) == ["a", "b"]


def test_one_extraction_fills_both_caches_with_the_prefix_output(tmp_path):
    model, spec, pre = create_model("tf_efficientnet_lite0", 3)
    model.eval()
    pre = dataclasses.replace(pre, input_size=64)
    root = make_image_folder(tmp_path / "images", {"red": 3, "blue": 2}, size=(48, 40), seed=3)
    samples = [Sample(p, 0) for p in sorted(root.rglob("*.png"))]
    split = prefix_split(model, spec, default_top(model, spec, 64), 64)
    acts = ActivationCache(tmp_path / "cache", "prefix")
    tap = ActivationTap(split.first, acts, ("float32",))
    features = FeatureCache(tmp_path / "cache", body_key(model, spec, pre, "fp32"))
    (first,) = extract_features(
        model, spec, pre, [(samples, [eval_view(pre)])], CPU, cache=features, workers=0, tap=tap
    )
    assert first.computed == len(samples) and len(first.keys) == len(samples)
    # What was stored is the input of the first trained block in the unfolded model.
    x = torch.stack([eval_transform(pre)(load_image(s.path)) for s in samples])
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(split.first).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    stored = ActivationCache(tmp_path / "cache", "prefix").reader().read([k[0] for k in first.keys])
    torch.testing.assert_close(stored, seen[0], rtol=1e-3, atol=1e-4)
    # Everything cached: nothing is computed again; a missing activation is recomputed alone.
    (again,) = extract_features(
        model, spec, pre, [(samples, [eval_view(pre)])], CPU, cache=features, workers=0, tap=tap
    )
    assert again.computed == 0
    other = ActivationTap(split.first, ActivationCache(tmp_path / "cache", "other"), ("float32",))
    (third,) = extract_features(
        model, spec, pre, [(samples, [eval_view(pre)])], CPU, cache=features, workers=0, tap=other
    )
    assert third.computed == len(samples)
    assert ActivationCache(tmp_path / "cache", "other").missing(first.keys[0]) == []
    torch.testing.assert_close(third.vectors, first.vectors)
