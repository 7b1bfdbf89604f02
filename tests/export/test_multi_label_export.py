"""Exports of a multi-label model: sigmoid parity, the thresholds in the file, the same labels as
the Learner, and tampered thresholds refused."""

import itertools
import json

import numpy as np
import onnx
import pytest

from graft import GraftError, ImageData, Learner, load_learner
from graft.export.exporters import export
from graft.export.onnx_runtime import META_KEY, OnnxClassifier
from graft.inference.decision import Decision
from tests.conftest import make_image_folder


def separated_thresholds(probs: np.ndarray, at: tuple[float, ...]) -> tuple[float, ...]:
    """Per class, a threshold near quantile ``at[class]`` of its probabilities, in the widest gap
    there: images fall on both sides of it (low: extra labels; high: none), none within float
    noise of it."""
    out = []
    for p, q in zip(np.sort(probs, axis=0).T, at, strict=True):
        centre = round(q * (len(p) - 1))
        lo, hi = max(0, centre - 1), min(len(p) - 2, centre + 1)
        i = lo + int(np.argmax(p[lo + 1 : hi + 2] - p[lo : hi + 1]))
        out.append(float((p[i] + p[i + 1]) / 2))
    return tuple(out)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, size=(50, 40), seed=1)
    make_image_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, size=(50, 40), seed=2)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    learn.fit(
        mode="features",
        epochs=2,
        batch_size=8,
        lr=0.02,
        augment=False,
        workers=0,
        precision="fp32",
        log=lambda _: None,
    )
    return root, learn.save(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def multi(run):
    """The run's network read as one sigmoid per class, with thresholds that split val."""
    root, out = run
    learn = load_learner(out, device="cpu", precision="fp32")
    learn.decision = Decision(multi_label=True)
    _, probs = learn.predict_probs(root / "val", workers=0)
    # Thresholds under which some images get no label and some several (the hard cases).
    for at in itertools.product((0.2, 0.5, 0.9), repeat=len(learn.classes)):
        decision = Decision(multi_label=True, thresholds=separated_thresholds(probs, at), chosen_by="test")
        answers = decision.answers(probs)
        if [] in answers and max(map(len, answers)) > 1:
            break
    else:
        pytest.fail("no thresholds give both an empty and a multiple answer")
    learn.decision = decision
    return learn


@pytest.fixture(scope="module")
def onnx_file(run, multi, tmp_path_factory):
    root, _ = run
    return export(multi, "onnx", tmp_path_factory.mktemp("onnx") / "m.onnx", check=[root / "val"])


def test_onnx_export_outputs_sigmoids_and_carries_the_thresholds(run, multi, onnx_file):
    root, _ = run
    assert onnx_file.max_diff <= 1e-4 and onnx_file.agree == onnx_file.images == 9
    meta = json.loads(onnx.load(str(onnx_file.path)).metadata_props[0].value)
    # format 3: the run stores reference features, so the graph has the unknown score output too
    assert meta["format"] == 3 and meta["decision"] == multi.decision.to_dict(multi.classes)
    assert "sigmoid" in meta["output"]
    model = OnnxClassifier(onnx_file.path)
    assert model.decision == multi.decision
    paths, expected = multi.predict_probs(root / "val", workers=0)
    got_paths, got = model.predict_probs(root / "val")
    assert got_paths == paths
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert not np.allclose(got.sum(1), 1.0, atol=1e-3)  # sigmoids, not a softmax
    # The same answers: every class at or above its threshold (some images with none, some several).
    mine = [p.labels for p in multi.predict(root / "val", workers=0)]
    assert [p.labels for p in model.predict(root / "val")] == mine
    assert [] in mine and max(map(len, mine)) > 1


def test_torchscript_export_checks_the_sigmoids(run, multi, tmp_path):
    report = export(multi, "torchscript", tmp_path / "m.pt", check=[run[0] / "val"])
    assert report.max_diff <= 1e-4 and report.agree == report.images == 9


def test_a_plain_model_keeps_format_1_and_its_softmax(run, tmp_path):
    root, out = run
    learn = load_learner(out, device="cpu", precision="fp32")
    # A run saved before graft stored reference features (no unknown score, no temperature).
    learn.references, learn.decision = None, Decision()
    report = export(learn, "onnx", tmp_path / "plain.onnx", check=[root / "val"])
    meta = json.loads(onnx.load(str(report.path)).metadata_props[0].value)
    assert meta["format"] == 1 and meta["decision"] == {"multi_label": False, "activation": "softmax"}
    model = OnnxClassifier(report.path)
    assert model.decision == Decision()
    _, probs = model.predict_probs(root / "val")
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)


def _tampered(source, target, change) -> None:
    proto = onnx.load(str(source))
    entry = next(e for e in proto.metadata_props if e.key == META_KEY)
    meta = json.loads(entry.value)
    change(meta)
    entry.value = json.dumps(meta)
    onnx.save(proto, str(target))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m["decision"]["thresholds"].update(red=1.5), "threshold of 'red' is 1.5, outside"),
        (
            lambda m: m["decision"]["thresholds"].update(red="high"),
            "threshold of 'red' is 'high', not a number",
        ),
        (lambda m: m["decision"]["thresholds"].pop("red"), "one entry per class"),
        (lambda m: m["decision"]["thresholds"].update(cat=0.5), "unknown class 'cat'"),
        (lambda m: m["decision"].update(multi_label="yes"), "boolean 'multi_label'"),
        (lambda m: m.update(decision={"threshold": 0.3, "positive": "red"}), "a threshold needs two classes"),
        (lambda m: m.pop("decision"), "format 3 needs a decision"),
        (lambda m: m.update(format=4), "format must be a whole number from 1 to 3"),
    ],
)
def test_tampered_thresholds_are_refused_in_one_line(onnx_file, tmp_path, change, why):
    target = tmp_path / "tampered.onnx"
    _tampered(onnx_file.path, target, change)
    with pytest.raises(GraftError) as caught:
        OnnxClassifier(target)
    message = str(caught.value)
    assert why in message and "\n" not in message and str(target) in message
