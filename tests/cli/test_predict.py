"""graft predict streamed to a CSV with a real (tiny) run: chunks, --resume, --shard and merge-predictions."""

import csv
from pathlib import Path

import pytest

from graft import ImageData, Learner
from graft.cli.main import main
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained for seconds, and a folder of 29 new images (one of them undecodable)."""
    root = tmp_path_factory.mktemp("stream")
    make_image_folder(root / "train", {"red": 6, "green": 6, "blue": 6}, size=(50, 40), seed=1)
    make_image_folder(root / "val", {"red": 2, "green": 2, "blue": 2}, size=(50, 40), seed=2)
    new = make_image_folder(root / "new", {"red": 10, "green": 9, "blue": 9}, size=(50, 40), seed=3)
    (new / "green" / "broken.jpg").write_bytes(b"not a jpeg")
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    learn.fit(mode="features", epochs=2, batch_size=8, lr=0.02, augment=False, workers=0, log=lambda _: None)
    return str(learn.save(root / "run")), str(new)


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    """The CSV of one plain top-2 run, with the default chunk size (all 29 files in one chunk)."""
    csv = tmp_path_factory.mktemp("ref") / "ref.csv"
    assert main(["predict", *run, "--top-k", "2", "--csv", str(csv)]) == 0
    return csv.read_text()


def test_small_chunks_write_the_same_bytes(run, reference, tmp_path, capsys):
    csv = tmp_path / "p.csv"
    assert main(["predict", *run, "--top-k", "2", "--csv", str(csv), "--chunk-size", "3", "--print"]) == 0
    assert csv.read_text() == reference
    assert reference.count("\n") == 1 + 28
    out = capsys.readouterr().out
    assert f"wrote 28 predictions to {csv} (1 undecodable)" in out
    assert len([line for line in out.splitlines() if "\t" in line]) == 28


def test_two_shards_merged_are_the_unsharded_csv(run, reference, tmp_path, capsys):
    parts = [tmp_path / "part0.csv", tmp_path / "part1.csv"]
    for i, part in enumerate(parts):
        assert main(["predict", *run, "--top-k", "2", "--csv", str(part), "--shard", f"{i}/2"]) == 0
    out = capsys.readouterr().out
    assert "shard 0/2:" in out and "shard 1/2:" in out
    rows = [part.read_text().count("\n") - 1 for part in parts]
    assert min(rows) > 0 and sum(rows) == 28
    merged = tmp_path / "merged.csv"
    assert main(["merge-predictions", *map(str, parts), "--out", str(merged)]) == 0
    assert f"wrote 28 predictions from 2 files to {merged}" in capsys.readouterr().out
    assert merged.read_text() == reference


def test_resume_after_a_half_written_line(run, reference, tmp_path, capsys):
    csv = tmp_path / "p.csv"
    csv.write_text(reference[: reference.index("\n", 400) + 25])  # some rows, then half a row
    done = csv.read_text().count("\n") - 1
    assert main(["predict", *run, "--top-k", "2", "--csv", str(csv), "--resume", "--chunk-size", "5"]) == 0
    assert csv.read_text() == reference
    out, err = capsys.readouterr()
    assert f"wrote {28 - done} predictions to {csv} ({done} already there; 1 undecodable)" in out
    assert "dropped a half-written last line" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "1/1", "--csv", "{tmp}/p.csv"], "--shard takes I/N with 0 <= I < N"),
        (["--shard", "one/two"], "--shard takes I/N"),
        (["--resume"], "--resume needs --csv FILE"),
        (
            ["--csv", "{tmp}/p.csv", "--shard", "0/2", "--submission", "{tmp}/s.csv"],
            "not with --resume or --shard",
        ),
        (["--csv", "{tmp}/p.csv", "--resume", "--submission", "{tmp}/s.csv"], "not with --resume or --shard"),
        (["--csv", "{tmp}/top2.csv", "--resume"], "resume it with --top-k 2"),
        (["--csv", "{tmp}/other.csv", "--resume"], "not a predictions CSV written by graft predict"),
        (["--csv", "{tmp}/p.csv", "--chunk-size", "0"], "chunk size must be at least 1"),
        (
            ["--sample-submission", "{tmp}/other.csv"],
            "--sample-submission shapes a submission: add --submission",
        ),
        (["--submission-format", "label"], "--submission-format shapes a submission: add --submission FILE"),
        (["--submission", "{tmp}/s.csv", "--sample-submission", "{tmp}/none.csv"], "none.csv not found"),
        (
            ["--submission", "{tmp}/s.csv", "--sample-submission", "{tmp}/top2.csv"],
            "3 model classes are not a column of top2.csv",
        ),
    ],
)
def test_bad_streaming_options_are_one_line_and_exit_2(run, tmp_path, capsys, args, message):
    (tmp_path / "top2.csv").write_text("path,label,prob,label_2,prob_2\n")
    (tmp_path / "other.csv").write_text("id,label\n")
    assert main(["predict", *run, *(a.format(tmp=tmp_path) for a in args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graft: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.csv").exists()


def test_a_sample_submission_shapes_the_submission(run, tmp_path, capsys):
    """Its header (a class the model lacks: 0) and its id order; ids without an image are warned about."""
    stems = sorted(p.stem for p in Path(run[1]).rglob("*.*"))  # broken.jpg too: it gets no row
    sample = tmp_path / "sample.csv"
    sample.write_text("id,red,purple,blue,green\n" + "".join(f"{s},0,0,0,0\n" for s in reversed(stems)))
    sub = tmp_path / "sub.csv"
    assert main(["predict", *run, "--submission", str(sub), "--sample-submission", str(sample)]) == 0
    out, err = capsys.readouterr()
    assert "note: 1 column of sample.csv is not a class of the model: probability 0 ('purple')" in out
    assert f"wrote a probs submission of 28 rows, 5 columns from sample.csv, to {sub}" in out
    assert "graft: warning: 1 id of sample.csv not predicted ('broken')" in err
    with open(sub, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "red", "purple", "blue", "green"]
    assert [r[0] for r in table[1:]] == [s for s in reversed(stems) if s != "broken"]
    assert {r[2] for r in table[1:]} == {"0"}
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-4 for r in table[1:])

    labels = tmp_path / "sampleSubmission.csv"
    labels.write_text("id,label\n" + "".join(f"{s},cat\n" for s in stems if s != "broken"))
    assert main(["predict", *run, "--submission", str(sub), "--sample-submission", str(labels)]) == 0
    assert f"wrote a label submission of 28 rows, 2 columns from sampleSubmission.csv, to {sub}" in (
        capsys.readouterr().out
    )
    with open(sub, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "label"] and [r[0] for r in table[1:]] == [s for s in stems if s != "broken"]
    assert {r[1] for r in table[1:]} <= {"red", "green", "blue"}


def test_merge_predictions_refuses_a_duplicate_in_one_line(tmp_path, capsys):
    part = tmp_path / "p.csv"
    part.write_text("path,label,prob\na.png,x,0.5\n")
    assert main(["merge-predictions", str(part), str(part), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"graft: error: a.png is in both {part} and {part}"
    assert not (tmp_path / "m.csv").exists()
