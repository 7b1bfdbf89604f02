"""The acceptance runs on the real datasets in ../shared/datasets, as a user types them (slow)."""

import csv
import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import shared_dataset

pytestmark = pytest.mark.slow


def graft(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "graft", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"graft {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def test_hymenoptera_defaults_reach_094_on_val(tmp_path):
    data = shared_dataset("hymenoptera")
    graft("train", str(data), "--out", str(tmp_path / "run"))
    result = json.loads(graft("evaluate", str(tmp_path / "run"), str(data / "val"), "--json").stdout)
    assert result["n"] == 153
    assert result["accuracy"] >= 0.94, result


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
