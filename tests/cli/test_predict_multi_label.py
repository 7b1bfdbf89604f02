"""graft predict on a really trained multi-label run: printed and CSV labels above their
thresholds, resume/shard/merge, the id,labels submission, and the ONNX export's same labels."""

import csv

import pytest

from graft import load_learner
from graft.cli.main import main
from tests.inference.multi_label_run import make_tiles, train_multi_label


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = make_tiles(tmp_path_factory.mktemp("tiles"))
    out = train_multi_label(root, tmp_path_factory.mktemp("multi") / "run")
    learn = load_learner(out, device="cpu")
    return str(out), str(root / "images"), learn.predict(root / "images"), learn.classes


def read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_prints_and_writes_every_label_above_its_threshold(run, tmp_path, capsys):
    out, images, expected, classes = run
    assert main(["predict", out, images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(expected)
    for line, pred in zip(lines, expected, strict=True):
        path, answer = line.split("\t")
        assert path == str(pred.path)
        shown = "  ".join(f"{c} {p:.3f}" for c, p in zip(pred.labels, pred.probs, strict=True)) or "(none)"
        if pred.unknown:  # past the unknown threshold: the answer, then what the classes say
            shown = f"{pred.unknown} (closest: {shown})"
        assert answer == f"{shown}  [unknown score {pred.score:.3f}]"
    assert any("\t(none)  [unknown score" in line for line in lines)
    assert main(["predict", out, images, "--csv", str(tmp_path / "p.csv")]) == 0
    table = read(tmp_path / "p.csv")
    assert table[0] == ["path", "labels", *classes, "unknown_score", "answer"]
    assert [row[1].split() for row in table[1:]] == [p.labels for p in expected]
    for row, pred in zip(table[1:], expected, strict=True):
        assert row[-1] == (pred.unknown or " ".join(pred.labels))
        probs = dict(zip(classes, map(float, row[2:-2]), strict=True))
        assert [probs[c] for c in pred.labels] == pytest.approx(pred.probs, abs=1e-6)


def test_shards_merge_and_resume_to_the_same_csv(run, tmp_path, capsys):
    out, images, _, _ = run
    full, merged, resumed = tmp_path / "full.csv", tmp_path / "merged.csv", tmp_path / "resumed.csv"
    assert main(["predict", out, images, "--csv", str(full)]) == 0
    parts = [tmp_path / f"p{i}.csv" for i in range(2)]
    for i, part in enumerate(parts):
        assert main(["predict", out, images, "--csv", str(part), "--shard", f"{i}/2"]) == 0
    assert main(["merge-predictions", *map(str, parts), "--out", str(merged)]) == 0
    text = full.read_text()
    resumed.write_text(text[: text.index("\n", 300) + 5])  # a run killed mid-row
    capsys.readouterr()
    assert main(["predict", out, images, "--csv", str(resumed), "--resume", "--chunk-size", "7"]) == 0
    assert "dropped a half-written last line" in capsys.readouterr().err
    assert merged.read_bytes() == full.read_bytes() == resumed.read_bytes()


def test_submission_is_id_labels_and_top_k_is_refused(run, tmp_path, capsys):
    out, images, expected, _ = run
    sub = tmp_path / "sub.csv"
    assert main(["predict", out, images, "--submission", str(sub)]) == 0
    assert "wrote a labels submission" in capsys.readouterr().out
    assert read(sub) == [["id", "labels"], *([p.path.stem, " ".join(p.labels)] for p in expected)]
    assert main(["predict", out, images, "--top-k", "2"]) == 2
    err = capsys.readouterr().err
    assert "--top-k is for single-label models" in err and err.count("\n") == 1
    assert main(["predict", out, images, "--submission", str(sub), "--submission-format", "label"]) == 2
    assert "use the labels or probs format" in capsys.readouterr().err


def test_the_onnx_export_predicts_the_same_labels(run, tmp_path, capsys):
    out, images, expected, _ = run
    model = tmp_path / "m.onnx"
    assert main(["export", out, "--out", str(model), "--check", images]) == 0
    assert "same labels on 60/60" in capsys.readouterr().out
    assert main(["predict", str(model), images, "--csv", str(tmp_path / "onnx.csv")]) == 0
    assert [row[1].split() for row in read(tmp_path / "onnx.csv")[1:]] == [p.labels for p in expected]
