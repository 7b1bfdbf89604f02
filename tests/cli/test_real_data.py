"""The acceptance runs on the real datasets in ../shared/datasets, as a user types them (slow)."""

import csv
import json
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from graft.workflows.report import SECTIONS
from tests.conftest import shared_dataset
from tests.workflows.test_report import confusion_from_html, parse_report
from tests.workflows.test_report_browser import assert_renders

pytestmark = pytest.mark.slow


def graft(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "graft", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"graft {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def hymenoptera_run(tmp_path_factory):
    """``graft train hymenoptera`` with the defaults (which writes report.html too)."""
    data = shared_dataset("hymenoptera")
    run = tmp_path_factory.mktemp("hymenoptera") / "run"
    graft("train", str(data), "--out", str(run))
    return data, run


def test_hymenoptera_defaults_reach_094_on_val(hymenoptera_run):
    data, run = hymenoptera_run
    result = json.loads(graft("evaluate", str(run), str(data / "val"), "--json").stdout)
    assert result["n"] == 153
    assert result["accuracy"] >= 0.94, result


def test_hymenoptera_report_agrees_with_evaluate_and_renders_in_chromium(hymenoptera_run, tmp_path):
    data, run = hymenoptera_run
    out = tmp_path / "report"
    graft("report", str(run), str(data), "--out", str(out))
    report = parse_report(out / "report.html")
    assert report.sections == list(SECTIONS)
    cm = confusion_from_html(report)
    evaluated = json.loads(graft("evaluate", str(run), str(data), "--json").stdout)
    assert cm.sum() == 153 == evaluated["n"]
    assert cm.tolist() == evaluated["confusion"]
    # The report train wrote at the end shows the same matrix.
    assert confusion_from_html(parse_report(run / "report.html")).tolist() == cm.tolist()
    for png in out.glob("*.png"):
        with Image.open(png) as image:
            image.load()
            assert min(image.size) > 200, png.name
    assert_renders(out / "report.html", tmp_path / "screenshot.png")


def test_onnx_export_of_hymenoptera_matches_pytorch(hymenoptera_run, tmp_path):
    data, run = hymenoptera_run
    onnx_file = tmp_path / "model.onnx"
    proc = graft("export", str(run), "--out", str(onnx_file))
    found = re.search(
        r"parity with PyTorch on (\d+) images: largest probability difference ([0-9.e+-]+)", proc.stdout
    )
    assert found and int(found.group(1)) == 153, proc.stdout
    assert float(found.group(2)) <= 1e-4
    onnx_csv, torch_csv = tmp_path / "onnx.csv", tmp_path / "torch.csv"
    graft("predict", "--onnx", str(onnx_file), str(data / "val"), "--csv", str(onnx_csv))
    graft("predict", str(run), str(data / "val"), "--csv", str(torch_csv))
    with open(onnx_csv) as a, open(torch_csv) as b:
        onnx_rows, torch_rows = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert len(onnx_rows) == 153
    assert [(r["path"], r["label"]) for r in onnx_rows] == [(r["path"], r["label"]) for r in torch_rows]


def test_auto_lr_lands_within_2_points_of_the_default(hymenoptera_run, tmp_path):
    data, run = hymenoptera_run
    proc = graft("train", str(data), "--lr", "auto", "--out", str(tmp_path / "auto"), "--no-report")
    suggested = float(re.search(r"lr-find: suggested lr ([0-9.e+-]+)", proc.stdout).group(1))
    assert 1e-5 < suggested < 1.0
    default = json.loads((run / "graft.json").read_text())["metrics"]["val_acc"]
    auto = json.loads((tmp_path / "auto" / "graft.json").read_text())["metrics"]
    assert auto["lr_found"] == pytest.approx(suggested, rel=1e-2)
    assert abs(auto["val_acc"] - default) <= 0.02, (auto["val_acc"], default)


def test_pretrained_beats_scratch_on_hymenoptera(tmp_path):
    data = shared_dataset("hymenoptera")
    out = tmp_path / "cmp"
    # A shortened budget (the README's figures use the defaults: 5 epochs at 224 px).
    graft("compare", str(data), "--out", str(out), "--epochs", "3", "--input-size", "160", "--no-report")
    runs = json.loads((out / "compare.json").read_text())["runs"]
    pretrained, scratch = runs["pretrained"]["val_acc"], runs["scratch"]["val_acc"]
    assert len(pretrained) == len(scratch) == 3
    assert pretrained[-1] >= scratch[-1] + 0.2, runs  # after the same number of epochs
    assert max(pretrained) >= 0.85, runs


def test_malaria_evaluates_exactly_the_saved_test_split(tmp_path):
    data = tmp_path / "malaria"
    shutil.copytree(shared_dataset("malaria_subset"), data)
    run = tmp_path / "run"
    graft("train", str(data), "--out", str(run), "--valid-split", "0.2", "--test-split", "0.1")
    split = json.loads((run / "graft.json").read_text())["split"]
    test_files = {path for path, _ in split["splits"]["test"]}
    assert len(test_files) == 20

    result = json.loads(graft("evaluate", str(run), str(data), "--split", "test", "--json").stdout)
    assert result["n"] == 20 and sum(map(sum, result["confusion"])) == 20
    assert result["accuracy"] >= 0.8

    # The saved list is what gets evaluated: removing a training image changes nothing,
    # removing a test image is reported by name.
    (data / split["splits"]["train"][0][0]).unlink()
    again = json.loads(graft("evaluate", str(run), str(data), "--split", "test", "--json").stdout)
    assert again == result
    gone = sorted(test_files)[0]
    (data / gone).unlink()
    proc = graft("evaluate", str(run), str(data), "--split", "test", check=False)
    assert proc.returncode == 2 and gone.split("/")[-1] in proc.stderr


def test_dog_breeds_from_labels_csv_and_submission(tmp_path):
    data = shared_dataset("dog_tiny")
    run, sub = tmp_path / "run", tmp_path / "sub.csv"
    graft("train", str(data), "--labels", str(data / "labels.csv"), "--out", str(run))
    graft("predict", str(run), str(data / "test"), "--submission", str(sub), "--submission-format", "probs")
    with open(data / "labels.csv") as f:
        breeds = sorted({row["breed"] for row in csv.DictReader(f)})
    assert len(breeds) == 110
    with open(sub) as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", *breeds]
    assert len(table) == 301
    assert {r[0] for r in table[1:]} == {p.stem for p in (data / "test").iterdir()}
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-3 for r in table[1:])


def test_demo_reaches_090_on_its_test_split(tmp_path):
    proc = graft("demo", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "digits"))
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", proc.stdout).group(1))
    assert accuracy >= 0.90, proc.stdout
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert parse_report(tmp_path / "run" / "report.html").sections == list(SECTIONS)
