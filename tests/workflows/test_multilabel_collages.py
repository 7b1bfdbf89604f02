"""Multi-label on real pictures: 2 x 2 collages of flowers5 photos (the species present are the
labels; some collages show one species, some none: only background tiles), trained, evaluated,
reported, predicted, exported and served; the ONNX and served answers are the Learner's."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from graft import load_learner
from graft.cli.main import main
from graft.export.exporters import export
from graft.export.onnx_runtime import OnnxClassifier
from graft.serving.app import create_app
from tests.conftest import shared_dataset
from tests.labels_data import make_collages

# The frozen head on cached features keeps this a CI-sized test; bench/labels.py measures the
# default recipe (which also fine-tunes).
TRAIN = ["--mode", "features", "--workers", "0", "--precision", "fp32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def collage_run(tmp_path_factory):
    flowers = shared_dataset("flowers5") / "flowers"
    root = tmp_path_factory.mktemp("collage")
    labels = make_collages(root / "data", 240, source=flowers)
    run = root / "run"
    assert main(["train", str(root / "data"), "--labels", "labels.csv", "--out", str(run), *TRAIN]) == 0
    return root / "data", labels, run


@pytest.mark.slow
def test_a_collage_run_records_its_thresholds_and_multi_label_scores(collage_run, capsys):
    data, labels, run = collage_run
    meta = json.loads((run / "graft.json").read_text())
    assert meta["decision"]["multi_label"] and meta["decision"]["activation"] == "sigmoid"
    thresholds = meta["decision"]["thresholds"]
    assert set(thresholds) == {"daisy", "dandelion", "rose", "sunflower", "tulip"}
    assert all(0 < t < 1 for t in thresholds.values())
    assert meta["resolved"]["monitor"] == "val_map" and meta["resolved"]["multi_label"] is True
    assert meta["split"]["multi_label"] is True
    assert main(["evaluate", str(run), str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["multi_label"] is True and result["n"] == len(meta["split"]["splits"]["val"])
    # Better than answering every class for every image (F1 = 2p / (1 + p) per class).
    val = {row[0].split("/")[-1].split(".")[0] for row in meta["split"]["splits"]["val"]}
    prevalence = [np.mean([c in labels[k] for k in val]) for c in sorted(thresholds)]
    everything = np.mean([2 * p / (1 + p) for p in prevalence])
    print(f"val: macro F1 {result['macro_f1']:.4f} (every class everywhere: {everything:.4f})", end="")
    print(f", mAP {result['map']:.4f}")
    assert result["macro_f1"] > everything + 0.05 and result["map"] > 0.6
    report = (run / "report.html").read_text()
    assert "Per-class PR curves" in report and (run / "pr_curves.png").is_file()


@pytest.mark.slow
def test_predict_export_and_serve_give_the_learners_labels(collage_run, tmp_path):
    data, _, run = collage_run
    learn = load_learner(run, device="cpu")
    files = sorted((data / "images").iterdir())[:48]
    mine = learn.predict(files, workers=0)
    _, probs = learn.predict_probs(files, workers=0)
    assert [p.labels for p in mine] == [[learn.classes[i] for i in a] for a in learn.decision.answers(probs)]
    assert any(len(p.labels) > 1 for p in mine) and any(not p.labels for p in mine)
    # ONNX: the thresholds travel in the file, onnxruntime answers alike
    report = export(learn, "onnx", tmp_path / "m.onnx", check=files[:8])
    onnx_model = OnnxClassifier(report.path)
    assert [p.labels for p in onnx_model.predict(files)] == [p.labels for p in mine]
    # the server answers alike
    with TestClient(create_app(run, device="cpu")) as client:
        body = [("file", (f.name, f.read_bytes(), "image/jpeg")) for f in files[:16]]
        served = client.post("/predict", files=body).json()["predictions"]
    assert [[t["label"] for t in p["labels"]] for p in served] == [p.labels for p in mine[:16]]
    # a Kaggle-style submission: id,labels (space separated)
    sub = tmp_path / "sub.csv"
    assert main(["predict", str(run), *map(str, files[:10]), "--submission", str(sub)]) == 0
    rows = list(csv.reader(sub.open()))
    assert rows[0] == ["id", "labels"]
    assert {r[0]: r[1].split() for r in rows[1:]} == {p.path.stem: p.labels for p in mine[:10]}


@pytest.mark.slow
def test_tampered_thresholds_are_refused_in_one_line(collage_run, tmp_path, capsys):
    _, _, run = collage_run
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    meta = json.loads((copy / "graft.json").read_text())
    meta["decision"]["thresholds"]["rose"] = "high"
    (copy / "graft.json").write_text(json.dumps(meta))
    assert main(["evaluate", str(copy), str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "threshold of 'rose' is 'high', not a number" in err[0]
