"""The graft command on generated data: train → evaluate → predict → info, and its errors."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from graft.cli.main import main
from graft.workflows.report import SECTIONS
from tests.conftest import make_image_folder
from tests.workflows.test_report import confusion_from_html, parse_report

BUNDLE = ["graft.json", "history.csv", "model.safetensors"]
REPORT = ["report.html", "curves.png", "confusion.png", "confusion_normalized.png", "top_losses.png",
          "reliability.png", "coverage.png", "predictions.png"]  # fmt: skip

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
    assert sorted(p.name for p in run.iterdir()) == sorted([*BUNDLE, *REPORT])


def test_the_training_report_shows_the_test_split_as_evaluate_does(run, dataset, capsys):
    report = parse_report(run / "report.html")
    assert report.sections == list(SECTIONS)
    assert main(["evaluate", str(run), str(dataset / "data"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert confusion_from_html(report).tolist() == result["confusion"]
    assert confusion_from_html(report).sum() == 9  # the test split


def test_report_command_on_the_val_split(run, dataset, tmp_path, capsys):
    out = tmp_path / "val-report"
    assert main(["report", str(run), "--split", "val", "--out", str(out), "--top-losses", "4"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT)
    report = parse_report(out / "report.html")
    assert main(["evaluate", str(run), str(dataset / "data"), "--split", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert confusion_from_html(report).tolist() == result["confusion"]
    assert len(report.tables["top-losses-table"]) == 1 + 4


def test_no_report_writes_only_the_bundle(dataset, tmp_path):
    out = tmp_path / "bare"
    assert main(["train", str(dataset / "data"), "--out", str(out), "--no-report", *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(BUNDLE)


def test_tta_on_evaluate_and_predict(run, dataset, capsys):
    assert main(["evaluate", str(run), str(dataset / "data"), "--tta", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 9 and result["accuracy"] == 1.0
    assert main(["predict", str(run), "--tta", str(dataset / "new"), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("\tred " in line or "\tblue " in line for line in lines)
    assert main(["evaluate", str(run), str(dataset / "data"), "--tta-views", "4", "--json"]) == 0
    four = json.loads(capsys.readouterr().out)
    assert four["n"] == 9 and four["loss"] != result["loss"]  # different views, different average


def test_lr_find_command_and_auto_lr(dataset, tmp_path, capsys):
    small = ["--input-size", "32", "--batch-size", "6", "--no-augment", "--workers", "0"]
    out = tmp_path / "lrf"
    assert main(["lr-find", str(dataset / "data"), "--out", str(out), "--num-it", "40", *small]) == 0
    printed = capsys.readouterr().out
    assert "suggested lr:" in printed
    assert (out / "lr_find.png").stat().st_size > 0
    rows = (out / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "lr,loss" and 6 <= len(rows) - 1 <= 40

    run = tmp_path / "auto"
    argv = ["train", str(dataset / "data"), "--out", str(run), "--lr", "auto", "--mode", "features", *small]
    assert main(argv) == 0
    meta = json.loads((run / "graft.json").read_text())
    assert meta["config"]["lr"] == "auto"  # what was asked; what ran is beside it
    assert isinstance(meta["resolved"]["lr"], float) and meta["resolved"]["lr"] == meta["metrics"]["lr_found"]
    assert {"lr_find.png", "lr_find.csv"} <= {p.name for p in run.iterdir()}
    assert "lr-find" in parse_report(run / "report.html").sections


def test_compare_trains_both_and_plots(dataset, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", str(dataset / "data"), "--out", str(out), "--epochs", "2", "--input-size", "32",
            "--batch-size", "8", "--no-augment", "--workers", "0", "--no-report"]  # fmt: skip
    assert main(argv) == 0
    assert "validation accuracy per epoch" in capsys.readouterr().out
    summary = json.loads((out / "compare.json").read_text())
    assert set(summary["runs"]) == {"pretrained", "scratch"}
    assert all(len(r["val_acc"]) == 2 for r in summary["runs"].values())
    assert (out / "compare.png").stat().st_size > 0
    assert (out / "compare.csv").read_text().splitlines()[0] == (
        "epoch,pretrained_val_acc,pretrained_val_loss,scratch_val_acc,scratch_val_loss"
    )
    pretrained = json.loads((out / "pretrained" / "graft.json").read_text())["config"]
    scratch = json.loads((out / "scratch" / "graft.json").read_text())["config"]
    assert (pretrained["pretrained"], scratch["pretrained"]) == (True, False)
    assert (pretrained["mode"], scratch["mode"]) == ("finetune", "scratch")
    same = ("epochs", "lr", "optimizer", "schedule", "batch_size", "seed", "input_size")
    assert all(pretrained[k] == scratch[k] for k in same)
    assert main(argv) == 2  # a second comparison into the same folder needs --overwrite
    assert "already holds a comparison" in capsys.readouterr().err


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
    assert list(rows[0]) == ["path", "label", "prob", "label_2", "prob_2", "unknown_score", "answer"]
    assert len(rows) == 4
    assert all(r["answer"] in (r["label"], "unknown") and float(r["unknown_score"]) >= 0 for r in rows)
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


def test_evaluate_ood_measures_the_unknown_score(run, dataset, tmp_path, capsys):
    meta = json.loads((run / "graft.json").read_text())
    assert meta["decision"]["reject"]["label"] == "unknown"
    assert meta["metrics"]["unknown_threshold"] == meta["decision"]["reject"]["threshold"]
    outside = tmp_path / "outside"
    outside.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # noise: nothing like the solid colours the run was trained on
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(outside / f"noise_{i}.png")
    plot = tmp_path / "coverage.png"
    args = ["evaluate", str(run), str(dataset / "data"), "--split", "val", "--ood", str(outside)]
    assert main([*args, "--json", "--plot", str(plot)]) == 0
    ood = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ood"]
    assert (ood["inside"], ood["outside"]) == (9, 6)
    assert ood["auroc"] >= 0.9 and ood["outside_rejected"] >= 0.5
    # The threshold accepts 95% of the 9 val images it was chosen on: all 9.
    assert ood["inside_rejected"] == 0 and ood["threshold"] == meta["decision"]["reject"]["threshold"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*args, "--reject", "off"]) == 0
    text = capsys.readouterr().out
    assert "AUROC" in text and "at threshold" not in text  # no rule: the threshold-free numbers only


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
        (["train", "{data}", "--time-budget", "soon"], "time budget 'soon'"),
        (["train", "{data}", "--time-budget", "0m"], "must be positive"),
        (["train", "{data}", "--time-budget", "2m", "--mode", "full"], "needs mode finetune"),
        (["train", "{data}", "--unfreeze", "blocks.9"], "no body block named 'blocks.9'"),
        (["evaluate", "{tmp}/empty", "{data}"], "not a graft run"),
        (["predict", "{tmp}/missing", "x.jpg"], "not found"),
        (["report", "{tmp}/missing"], "not found"),
        (["report", "{tmp}/empty"], "not a graft run"),
        (["report", "{run}", "--top-losses", "-1"], "at least 1 top-loss image"),
        (["lr-find", "{tmp}/one"], "one class"),
        (["lr-find", "{data}", "--start-lr", "1", "--end-lr", "0.1"], "start lr < end lr"),
        (["compare", "{tmp}/missing"], "does not exist"),
        (["evaluate", "{run}", "{data}", "--ood", "{tmp}/missing"], "no such file or folder"),
        (["evaluate", "{run}", "{data}", "--ood", "{tmp}/empty"], "no image"),
        (["evaluate", "{run}", "{data}", "--ood", "{tmp}/one", "--reject", "3"], "cosine distance in [0, 2]"),
        (
            ["predict", "{run}", "{data}", "--reject", "maybe"],
            "--reject takes auto, off or a score threshold",
        ),
        (["train", "{data}", "--unknown-label", "red"], "is one of the classes"),
        (["train", "{data}", "--unknown-accept", "1.5"], "unknown-accept must be in [0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, dataset, run, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    make_image_folder(tmp_path / "one", {"only": 3})
    monkeypatch.chdir(tmp_path)
    argv = [a.format(tmp=tmp_path, data=dataset / "data", run=run) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graft: error:") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # a failed train leaves no empty run folder behind


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


def test_out_inside_the_data_or_over_other_files_is_refused(dataset, tmp_path, capsys):
    data = dataset / "data"
    assert main(["train", str(data), "--out", str(data / "runs" / "x"), *FAST]) == 2
    assert "is inside the dataset" in capsys.readouterr().err
    assert not (data / "runs").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "history.csv").write_text("my own spreadsheet\n")
    assert main(["train", str(data), "--out", str(mine), "--overwrite", *FAST]) == 2
    assert "holds files that are not a graft run" in capsys.readouterr().err
    assert (mine / "history.csv").read_text() == "my own spreadsheet\n"


def test_evaluate_batch_size_sets_the_forward_batch(run, dataset, capsys, monkeypatch, tmp_path):
    """Issue 19: `graft evaluate --batch-size` wrote learn.config, which evaluation never read."""
    import torch

    stems: list[int] = []

    def record(module, inputs):
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            stems.append(int(inputs[0].shape[0]))  # the images in this forward pass

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        args = ["evaluate", str(run), str(dataset / "data"), "--split", "val", "--json"]
        monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "a"))  # an empty feature cache: the body runs
        assert main([*args, "--batch-size", "8"]) == 0
        with_8 = json.loads(capsys.readouterr().out)
        eight, stems[:] = list(stems), []
        monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "b"))
        assert main([*args, "--batch-size", "3"]) == 0
        with_3 = json.loads(capsys.readouterr().out)
    finally:
        hook.remove()
    # (Batches of 2 are the fused copy's trial run, the same in both.)
    assert max(eight) == 8 and max(stems) == 3, (eight, stems)
    assert with_3["accuracy"] == with_8["accuracy"] and with_3["n"] == with_8["n"]
    assert main([*args, "--batch-size", "0"]) == 2
    assert "batch size must be a whole number of at least 1" in capsys.readouterr().err
