"""Acceptance: ``Learner.predict``, ``graft serve``, the ONNX export and ``graft predict --csv``
give the same unknown decisions on the same images, with the same unknown scores and calibrated
probabilities (a really trained tiny run with a temperature and a reject rule)."""

import csv
import dataclasses
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from graft import load_learner
from graft.cli.main import main
from graft.export.onnx_runtime import META_KEY, SCORE_OUTPUT, OnnxClassifier
from graft.serving.app import create_app
from tests.conftest import make_image_folder, tiny_run

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run on red, green and blue images (24 val images: it gets a temperature and a reject
    rule), and the images to compare on: new ones of the three colours and outside ones."""
    root = tmp_path_factory.mktemp("parity")
    learn = tiny_run(root, {"red": 8, "green": 8, "blue": 8}, {"red": 8, "green": 8, "blue": 8})
    # The val images of these colours are (all but) all right, too few errors to fit a temperature
    # on, so none is kept; one is set here, so that every path is checked to apply it.
    assert learn.decision.temperature == 1.0
    learn.decision = dataclasses.replace(learn.decision, temperature=1.7)
    run_dir = learn.save(root / "run")
    probe = root / "probe"
    make_image_folder(probe, {"red": 3, "green": 3, "blue": 3}, size=(50, 40), seed=7)
    rng = np.random.default_rng(11)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(probe / f"noise_{i}.png")
    for i in range(2):
        a = np.full((40, 50, 3), 240, np.uint8)
        a[:, i::3] = (250, 220, 20)
        a[i::6] = 0
        Image.fromarray(a).save(probe / f"stripes_{i}.png")
    return run_dir, sorted(probe.rglob("*.png"))


def answers(rows):
    """``{file name: (answer, unknown, score, prob)}``."""
    return {
        name: (answer, bool(unknown), float(score), float(prob))
        for name, answer, unknown, score, prob in rows
    }


def predicted(preds):
    """:func:`answers` of ``Prediction`` objects."""
    return answers((p.path.name, p.label, p.unknown, p.score, p.prob) for p in preds)


def served(body):
    """:func:`answers` of a ``POST /predict`` response's predictions."""
    return answers((p["filename"], p["label"], p["unknown"], p["score"], p["prob"]) for p in body)


@pytest.fixture(scope="module")
def learner_answers(run):
    run_dir, images = run
    learn = load_learner(run_dir, device="cpu", precision="fp32")
    preds = learn.predict(images)
    assert [p.path for p in preds] == images
    return learn, predicted(preds)


def test_the_run_has_a_temperature_and_a_reject_rule_that_splits_the_images(run, learner_answers):
    learn, got = learner_answers
    d = learn.decision
    assert learn.scored and d.reject is not None and d.temperature != 1.0
    unknown = [name for name, (_, u, _, _) in got.items() if u]
    known = [name for name, (_, u, _, _) in got.items() if not u]
    # The comparison means something only if both answers occur.
    assert unknown and known, got
    assert {f"noise_{i}.png" for i in range(3)} | {"stripes_0.png", "stripes_1.png"} <= set(unknown)
    # No image within float noise of the threshold: every path must then decide alike.
    margins = [abs(score - d.reject.threshold) for _, _, score, _ in got.values()]
    assert min(margins) > 10 * TOLERANCE, (d.reject.threshold, got)


def same(expected: dict, got: dict, where: str) -> None:
    assert set(got) == set(expected), where
    for name, (label, unknown, score, prob) in expected.items():
        g_label, g_unknown, g_score, g_prob = got[name]
        assert (g_unknown, g_label) == (unknown, label), f"{where}: {name}"
        assert abs(g_score - score) <= TOLERANCE, f"{where}: score of {name}: {g_score} vs {score}"
        assert abs(g_prob - prob) <= TOLERANCE, f"{where}: prob of {name}: {g_prob} vs {prob}"


def test_serve_answers_as_the_learner(run, learner_answers):
    run_dir, images = run
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images]
    with TestClient(create_app(run_dir, device="cpu", precision="fp32")) as client:
        response = client.post("/predict", files=files)
        info = client.get("/info").json()
    assert response.status_code == 200, response.text
    body = response.json()["predictions"]
    assert [p["filename"] for p in body] == [p.name for p in images]
    learn, expected = learner_answers
    assert info["reject"] == {"threshold": learn.decision.reject.threshold, "label": "unknown"}
    assert all((p["label"] == "unknown") == p["unknown"] for p in body)
    same(expected, served(body), "serve")


@pytest.fixture(scope="module")
def onnx_path(run):
    run_dir, _ = run
    assert main(["export", str(run_dir)]) == 0
    return run_dir / "model.onnx"


def test_the_onnx_export_answers_as_the_learner(run, learner_answers, onnx_path):
    _, images = run
    learn, expected = learner_answers
    model = OnnxClassifier(onnx_path, providers=["CPUExecutionProvider"])
    assert model.scored and [o.name for o in model.session.get_outputs()] == ["logits", SCORE_OUTPUT]
    assert model.decision == learn.decision  # the temperature and the reject rule travel with it
    meta = json.loads(model.session.get_modelmeta().custom_metadata_map[META_KEY])
    assert meta["format"] == 3 and meta["decision"]["reject"]["threshold"] == learn.decision.reject.threshold
    preds = model.predict(images)
    assert [p.path for p in preds] == images
    same(expected, predicted(preds), "onnx")


def read_answers(table):
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["path", "label", "prob", "unknown_score", "answer"]
    return answers(
        (r["path"].rsplit("/", 1)[-1], r["answer"], r["answer"] == "unknown", r["unknown_score"], r["prob"])
        for r in rows
    )


def test_graft_predict_csv_answers_as_the_learner(run, learner_answers, tmp_path, capsys):
    run_dir, images = run
    table = tmp_path / "p.csv"
    assert main(["predict", str(run_dir), *map(str, images), "--csv", str(table), "--precision", "fp32"]) == 0
    capsys.readouterr()
    same(learner_answers[1], read_answers(table), "graft predict")


def test_graft_predict_onnx_csv_answers_as_the_learner(run, learner_answers, onnx_path, tmp_path, capsys):
    _, images = run
    table = tmp_path / "p.csv"
    assert main(["predict", str(onnx_path), *map(str, images), "--csv", str(table)]) == 0
    capsys.readouterr()
    same(learner_answers[1], read_answers(table), "graft predict model.onnx")


def test_a_reject_value_is_applied_alike_everywhere(run, learner_answers, onnx_path, tmp_path, capsys):
    """``--reject VALUE`` in place of the stored rule: a threshold in the widest gap between the
    in-distribution images' scores, so that some of them are now unknown too."""
    run_dir, images = run
    learn, auto = learner_answers
    known = np.sort([score for _, unknown, score, _ in auto.values() if not unknown])
    gap = int(np.argmax(np.diff(known)))
    value = f"{(known[gap] + known[gap + 1]) / 2:.6f}"
    expected = predicted(learn.predict(images, reject=value))
    newly = [n for n, (_, u, _, _) in expected.items() if u and not auto[n][1]]
    assert newly and any(not u for _, u, _, _ in expected.values())
    onnx = OnnxClassifier(onnx_path, providers=["CPUExecutionProvider"]).predict(images, reject=float(value))
    same(expected, predicted(onnx), "onnx")
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images]
    with TestClient(create_app(run_dir, device="cpu", reject=value)) as client:
        body = client.post("/predict", files=files).json()["predictions"]
    same(expected, served(body), "serve")
    table = tmp_path / "p.csv"
    assert main(["predict", str(run_dir), *map(str, images), "--csv", str(table), "--reject", value]) == 0
    capsys.readouterr()
    same(expected, read_answers(table), "graft predict")
