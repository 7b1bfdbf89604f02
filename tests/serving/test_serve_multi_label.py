"""graft serve on a multi-label run (every label at or above its threshold) and on a binary run
with a threshold: the served answers are the Learner's."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from graft import ImageData, Learner, load_learner
from graft.inference.decision import Decision
from graft.serving.app import create_app
from tests.conftest import make_image_folder


def upload(*paths):
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]


def served(run_dir, files, top_k=3):
    out = []
    with TestClient(create_app(run_dir, device="cpu")) as client:
        info = client.get("/info").json()
        for begin in range(0, len(files), 16):
            response = client.post(f"/predict?top_k={top_k}", files=upload(*files[begin : begin + 16]))
            assert response.status_code == 200, response.text
            out += response.json()["predictions"]
    return info, out


def test_multi_label_answers_are_the_learners(multi_run):
    images, run_dir = multi_run
    files = sorted(images.glob("*.png"))
    info, predictions = served(run_dir, files)
    saved = json.loads((run_dir / "graft.json").read_text())["decision"]
    assert (
        info["decision"] == saved
        and saved["multi_label"]
        and set(saved["thresholds"]) == set(info["classes"])
    )
    learn = load_learner(run_dir, device="cpu")
    expected = learn.predict(files)
    _, probs = learn.predict_probs(files)
    answers = [[t["label"] for t in p["labels"]] for p in predictions]
    assert answers == [p.labels for p in expected]
    assert [] in answers and max(map(len, answers)) > 1  # none of the classes, and several
    for p, want, row in zip(predictions, expected, probs, strict=True):
        assert [t["prob"] for t in p["labels"]] == pytest.approx(want.probs, abs=1e-5)
        assert (p["label"], p["prob"]) == (want.label, pytest.approx(want.prob, abs=1e-5))
        # top: the classes by probability (sigmoids), whatever the thresholds.
        assert [t["label"] for t in p["top"]] == [learn.classes[j] for j in np.argsort(-row, kind="stable")]
        assert [t["prob"] for t in p["top"]] == pytest.approx(sorted(row, reverse=True), abs=1e-5)
    empty = next(p for p in predictions if not p["labels"])
    assert empty["label"] == "" and empty["prob"] == 0.0


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    """A two-class run whose threshold on 'yes' sits among the images it calls 'yes'."""
    root = tmp_path_factory.mktemp("binary")
    make_image_folder(root / "train", {"no": 8, "yes": 8}, size=(50, 40), seed=1)
    make_image_folder(root / "val", {"no": 4, "yes": 4}, size=(50, 40), seed=2)
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
    files = sorted((root / "val").rglob("*.png"))
    _, probs = learn.predict_probs(files, workers=0)
    # Between the two least sure 'yes' answers: the least sure one becomes 'no'.
    yes = np.sort(probs[:, 1][probs[:, 1] > 0.5])
    learn.decision = Decision(thresholds=(float((yes[0] + yes[1]) / 2),), positive=1)
    return files, learn.save(root / "run")


def test_a_binary_threshold_picks_the_served_label(binary_run):
    files, run_dir = binary_run
    info, predictions = served(run_dir, files, top_k=2)
    assert info["decision"]["positive"] == "yes" and "threshold" in info["decision"]
    learn = load_learner(run_dir, device="cpu")
    _, probs = learn.predict_probs(files)
    expected = [p.labels for p in learn.predict(files, k=2)]
    assert [[t["label"] for t in p["top"]] for p in predictions] == expected
    assert [p["label"] for p in predictions] == [e[0] for e in expected]
    assert [p["labels"] for p in predictions] == [p["top"][:1] for p in predictions]
    threshold = info["decision"]["threshold"]
    assert [p["label"] for p in predictions] == ["yes" if row[1] >= threshold else "no" for row in probs]
    assert any(p["label"] == "no" and row[1] > 0.5 for p, row in zip(predictions, probs, strict=True))
