"""The unknown answer: the decision's temperature and reject rule as stored and read back, an older
run without reference features, ``--reject``, and the score itself (a really trained tiny run)."""

import csv
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from graft import GraftError, load_learner
from graft.cli.main import main
from graft.inference.decision import Decision, Reject
from graft.inference.ood import REFERENCES_KEY, accept_threshold, choose_references
from graft.infrastructure.fileio import sha256_file
from tests.conftest import tiny_run

CLASSES = ["green", "red"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained for seconds on red and green images (22 val images: enough for a temperature),
    and a folder of outside images: noise and stripes."""
    root = tmp_path_factory.mktemp("unknown")
    outside = write_outside(root / "outside")
    learn = tiny_run(root, {"red": 10, "green": 10}, {"red": 11, "green": 11})
    # The val images of these colours are (all but) all right, too few errors to fit a temperature
    # on, so none is kept; one is set here, so that every path is checked to apply it.
    assert learn.decision.temperature == 1.0
    learn.decision = dataclasses.replace(learn.decision, temperature=1.7)
    return root, learn.save(root / "run"), outside


@pytest.fixture(scope="module")
def learn(run):
    """The run loaded once (its inference copy is built on the first prediction and kept)."""
    return load_learner(run[1], device="cpu", precision="fp32")


def write_outside(folder):
    """Four noise images and two striped ones: nothing like a plain red or green image."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"noise_{i}.png")
    for i in range(2):
        a = np.zeros((40, 50, 3), np.uint8)
        a[:, i::4] = 255
        a[::5] = (30, 30, 220)
        Image.fromarray(a).save(folder / f"stripes_{i}.png")
    return folder


def edit_meta(run_dir, edit):
    meta = json.loads((run_dir / "graft.json").read_text())
    edit(meta)
    (run_dir / "graft.json").write_text(json.dumps(meta))


def one_error_line(err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("graft: error: ") and pattern in lines[0], err


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# The decision record.


@pytest.mark.parametrize(
    "decision",
    [
        Decision(temperature=0.25, reject=Reject(0.125, "unknown", "accepts 95% of val (22 images)")),
        Decision(
            thresholds=(0.3,), positive=0, chosen_by="max F1", temperature=2.5, reject=Reject(1.5, "other")
        ),
        Decision(reject=Reject(0.0)),
        Decision(temperature=0.7),
    ],
)
def test_decision_round_trips_with_temperature_and_reject(decision):
    d = decision.to_dict(CLASSES)
    assert Decision.from_dict(json.loads(json.dumps(d)), CLASSES) == decision


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["reject"].update(threshold="abc"), "rejection threshold is 'abc'"),
        (lambda d: d["reject"].update(threshold=-0.1), "rejection threshold is -0.1"),
        (lambda d: d["reject"].update(threshold=3.0), "rejection threshold is 3.0"),
        (lambda d: d["reject"].update(threshold=float("nan")), "rejection threshold is nan"),
        (lambda d: d["reject"].update(threshold=float("inf")), "rejection threshold is inf"),
        (lambda d: d["reject"].update(threshold=True), "rejection threshold is True"),
        (lambda d: d["reject"].pop("threshold"), "rejection threshold is None"),
        (lambda d: d.update(temperature=0), "temperature is 0"),
        (lambda d: d.update(temperature=1e6), "temperature is 1000000.0"),
        (lambda d: d.update(temperature="1.0"), "temperature is '1.0'"),
        (lambda d: d.update(temperature=float("nan")), "temperature is nan"),
        (lambda d: d["reject"].update(label="red"), "rejection label 'red'"),
        (lambda d: d["reject"].update(label="  "), "rejection label"),
        (lambda d: d["reject"].update(label=7), "rejection label 7"),
        (lambda d: d["reject"].update(chosen_by=[]), "'chosen_by' is not text"),
        (lambda d: d.update(reject=0.3), "'reject' is not an object"),
    ],
)
def test_a_tampered_decision_is_one_line(edit, message):
    d = Decision(temperature=0.5, reject=Reject(0.2)).to_dict(CLASSES)
    edit(d)
    with pytest.raises(GraftError, match="modified or damaged") as info:
        Decision.from_dict(d, CLASSES, where="run/graft.json")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_multi_label_decision_has_no_temperature():
    with pytest.raises(GraftError, match="multi-label model has no temperature"):
        Decision.from_dict({"multi_label": True, "temperature": 2.0}, CLASSES)


def test_the_trained_run_stores_its_temperature_reject_rule_and_references(run):
    _, run_dir, _ = run
    meta = json.loads((run_dir / "graft.json").read_text())
    decision = meta["decision"]
    assert decision["temperature"] == 1.7
    assert 0 <= decision["reject"]["threshold"] <= 2 and decision["reject"]["label"] == "unknown"
    assert decision["reject"]["chosen_by"] == "accepts 95% of val (22 images)"
    refs = load_file(str(run_dir / "model.safetensors"))[REFERENCES_KEY]
    assert refs.shape[0] == 20 and refs.dtype == torch.float16  # every training image, as a unit vector
    torch.testing.assert_close(refs.float().norm(dim=1), torch.ones(20), atol=1e-3, rtol=0)
    learn = load_learner(run_dir, device="cpu")
    assert learn.scored and learn.decision == Decision.from_dict(decision, learn.classes)


def test_a_tampered_threshold_in_graft_json_is_one_line_exit_2(run, tmp_path, capsys):
    root, run_dir, _ = run
    image = str(next((root / "val" / "red").iterdir()))
    for value, said in (("abc", "'abc'"), (-1, "-1"), (5.0, "5.0")):
        copy = tmp_path / f"run_{said}"
        shutil.copytree(run_dir, copy)
        edit_meta(copy, lambda m, v=value: m["decision"]["reject"].update(threshold=v))
        assert main(["predict", str(copy), image]) == 2
        out, err = capsys.readouterr()
        one_error_line(err, f"the rejection threshold is {said}, not a distance in [0, 2]")
        assert out == "" and "graft.json" in err
    copy = tmp_path / "run_label"
    shutil.copytree(run_dir, copy)
    edit_meta(copy, lambda m: m["decision"]["reject"].update(label="green"))
    with pytest.raises(GraftError, match="rejection label 'green'"):
        load_learner(copy, device="cpu")


# An older run: no reference features.


@pytest.fixture(scope="module")
def old_run(run, tmp_path_factory):
    """The run as an older graft saved it: no reference features, no temperature, no reject rule."""
    _, run_dir, _ = run
    old = tmp_path_factory.mktemp("old") / "run"
    shutil.copytree(run_dir, old)
    weights = old / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors[REFERENCES_KEY]
    save_file(tensors, str(weights), metadata={"format": "pt"})

    def older(meta):
        meta["weights_sha256"] = sha256_file(weights)
        for key in ("reject", "temperature"):
            meta["decision"].pop(key, None)

    edit_meta(old, older)
    return old


def test_an_older_run_predicts_without_scores_and_warns(run, old_run):
    root, _, outside = run
    learn = load_learner(old_run, device="cpu")
    assert not learn.scored and learn.references is None and learn.decision.reject is None
    with pytest.warns(UserWarning, match="no reference features"):
        preds = learn.predict([root / "val", outside])
    assert len(preds) == 28
    assert all(p.score is None and p.unknown == "" and p.label in CLASSES for p in preds)
    with pytest.raises(GraftError, match="needs a model that stores reference features"):
        learn.predict(outside, reject=0.3)
    preds = learn.predict(outside, reject="off")  # no warning needed: nothing was asked of the score
    assert all(p.score is None and not p.unknown for p in preds)


def test_graft_predict_on_an_older_run(run, old_run, tmp_path, capsys):
    root, _, outside = run
    table = tmp_path / "p.csv"
    assert main(["predict", str(old_run), str(root / "val"), str(outside), "--csv", str(table)]) == 0
    err = capsys.readouterr().err
    assert "no reference features" in err and "Traceback" not in err
    header = table.read_text().splitlines()[0].split(",")
    assert header == ["path", "label", "prob"]
    assert len(read_csv(table)) == 28
    assert main(["predict", str(old_run), str(outside), "--reject", "0.3"]) == 2
    one_error_line(capsys.readouterr().err, "--reject VALUE needs a model that stores reference features")


# --reject.


def test_graft_predict_reject_off_and_zero(run, tmp_path, capsys):
    root, run_dir, outside = run
    paths = [str(root / "val"), str(outside)]
    off, zero = tmp_path / "off.csv", tmp_path / "zero.csv"
    assert main(["predict", str(run_dir), *paths, "--csv", str(off), "--reject", "off"]) == 0
    assert main(["predict", str(run_dir), *paths, "--csv", str(zero), "--reject", "0"]) == 0
    capsys.readouterr()
    rows = {"off": read_csv(off), "zero": read_csv(zero)}
    assert list(rows["off"][0]) == ["path", "label", "prob", "unknown_score", "answer"]
    assert all(len(r) == 28 for r in rows.values())
    # off: every image answered with its class; the scores are still there.
    assert all(r["answer"] == r["label"] in CLASSES and float(r["unknown_score"]) > 0 for r in rows["off"])
    # 0: every image with a score above 0 (here: all of them) is unknown; its closest class stays.
    assert all(r["answer"] == "unknown" for r in rows["zero"])
    assert [(r["label"], r["unknown_score"]) for r in rows["zero"]] == [
        (r["label"], r["unknown_score"]) for r in rows["off"]
    ]


def test_reject_auto_off_and_zero_in_python(run, learn):
    root, _, outside = run
    train = sorted((root / "train").rglob("*.png"))
    preds = learn.predict([*train, root / "val", outside], reject=0)
    assert all(p.unknown == ("unknown" if p.score > 0 else "") for p in preds)
    assert all(p.label == (p.unknown or p.labels[0]) for p in preds)
    assert sum(bool(p.unknown) for p in preds) >= 28  # val and outside at least
    assert not any(p.unknown for p in learn.predict([*train, root / "val", outside], reject="off"))
    # auto: the run's threshold; the outside images are unknown, the training images are not.
    auto = {p.path: p for p in learn.predict([*train, root / "val", outside])}
    rule = learn.decision.reject
    assert all(p.unknown == ("unknown" if p.score > rule.threshold else "") for p in auto.values())
    assert all(auto[p].unknown == "unknown" for p in outside.iterdir())
    assert not any(auto[p].unknown for p in train)
    assert sum(bool(auto[p].unknown) for p in (root / "val").rglob("*.png")) <= 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "--reject 5: a score threshold is a cosine distance in [0, 2]"),
        ("-0.1", "--reject -0.1: a score threshold is a cosine distance in [0, 2]"),
        ("nan", "--reject nan: a score threshold is a cosine distance in [0, 2]"),
        ("maybe", "--reject takes auto, off or a score threshold, not 'maybe'"),
    ],
)
def test_bad_reject_values_are_one_line_exit_2(run, value, message, capsys):
    _, run_dir, outside = run
    assert main(["predict", str(run_dir), str(outside), "--reject", value]) == 2
    out, err = capsys.readouterr()
    one_error_line(err, message)
    assert out == ""


# The score.


def test_the_score_is_near_zero_for_training_images_and_larger_outside(run, learn):
    root, _, outside = run
    train = learn.predict(root / "train", reject="off")
    far = learn.predict(outside, reject="off")
    val = learn.predict(root / "val", reject="off")
    assert len(train) == 20 and len(far) == 6 and len(val) == 22
    # A training image is its own nearest reference (stored in float16: not exactly 0).
    assert max(p.score for p in train) < 1e-3
    assert min(p.score for p in far) > max(p.score for p in val) > max(p.score for p in train)
    assert min(p.score for p in far) > learn.decision.reject.threshold
    assert all(0 <= p.score <= 2 for p in [*train, *val, *far])


def test_choose_references_caps_and_keeps_every_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 10)
    vectors = torch.from_numpy(np.eye(8)[labels] * 5 + rng.normal(0, 0.05, (30, 8))).float()
    refs = choose_references(vectors, labels, limit=12)
    assert refs.shape == (12, 8) and refs.dtype == torch.float16
    torch.testing.assert_close(refs.float().norm(dim=1), torch.ones(12), atol=1e-3, rtol=0)
    assert np.bincount(refs.float().argmax(1).numpy(), minlength=3).tolist() == [4, 4, 4]
    assert torch.equal(choose_references(vectors, labels, limit=12, seed=0), refs)  # seeded
    # Under the cap: every vector, in order.
    all_refs = choose_references(vectors, labels, limit=30)
    assert all_refs.shape == (30, 8) and (all_refs.float().argmax(1).numpy() == labels).all()
    with pytest.raises(GraftError, match="no training image features"):
        choose_references(torch.zeros(0, 8))


def test_choose_references_keeps_a_small_class_within_the_cap():
    # A class far smaller than its share of the cap keeps one reference, and the cap still holds.
    skewed = np.array([0] * 28 + [1, 2])
    refs = choose_references(torch.from_numpy(np.eye(8)[skewed]).float(), skewed, limit=12)
    kept = refs.float().argmax(1).numpy()
    assert set(kept.tolist()) == {0, 1, 2}
    assert len(kept) <= 12, f"{len(kept)} references stored for a cap of 12"


@pytest.mark.parametrize("n", [1, 7, 20, 21, 40, 100])
def test_accept_threshold_accepts_ceil_95_percent(n):
    scores = np.random.default_rng(n).permutation(np.linspace(0.01, 0.9, n))
    t = accept_threshold(scores)
    assert int((scores <= t).sum()) == math.ceil(0.95 * n)
    # Halfway between the last score kept and the next: float noise cannot flip either image.
    ordered, k = np.sort(scores), math.ceil(0.95 * n)
    if k < n:
        assert t == (ordered[k - 1] + ordered[k]) / 2
    else:
        assert ordered[-1] < t < ordered[-1] + 1e-5
    assert int((scores <= accept_threshold(scores, 1.0)).sum()) == n
    assert int((scores <= accept_threshold(scores, 0.5)).sum()) == math.ceil(0.5 * n)


def test_accept_threshold_refuses_nonsense():
    with pytest.raises(GraftError, match="no val image"):
        accept_threshold(np.zeros(0))
    for accept in (0, -0.5, 1.5):
        with pytest.raises(GraftError, match=r"must be in \(0, 1\]"):
            accept_threshold(np.ones(3), accept)
