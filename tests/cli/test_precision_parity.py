"""The numbers a user compares agree on either kind of CPU: the kept epoch's val metrics printed by
``graft train`` and ``graft evaluate``; ``graft predict``, ``graft serve`` and ``graft predict --onnx``.

The tests that take ``native_bf16`` run once per kind of CPU (see tests/conftest.py), so CI on
either kind exercises both precision paths.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from graft.cli.main import main
from graft.serving.app import create_app
from tests.conftest import make_image_folder, shared_dataset

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, size=(50, 40), seed=1)
    make_image_folder(root / "val", {"red": 4, "green": 4, "blue": 4}, size=(50, 40), ext=".jpg", seed=2)
    return root


def _csv_probs(path: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """path -> probabilities in ``classes`` order, from a predictions CSV with every class in its top-k."""
    out = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            labels = [row["label"]] + [row[f"label_{j}"] for j in range(2, len(classes) + 1)]
            probs = [row["prob"]] + [row[f"prob_{j}"] for j in range(2, len(classes) + 1)]
            found = dict(zip(labels, map(float, probs), strict=True))
            out[Path(row["path"]).name] = np.array([found[c] for c in classes])
    return out


def _served_probs(run: Path, files: list[Path], classes: list[str]) -> dict[str, np.ndarray]:
    out = {}
    with TestClient(create_app(run, device="cpu", max_files=16)) as client:
        for i in range(0, len(files), 16):
            chunk = files[i : i + 16]
            body = [("file", (f.name, f.read_bytes(), "image/jpeg")) for f in chunk]
            response = client.post(f"/predict?top_k={len(classes)}", files=body)
            assert response.status_code == 200, response.text
            for p in response.json()["predictions"]:
                found = {t["label"]: t["prob"] for t in p["top"]}
                out[p["filename"]] = np.array([found[c] for c in classes])
    return out


def check_agreement(run: Path, val: Path, tmp: Path, capsys) -> dict:
    """Every number a user compares, from every command, on the images of ``val``; returns the
    largest differences found (asserted within TOLERANCE)."""
    meta = json.loads((run / "graft.json").read_text())
    classes = meta["classes"]
    capsys.readouterr()
    assert main(["evaluate", str(run), str(val), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    kept = meta["metrics"]
    assert evaluated["n"] == len(list(val.rglob("*.*")))
    assert evaluated["accuracy"] == pytest.approx(kept["val_acc"], abs=TOLERANCE)
    # graft evaluate's probabilities are calibrated: their loss is the calibrated one training recorded.
    loss = kept.get("val_loss_calibrated", kept["val_loss"])
    assert evaluated["loss"] == pytest.approx(loss, abs=TOLERANCE)

    k = str(len(classes))
    assert main(["predict", str(run), str(val), "--csv", str(tmp / "torch.csv"), "--top-k", k]) == 0
    assert main(["export", str(run), "--out", str(tmp / "model.onnx"), "--check", str(val)]) == 0
    onnx_csv = str(tmp / "onnx.csv")
    assert main(["predict", str(tmp / "model.onnx"), str(val), "--csv", onnx_csv, "--top-k", k]) == 0
    capsys.readouterr()
    answers = {
        "predict": _csv_probs(tmp / "torch.csv", classes),
        "onnx": _csv_probs(tmp / "onnx.csv", classes),
        "serve": _served_probs(run, sorted(p for p in val.rglob("*") if p.is_file()), classes),
    }
    names = sorted(answers["predict"])
    assert len(names) == evaluated["n"]
    gaps = {}
    for what in ("onnx", "serve"):
        assert sorted(answers[what]) == names, what
        ours, theirs = (np.stack([answers[w][n] for n in names]) for w in ("predict", what))
        assert (ours.argmax(1) == theirs.argmax(1)).all(), what
        gaps[what] = float(np.abs(ours - theirs).max())
        assert gaps[what] <= TOLERANCE, (what, gaps[what])
    return gaps


def _train(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(["train", *argv]) == 0
    return capsys.readouterr().out


def test_frozen_features_in_bf16_where_native_and_every_answer_in_fp32(native_bf16, colors, tmp_path, capsys):
    run = tmp_path / "run"
    log = _train([str(colors), "--out", str(run), "--mode", "features", "--epochs", "4", "--input-size", "32",
                  "--batch-size", "8", "--lr", "0.02", "--no-augment", "--workers", "0", "--no-report"],
                 capsys)  # fmt: skip
    features = "bf16" if native_bf16 else "fp32"
    assert f"train {features}, val fp32)" in log  # the feature pass says what it computed in
    plan = json.loads((run / "graft.json").read_text())["precision"]
    assert plan == {"asked": "auto", "device": "cpu", "train": "fp32", "features": features,
                    "inference": "fp32", "cpu_bf16": native_bf16}  # fmt: skip
    assert main(["info", str(run)]) == 0
    info = capsys.readouterr().out
    assert re.search(rf"precision: +train fp32, frozen features {features}, inference fp32 \(cpu, ", info)
    check_agreement(run, colors / "val", tmp_path, capsys)


def test_training_the_body_in_bf16_still_validates_and_answers_in_fp32(native_bf16, colors, tmp_path, capsys):
    run = tmp_path / "run"
    _train([str(colors), "--out", str(run), "--mode", "full", "--epochs", "2", "--precision", "bf16",
            "--input-size", "32", "--batch-size", "8", "--lr", "0.001", "--no-augment", "--workers", "0",
            "--no-report"], capsys)  # fmt: skip
    plan = json.loads((run / "graft.json").read_text())["precision"]
    assert (plan["train"], plan["inference"], plan["cpu_bf16"]) == ("bf16", "fp32", native_bf16)
    check_agreement(run, colors / "val", tmp_path, capsys)


def test_predict_and_serve_in_bf16_when_asked(colors, tmp_path, capsys):
    run = tmp_path / "run"
    _train([str(colors), "--out", str(run), "--mode", "features", "--epochs", "2", "--input-size", "32",
            "--no-augment", "--workers", "0", "--no-report"], capsys)  # fmt: skip
    val = colors / "val"
    for precision in ("fp32", "bf16"):
        assert main(["predict", str(run), str(val), "--csv", str(tmp_path / f"{precision}.csv"),
                     "--top-k", "3", "--precision", precision]) == 0  # fmt: skip
    classes = ["blue", "green", "red"]
    fp32, bf16 = (_csv_probs(tmp_path / f"{p}.csv", classes) for p in ("fp32", "bf16"))
    gap = max(float(np.abs(fp32[n] - bf16[n]).max()) for n in fp32)
    assert 0 < gap < 0.05  # it really ran in bf16, and stays close
    with TestClient(create_app(run, device="cpu", precision="bf16")) as client:
        assert client.get("/info").json()["precision"] == "bf16"
    assert main(["predict", str(run), str(val), "--precision", "fp16"]) == 2
    assert "fp16 needs a GPU" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.onnx"), str(val), "--onnx", "--precision", "bf16"]) == 2
    assert "--precision is for a run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_hymenoptera_train_evaluate_predict_serve_and_onnx_agree(native_bf16, tmp_path, capsys, monkeypatch):
    """The issue's acceptance, on real photos with the default training, once per kind of CPU."""
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    data = shared_dataset("hymenoptera")
    run = tmp_path / "run"
    log = _train([str(data), "--out", str(run), "--no-report"], capsys)
    printed = re.search(r"val: accuracy (\S+) .*  loss (\S+)", log)
    meta = json.loads((run / "graft.json").read_text())
    assert meta["precision"]["features"] == ("bf16" if native_bf16 else "fp32")
    assert float(printed[1]) == pytest.approx(meta["metrics"]["val_acc"], abs=1e-4)
    assert float(printed[2]) == pytest.approx(meta["metrics"]["val_loss"], abs=1e-4)  # printed to 4 places
    assert meta["metrics"]["val_acc"] >= 0.94
    gaps = check_agreement(run, data / "val", tmp_path, capsys)
    print(f"val acc {meta['metrics']['val_acc']:.4f} loss {meta['metrics']['val_loss']:.4f}; gaps {gaps}")
