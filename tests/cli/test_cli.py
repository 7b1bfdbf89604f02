"""The graft command on generated data: train → evaluate → predict → info, and its errors."""

import csv
import json
import subprocess
import sys

import pytest

from graft.cli.main import main
from tests.conftest import make_image_folder

FAST = ["--input-size", "64", "--freeze-epochs", "5", "--epochs", "1", "--batch-size", "6", "--lr", "0.02",
        "--no-augment", "--workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Class folders split by fractions, plus a folder of new images to predict."""
    root = tmp_path_factory.mktemp("cli")
    make_image_folder(root / "data", {"red": 15, "green": 15, "blue": 15}, seed=1)
    # Colours follow the position in the dict, so keep "green" (with no images) in its slot.
    make_image_folder(root / "new", {"red": 2, "green": 0, "blue": 2}, seed=9)
    return root


@pytest.fixture(scope="module")
def run(dataset):
    out = dataset / "run"
    code = main(
        [
            "train",
            str(dataset / "data"),
            "--out",
            str(out),
            "--valid-split",
            "0.2",
            "--test-split",
            "0.2",
            *FAST,
        ]
    )
    assert code == 0
    return out


def test_train_writes_a_complete_run(run, capsys):
    meta = json.loads((run / "graft.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"]
    assert meta["config"]["valid_split"] == 0.2 and meta["config"]["lr"] == 0.02
    assert meta["model"]["arch"] == "tf_efficientnet_lite0"
    splits = meta["split"]["splits"]
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (27, 9, 9)
    assert {"val_acc", "test_acc", "best_epoch"} <= set(meta["metrics"])
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["frozen"] * 5 + ["unfrozen"]
    assert sorted(p.name for p in run.iterdir()) == ["graft.json", "history.csv", "model.safetensors"]


def test_evaluate_json_reuses_the_saved_test_split(run, dataset, capsys):
    assert main(["evaluate", str(run), str(dataset / "data"), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 9 and result["classes"] == ["blue", "green", "red"]
    assert sum(map(sum, result["confusion"])) == 9
    assert result["accuracy"] == 1.0
    assert {row["class"] for row in result["per_class"]} == {"blue", "green", "red"}


def test_evaluate_text_report(run, dataset, capsys):
    assert main(["evaluate", str(run), str(dataset / "new")]) == 0
    out = capsys.readouterr().out
    assert "accuracy 1.0000" in out and "confusion matrix" in out and "precision" in out


def test_predict_csv_and_submissions(run, dataset, tmp_path, capsys):
    preds, probs, labels = tmp_path / "p.csv", tmp_path / "probs.csv", tmp_path / "labels.csv"
    new = str(dataset / "new")
    assert main(["predict", str(run), new, "--top-k", "2", "--csv", str(preds)]) == 0
    with open(preds) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "prob", "label_2", "prob_2"]
    assert len(rows) == 4
    assert all(r["label"] in r["path"] for r in rows)  # file names carry their colour

    assert main(["predict", str(run), new, "--submission", str(probs)]) == 0
    with open(probs) as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "blue", "green", "red"]
    assert len(table) == 5
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-4 for r in table[1:])

    assert main(["predict", str(run), new, "--submission", str(labels), "--submission-format", "label"]) == 0
    with open(labels) as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "label"] and {r[1] for r in table[1:]} == {"red", "blue"}

    assert main(["predict", str(run), str(dataset / "new" / "red" / "red_0.png")]) == 0
    assert "\tred " in capsys.readouterr().out


def test_info_summarises_the_run(run, capsys):
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "tf_efficientnet_lite0" in out and "blue, green, red" in out and "sha256" in out


def test_existing_run_is_not_overwritten(run, dataset, capsys):
    assert main(["train", str(dataset / "data"), "--out", str(run), *FAST]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_models_lists_bundled_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tf_efficientnet_lite0" in out and "bundled" in out and "resnet18" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{tmp}/missing"], "does not exist"),
        (["train", "{tmp}/empty"], "no images"),
        (["train", "{tmp}/one"], "one class"),
        (["train", "{data}", "--arch", "resnet81"], "resnet18"),
        (["train", "{data}", "--valid-split", "1.5"], "split"),
        (["evaluate", "{tmp}/empty", "{data}"], "not a graft run"),
        (["predict", "{tmp}/missing", "x.jpg"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, dataset, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    make_image_folder(tmp_path / "one", {"only": 3})
    argv = [a.format(tmp=tmp_path, data=dataset / "data") for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graft: error:") and message in err
    assert len(err.splitlines()) == 1


def test_the_installed_command_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "graft", "train", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("graft: error:") and "Traceback" not in proc.stderr


def test_output_piped_into_head_is_not_an_error(run, dataset):
    proc = subprocess.run(
        f"{sys.executable} -m graft predict {run} {dataset / 'data'} | head -1",
        shell=True, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
