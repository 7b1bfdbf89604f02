"""Frozen-body features on a real small model: cached once, exact, invalidated by what matters."""

import copy
import dataclasses

import pytest
import torch

from graft import ImageData, Learner, load_learner
from graft.data.dataset import Sample
from graft.data.images import load_image
from graft.data.transforms import Augmentation, eval_transform
from graft.features.cache import FeatureCache
from graft.features.extract import body_key, extract_features, feature_head, pre_head_dropout
from graft.features.views import augmented_views, eval_view
from graft.infrastructure.config import AUTO_UNFREEZE_BELOW
from graft.models import create_model
from tests.conftest import make_image_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lite0():
    """tf_efficientnet_lite0 (bundled ImageNet weights) with a 3-class head, at 64 px.

    Tests that change weights work on a deep copy."""
    model, spec, pre = create_model("tf_efficientnet_lite0", 3)
    pre = dataclasses.replace(pre, input_size=64)
    return model.eval(), spec, pre


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = make_image_folder(
        tmp_path_factory.mktemp("images"), {"red": 3, "green": 2, "blue": 2}, size=(48, 40), seed=7
    )
    paths = sorted(root.rglob("*.png"))
    return [Sample(p, i % 3) for i, p in enumerate(paths)]


def extract(model, spec, pre, samples, views, cache, **kw):
    (features,) = extract_features(model, spec, pre, [(samples, views)], CPU, cache=cache, workers=0, **kw)
    return features


def test_the_second_extraction_reads_everything_from_the_cache(lite0, samples, tmp_path):
    model, spec, pre = lite0
    key = body_key(model, spec, pre, "fp32")
    first = extract(model, spec, pre, samples, [eval_view(pre)], FeatureCache(tmp_path, key))
    n = len(samples)
    assert first.vectors.shape == (n, 1, 1280) and first.vectors.dtype == torch.float32
    assert first.computed == n and first.failed == [] and first.index.tolist() == list(range(n))

    for cache in (FeatureCache(tmp_path, key), FeatureCache(tmp_path, key)):
        again = extract(model, spec, pre, samples, [eval_view(pre)], cache)
        assert again.computed == 0
        assert torch.equal(again.vectors, first.vectors)
        assert again.index.tolist() == first.index.tolist()


def test_vectors_are_what_the_unfolded_head_receives(lite0, samples, tmp_path):
    model, spec, pre = lite0
    features = extract(model, spec, pre, samples, [eval_view(pre)], cache=None)

    transform = eval_transform(pre)
    x = torch.stack([transform(load_image(s.path, pre.resize_size)) for s in samples])
    seen = []
    head = model.get_submodule(spec.head_names[0])
    hook = head.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        hook.remove()
    want = seen[0]
    got = features.vectors[:, 0]
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert scale > 0.1
    assert (got - want).abs().max().item() <= 1e-4 * scale
    # Different images give different vectors (the comparison above is not trivially true).
    assert not torch.allclose(got[0], got[-1], atol=1e-2)


def test_feature_head_and_its_dropout(lite0):
    model, spec, _ = lite0
    head = feature_head(model, spec)
    assert head is model.classifier and isinstance(head, torch.nn.Linear)
    assert pre_head_dropout(model, spec) == model.drop_rate  # timm applies its own drop_rate

    # torchvision: the nn.Dropout just before the head's Linear.
    mobile, mobile_spec, _ = create_model("mobilenet_v2", 3, pretrained=False)
    assert feature_head(mobile, mobile_spec) is mobile.classifier[1]
    assert pre_head_dropout(mobile, mobile_spec) == pytest.approx(0.2)
    # An MLP head starts with a Linear too; resnet has no dropout before it.
    resnet, resnet_spec, _ = create_model("resnet18", 3, pretrained=False, head_hidden=16)
    assert feature_head(resnet, resnet_spec) is resnet.fc
    assert pre_head_dropout(resnet, resnet_spec) == 0.0


def test_body_key_follows_body_weights_and_preprocessing_not_the_head(lite0):
    model, spec, pre = lite0
    key = body_key(model, spec, pre, "fp32")
    assert body_key(model, spec, pre, "fp32") == key
    assert body_key(model, spec, pre, "bf16") != key

    assert body_key(model, spec, dataclasses.replace(pre, input_size=96), "fp32") != key
    assert body_key(model, spec, dataclasses.replace(pre, mean=(0.4, 0.5, 0.5)), "fp32") != key
    assert body_key(model, spec, dataclasses.replace(pre, interpolation="bilinear"), "fp32") != key

    head_changed = copy.deepcopy(model)
    with torch.no_grad():
        head_changed.classifier.weight.add_(0.5)
        head_changed.classifier.bias.add_(0.5)
    assert body_key(head_changed, spec, pre, "fp32") == key

    body_changed = copy.deepcopy(model)
    with torch.no_grad():
        body_changed.conv_stem.weight[0, 0, 0, 0] += 1e-3
    assert body_key(body_changed, spec, pre, "fp32") != key

    stats_changed = copy.deepcopy(model)
    stats_changed.bn1.running_mean[0] += 1e-3  # buffers are body state too
    assert body_key(stats_changed, spec, pre, "fp32") != key


def test_a_changed_body_computes_everything_again(lite0, samples, tmp_path):
    model, spec, pre = lite0
    old = extract(
        model,
        spec,
        pre,
        samples,
        [eval_view(pre)],
        FeatureCache(tmp_path, body_key(model, spec, pre, "fp32")),
    )
    assert old.computed == len(samples)

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.conv_stem.weight[0, 0, 0, 0] += 1e-3
    new = extract(
        changed,
        spec,
        pre,
        samples,
        [eval_view(pre)],
        FeatureCache(tmp_path, body_key(changed, spec, pre, "fp32")),
    )
    assert new.computed == len(samples)
    assert not torch.equal(new.vectors, old.vectors)
    assert len(list(tmp_path.iterdir())) == 2  # one folder per body key


def test_seeded_augmented_views_are_distinct_and_reproducible(lite0, samples, tmp_path):
    model, spec, pre = lite0
    views = augmented_views(pre, Augmentation(), 2, seed=0)
    assert len(views) == 2 and views[0].key != views[1].key
    assert augmented_views(pre, Augmentation(enabled=False), 2, seed=0) == []
    assert augmented_views(pre, Augmentation(rotate=5.0), 1, seed=0)[0].key != views[0].key

    key = body_key(model, spec, pre, "fp32")
    first = extract(model, spec, pre, samples, views, FeatureCache(tmp_path / "a", key))
    n = len(samples)
    assert first.vectors.shape == (n, 2, 1280) and first.computed == 2 * n
    for v in first.vectors:
        assert not torch.allclose(v[0], v[1], atol=1e-3)

    # A fresh cache recomputes the same views: the seeded crops, flips and jitter repeat exactly.
    fresh = extract(model, spec, pre, samples, views, FeatureCache(tmp_path / "b", key))
    assert fresh.computed == 2 * n
    assert torch.equal(fresh.vectors, first.vectors)
    # ... in worker processes too, one image per batch (so only float rounding may differ).
    (workers,) = extract_features(
        model,
        spec,
        pre,
        [(samples, views)],
        CPU,
        cache=FeatureCache(tmp_path / "c", key),
        batch_size=2,
        workers=2,
    )
    assert workers.computed == 2 * n
    assert (workers.vectors - first.vectors).abs().max() <= 1e-4 * first.vectors.abs().max()

    # Another seed gives other views.
    other = extract(model, spec, pre, samples, augmented_views(pre, Augmentation(), 2, seed=1), cache=None)
    assert not torch.allclose(other.vectors, first.vectors, atol=1e-3)


def test_undecodable_and_missing_files_are_failed_not_indexed(lite0, samples, tmp_path):
    model, spec, pre = lite0
    broken = tmp_path / "x.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg" * 20)
    missing = tmp_path / "gone.png"
    mixed = [samples[0], Sample(broken, 0), samples[1], Sample(missing, 1), samples[2]]
    cache = FeatureCache(tmp_path / "cache", body_key(model, spec, pre, "fp32"))

    for computed in (3, 0):  # the second time, the good images come from the cache
        features = extract(model, spec, pre, mixed, [eval_view(pre)], cache)
        assert features.failed == [1, 3]
        assert features.index.tolist() == [0, 2, 4]
        assert features.vectors.shape == (3, 1, 1280)
        assert features.computed == computed


def test_several_jobs_share_one_pass(lite0, samples, tmp_path):
    model, spec, pre = lite0
    cache = FeatureCache(tmp_path, body_key(model, spec, pre, "fp32"))
    views = augmented_views(pre, Augmentation(), 2, seed=0)
    train, val = extract_features(
        model, spec, pre, [(samples[:4], views), (samples[4:], [eval_view(pre)])], CPU, cache=cache, workers=0
    )
    assert train.vectors.shape[:2] == (4, 2) and train.computed == 8
    assert val.vectors.shape[:2] == (len(samples) - 4, 1) and val.computed == len(samples) - 4
    alone = extract(
        model, spec, pre, samples[4:], [eval_view(pre)], FeatureCache(tmp_path, cache.folder.name)
    )
    assert alone.computed == 0
    assert torch.equal(alone.vectors, val.vectors)


# --- through the Learner ------------------------------------------------------------------


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, seed=1)
    make_image_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, seed=2)
    return root


def test_a_second_run_trains_on_cached_features_and_repeats(colors, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    data = ImageData.from_folder(colors)
    runs = []
    for _ in range(2):
        lines = []
        learn = Learner(data, "tf_efficientnet_lite0", input_size=64)
        history = learn.fit(mode="features", epochs=4, batch_size=8, workers=0, log=lines.append)
        runs.append((learn, history, lines))
    (_, first, first_log), (learn, second, second_log) = runs
    assert any("0 from the cache, 33 computed" in line for line in first_log), first_log
    assert any("33 from the cache, 0 computed" in line for line in second_log), second_log
    assert len(first) == len(second) == 4
    assert [r["val_acc"] for r in first] == [r["val_acc"] for r in second]
    assert [r["train_loss"] for r in first] == [r["train_loss"] for r in second]

    run = learn.save(tmp_path / "run")
    loaded = load_learner(run, device="cpu")
    result = loaded.evaluate(colors, split="val")
    assert result.n == 9
    assert result.accuracy == learn.metrics["val_acc"]
    assert result.loss == pytest.approx(learn.metrics["val_loss"], rel=1e-4)
    # Without the cache, the network itself agrees with what training validated on.
    loaded.config = dataclasses.replace(loaded.config, cache_features=False)
    direct = loaded.evaluate(colors, split="val")
    assert direct.accuracy == learn.metrics["val_acc"]
    assert direct.loss == pytest.approx(learn.metrics["val_loss"], rel=1e-3)


def test_finetune_skips_unfreezing_when_the_frozen_head_is_good_enough(colors):
    data = ImageData.from_folder(colors)
    learn = Learner(data, "tf_efficientnet_lite0", input_size=64)
    lines = []
    history = learn.fit(mode="finetune", batch_size=8, lr=0.02, workers=0, log=lines.append)
    ran = learn.resolved_config
    assert ran.epochs == 3 and ran.unfreeze_below == AUTO_UNFREEZE_BELOW
    assert learn.config.epochs is None  # the request stays as asked
    assert [r["phase"] for r in history] == ["frozen"] * ran.freeze_epochs
    assert max(r["val_acc"] for r in history) >= AUTO_UNFREEZE_BELOW
    assert "--unfreeze-below" in learn.metrics["skipped"]
    assert any(line.startswith("skipped the unfrozen epochs") for line in lines)

    explicit = Learner(data, "tf_efficientnet_lite0", input_size=64)
    history = explicit.fit(
        mode="finetune", freeze_epochs=2, epochs=1, batch_size=8, lr=0.02, workers=0, log=lambda _: None
    )
    assert [r["phase"] for r in history] == ["frozen", "frozen", "unfrozen"]
    assert "skipped" not in explicit.metrics

    # Asking a learner whose last fit skipped unfreezing for epochs runs them too.
    again = learn.fit(freeze_epochs=1, epochs=1, batch_size=8, workers=0, log=lambda _: None)
    assert [r["phase"] for r in again] == ["frozen", "unfrozen"]
