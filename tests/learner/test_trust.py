"""What a trained run learns about its own confidence: the temperature, the reference features and
the unknown threshold, measured on real photos (hymenoptera) and kept by the saved run."""

import math

import pytest
import torch

from graft.data.dataset import ImageData
from graft.learner.learner import Learner, load_learner
from tests.conftest import make_image_folder

FIT = {"mode": "features", "epochs": 3, "precision": "fp32", "workers": 0}


@pytest.fixture(scope="module")
def hymenoptera():
    from tests.conftest import shared_dataset

    return ImageData.from_folder(shared_dataset("hymenoptera"))


def test_calibration_lowers_the_val_ece_and_the_threshold_accepts_95_percent(hymenoptera, tmp_path):
    learn = Learner(hymenoptera)
    lines = []
    learn.fit(**FIT, log=lines.append)
    m, d = learn.metrics, learn.decision
    assert d.temperature == m["temperature"] != 1.0
    assert m["val_ece"] < m["val_ece_uncalibrated"]
    n_val = len(hymenoptera.splits["val"])
    # ceil(0.95 * 153) = 146 val images are accepted: 7 are answered unknown.
    assert m["val_unknown_rate"] == (n_val - math.ceil(0.95 * n_val)) / n_val
    assert d.reject.threshold == m["unknown_threshold"] and d.reject.label == "unknown"
    assert learn.references.shape == (len(hymenoptera.splits["train"]), 1280)
    assert learn.references.dtype == torch.float16
    assert any(line.startswith("calibration: temperature") for line in lines)

    learn.save(tmp_path / "run")
    loaded = load_learner(tmp_path / "run")
    assert loaded.decision == d
    assert torch.equal(loaded.references, learn.references)
    # Calibrated probabilities: the val interpretation of the loaded run is the trained one's.
    val = loaded.interpret(hymenoptera, "val")
    assert val.scores is not None and (val.scores > d.reject.threshold).sum() == round(
        m["val_unknown_rate"] * n_val
    )


def test_no_calibrate_and_no_unknown(hymenoptera):
    learn = Learner(hymenoptera)
    learn.fit(**FIT, calibrate=False, unknown_accept=0, log=lambda _: None)
    assert learn.decision.temperature == 1.0 and learn.decision.reject is None
    assert "val_ece_uncalibrated" in learn.metrics and "val_ece" not in learn.metrics
    assert learn.references is not None  # predict --reject VALUE can still use the score


def test_without_a_val_split_the_score_is_kept_but_no_threshold(tmp_path):
    make_image_folder(tmp_path / "train", {"red": 6, "blue": 6})
    data = ImageData.from_folder(tmp_path, valid_split=0)
    assert not data.splits.get("val")
    learn = Learner(data, input_size=64)
    lines = []
    learn.fit(**FIT, log=lines.append)
    assert learn.decision.reject is None and learn.decision.temperature == 1.0
    assert learn.references.shape[0] == 12
    assert any("no val split" in line for line in lines)
