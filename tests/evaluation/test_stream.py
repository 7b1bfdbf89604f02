"""Streamed predictions: chunked appends, resume, shards and merging (on a fake model, no torch)."""

import hashlib
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from graft import GraftError
from graft.data.selection import expand_paths
from graft.evaluation.stream import (
    csv_header,
    merge_prediction_csvs,
    parse_shard,
    predict_to_csv,
    shard_of,
)
from tests.conftest import make_image_folder, write_image


class FakeModel:
    """Probabilities from a hash of each file's bytes; files named ``bad*`` are undecodable."""

    def __init__(self) -> None:
        self.classes = ["ant", "bee", "cat", "dog"]
        self.calls: list[list[Path]] = []

    def predict_probs(self, paths):
        files = expand_paths(paths)
        self.calls.append(files)
        kept, rows = [], []
        for f in files:
            if f.name.startswith("bad"):
                warnings.warn(f"skipped {f}: the image could not be decoded", stacklevel=2)
                continue
            digest = hashlib.blake2b(f.read_bytes(), digest_size=4).digest()
            logits = np.array(list(digest), dtype=np.float64) / 40
            kept.append(f)
            rows.append(np.exp(logits) / np.exp(logits).sum())
        return kept, np.array(rows).reshape(-1, len(self.classes))


@pytest.fixture
def folder(tmp_path):
    root = make_image_folder(tmp_path / "images", {"a": 9, "b": 8, "c": 8})
    (root / "b" / "bad_1.png").write_bytes(b"not a png")
    return root


def predict(folder, csv, **kwargs):
    model = FakeModel()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predict_to_csv(model, folder, csv, **kwargs)
    return result, model, [str(w.message) for w in caught]


@pytest.fixture
def reference(folder, tmp_path):
    """The CSV of one uninterrupted, unsharded top-2 run."""
    csv = tmp_path / "reference.csv"
    predict(folder, csv, top_k=2)
    return csv.read_text()


def test_rows_are_appended_chunk_by_chunk_in_listing_order(folder, tmp_path, reference):
    csv = tmp_path / "p.csv"
    seen = []
    model = FakeModel()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predict_to_csv(
            model,
            folder,
            csv,
            top_k=2,
            chunk_size=8,
            on_chunk=lambda preds, probs: seen.append(csv.read_text()),
        )
    assert [len(c) for c in model.calls] == [8, 8, 8, 2]  # 26 files
    # After each chunk the file already holds every row so far (it is appended, not rewritten).
    assert [text.count("\n") for text in seen] == [1 + 8, 1 + 16, 1 + 23, 1 + 25]
    assert all(reference.startswith(text) for text in seen)
    assert csv.read_text() == reference
    assert (result.written, result.undecodable, result.resumed) == (25, 1, 0)
    assert [str(w.message) for w in caught] == [
        f"skipped {folder / 'b' / 'bad_1.png'}: the image could not be decoded"
    ]
    lines = reference.splitlines()
    assert lines[0] == "path,label,prob,label_2,prob_2"
    paths = [line.split(",")[0] for line in lines[1:]]
    assert paths == [str(p) for p in expand_paths(folder) if p.name != "bad_1.png"]
    assert all(len(line.split(",")[2]) == 8 for line in lines[1:])  # 0.xxxxxx


def test_header_follows_top_k_clamped_to_the_classes(folder, tmp_path):
    assert csv_header(["x", "y", "z"], 1) == ["path", "label", "prob"]
    assert csv_header(["x", "y", "z"], 9) == [
        "path",
        "label",
        "prob",
        "label_2",
        "prob_2",
        "label_3",
        "prob_3",
    ]
    predict(folder, tmp_path / "k9.csv", top_k=9)
    assert (tmp_path / "k9.csv").read_text().splitlines()[0] == ",".join(csv_header(FakeModel().classes, 4))


def test_without_resume_an_existing_csv_is_replaced(folder, tmp_path, reference):
    csv = tmp_path / "p.csv"
    csv.write_text("something,else\n1,2\n")
    predict(folder, csv, top_k=2)
    assert csv.read_text() == reference


@pytest.mark.parametrize("cut", ["mid-row", "after-row", "mid-header", "empty", "missing"])
def test_resume_after_a_kill_gives_the_uninterrupted_csv(folder, tmp_path, reference, cut):
    csv = tmp_path / "p.csv"
    sixth_row_end = [i for i, c in enumerate(reference) if c == "\n"][6] + 1
    keep = {"mid-row": sixth_row_end + 17, "after-row": sixth_row_end, "mid-header": 9, "empty": 0}.get(cut)
    if keep is not None:
        csv.write_text(reference[:keep])
    result, model, messages = predict(folder, csv, top_k=2, resume=True, chunk_size=5)
    assert csv.read_text() == reference
    before = 6 if cut in ("mid-row", "after-row") else 0
    assert result.resumed == before and result.written == 25 - before
    assert sum(len(c) for c in model.calls) == 26 - before  # files already there are not predicted again
    dropped = [m for m in messages if "dropped a half-written last line" in m]
    assert len(dropped) == (1 if cut in ("mid-row", "mid-header") else 0)


def test_resume_of_a_finished_csv_retries_only_the_undecodable_file(folder, tmp_path, reference):
    csv = tmp_path / "p.csv"
    csv.write_text(reference)
    result, model, messages = predict(folder, csv, top_k=2, resume=True)
    assert csv.read_text() == reference
    assert [[f.name for f in c] for c in model.calls] == [["bad_1.png"]]
    assert (result.written, result.resumed, result.undecodable) == (0, 25, 1)
    assert any("bad_1.png" in m for m in messages)


def test_resume_refuses_a_csv_with_other_columns_and_leaves_it_alone(folder, tmp_path, reference):
    csv = tmp_path / "p.csv"
    csv.write_text(reference + "half,a,row")
    with pytest.raises(GraftError, match=r"holds top-2 predictions .* resume it with --top-k 2"):
        predict(folder, csv, top_k=1, resume=True)
    assert csv.read_text() == reference + "half,a,row"
    for text in ("id,label\nx,y\n", "id,lab", "path,label,prob,label_2\n"):
        csv.write_text(text)
        with pytest.raises(GraftError, match="not a predictions CSV written by graft predict"):
            predict(folder, csv, top_k=2, resume=True)
        assert csv.read_text() == text
    lines = reference.splitlines(keepends=True)
    lines[3] = lines[3].replace("\n", ",extra\n")
    csv.write_text("".join(lines))
    with pytest.raises(GraftError, match=r"row .* has 6 fields, not 5"):
        predict(folder, csv, top_k=2, resume=True)


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2", "0/0", "1/2/3", "", "0/2x"])
def test_bad_shards_are_refused_in_one_line(text):
    with pytest.raises(
        GraftError, match=r"^--shard takes I/N with 0 <= I < N, e.g. 0/2 and 1/2 \(got '.*'\)$"
    ):
        parse_shard(text)


def test_shard_syntax():
    assert parse_shard("0/2") == (0, 2) and parse_shard("2/3") == (2, 3) and parse_shard(" 0 / 1 ") == (0, 1)


@pytest.mark.parametrize("n", [2, 3])
def test_shards_are_disjoint_complete_and_merge_into_the_unsharded_csv(folder, tmp_path, reference, n):
    parts = []
    for i in range(n):
        parts.append(tmp_path / f"part{i}.csv")
        result, _, _ = predict(folder, parts[-1], top_k=2, shard=(i, n), chunk_size=3)
        assert result.other_shards == 26 - sum(1 for f in expand_paths(folder) if shard_of(str(f), n) == i)
    rows = [set(p.read_text().splitlines()[1:]) for p in parts]
    assert all(r for r in rows)  # 25 files: every shard gets some
    assert sum(len(r) for r in rows) == len(set().union(*rows)) == 25
    assert set().union(*rows) == set(reference.splitlines()[1:])
    out = tmp_path / "merged.csv"
    assert merge_prediction_csvs(list(reversed(parts)), out) == 25
    assert out.read_text() == reference


def test_adding_files_moves_no_file_to_another_shard(folder, tmp_path):
    before = {str(f): shard_of(str(f), 3) for f in expand_paths(folder)}
    for i in range(30):
        write_image(folder / "new" / f"n_{i}.png", (10, 20, 30), seed=i)
    after = {str(f): shard_of(str(f), 3) for f in expand_paths(folder)}
    assert {k: after[k] for k in before} == before
    assert {shard_of(str(f), 3) for f in (folder / "new").iterdir()} == {0, 1, 2}


def test_resume_refuses_the_csv_of_another_shard(folder, tmp_path):
    csv = tmp_path / "part0.csv"
    predict(folder, csv, shard=(0, 2))
    with pytest.raises(GraftError, match="not in shard 1/2: wrong CSV"):
        predict(folder, csv, shard=(1, 2), resume=True)
    result, _, _ = predict(folder, csv, shard=(0, 2), resume=True)
    assert result.written == 0


def test_merge_sorts_as_the_folder_listing_does(tmp_path):
    # "a-b" < "a/" as strings, but a folder's listing (and so an unsharded run) puts a/ first.
    root = tmp_path / "r"
    for name in ("a-b/x.png", "a/x.png", "a/b/c.png", "a/B.png", "a/a-b.png", "z.png", "a.png"):
        write_image(root / name, (200, 0, 0))
    listing = [str(p) for p in expand_paths(root)]
    assert listing != sorted(listing)  # the case this test is about
    header = "path,label,prob\n"
    (tmp_path / "p1.csv").write_text(header + "".join(f"{p},x,0.5\n" for p in listing[::2]))
    (tmp_path / "p2.csv").write_text(header + "".join(f"{p},x,0.5\n" for p in reversed(listing[1::2])))
    merge_prediction_csvs([tmp_path / "p1.csv", tmp_path / "p2.csv"], tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text() == header + "".join(f"{p},x,0.5\n" for p in listing)


def test_merge_refuses_duplicates_other_columns_and_half_written_parts(tmp_path):
    p1, p2, out = tmp_path / "p1.csv", tmp_path / "p2.csv", tmp_path / "m.csv"
    p1.write_text("path,label,prob\na.png,x,0.5\nb.png,x,0.5\n")
    p2.write_text("path,label,prob\nb.png,y,0.6\n")
    with pytest.raises(GraftError, match=f"b.png is in both {p1} and {p2}"):
        merge_prediction_csvs([p1, p2], out)
    p2.write_text("path,label,prob,label_2,prob_2\nc.png,y,0.6,x,0.4\n")
    with pytest.raises(
        GraftError, match=r"has columns path,label,prob,label_2,prob_2, but .* has path,label,prob"
    ):
        merge_prediction_csvs([p1, p2], out)
    p2.write_text("path,label,prob\nc.png,y,0.")
    with pytest.raises(GraftError, match="half-written line: complete it with graft predict --resume"):
        merge_prediction_csvs([p1, p2], out)
    p2.write_text("id,label\nc,y\n")
    with pytest.raises(GraftError, match="not a predictions CSV"):
        merge_prediction_csvs([p1, p2], out)
    with pytest.raises(GraftError, match="no such file"):
        merge_prediction_csvs([p1, tmp_path / "missing.csv"], out)
    assert not out.exists()
    # A part may be the output: merging a resumed CSV on itself puts late rows back in order.
    p1.write_text("path,label,prob\nb.png,x,0.5\na.png,x,0.5\n")
    assert merge_prediction_csvs([p1], p1) == 2
    assert p1.read_text() == "path,label,prob\na.png,x,0.5\nb.png,x,0.5\n"


def test_a_file_deleted_after_listing_is_skipped_with_a_warning(folder, tmp_path):
    victim = folder / "c" / "c_7.png"
    result, _, messages = predict(
        folder, tmp_path / "p.csv", chunk_size=4, on_chunk=lambda preds, probs: victim.unlink(missing_ok=True)
    )
    assert f"skipped {victim}: it no longer exists" in messages
    assert result.written == 24 and "c_7.png" not in (tmp_path / "p.csv").read_text()


def test_the_streaming_module_does_not_import_torch():
    code = "import sys; import graft.evaluation.stream; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


class FakeMultiLabel(FakeModel):
    """Per-class sigmoid-like probabilities from the same hash, with per-class thresholds."""

    def __init__(self) -> None:
        from graft.inference.decision import Decision

        super().__init__()
        self.decision = Decision(multi_label=True, thresholds=(0.3, 0.4, 0.5, 0.6))

    def predict_probs(self, paths):
        kept, probs = super().predict_probs(paths)
        # Independent per class, spread over [0, 1]: the hash's bytes again.
        logits = np.log(probs) - np.log(probs).min(1, keepdims=True)
        return kept, (logits * 40 % 256) / 255


def test_multi_label_csv_has_the_answered_labels_and_every_probability(folder, tmp_path):
    csv = tmp_path / "ml.csv"
    model = FakeMultiLabel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the undecodable file
        result = predict_to_csv(model, folder, csv, chunk_size=4)
    lines = csv.read_text().splitlines()
    assert lines[0] == "path,labels,ant,bee,cat,dog" == ",".join(csv_header(model.classes, 1, True))
    assert result.written == len(lines) - 1 == 25
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept, probs = model.predict_probs(folder)
    thresholds = np.array(model.decision.thresholds)
    seen_empty = seen_several = False
    for line, path, row in zip(lines[1:], kept, probs, strict=True):
        name, labels, *cells = line.split(",")
        assert name == str(path) and cells == [f"{p:.6f}" for p in row]
        answered = [c for c, p, t in zip(model.classes, row, thresholds, strict=True) if p >= t]
        assert sorted(labels.split()) == sorted(answered)
        assert labels.split() == sorted(answered, key=lambda c: -row[model.classes.index(c)])
        seen_empty |= not answered
        seen_several |= len(answered) > 1
    assert seen_empty and seen_several  # the made-up probabilities cover both cases


def test_multi_label_csv_resumes_shards_and_merges(folder, tmp_path):
    def run(csv, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = predict_to_csv(FakeMultiLabel(), folder, csv, **kwargs)
        return result, " ".join(str(w.message) for w in caught)

    full = tmp_path / "full.csv"
    run(full)
    parts = [tmp_path / "p0.csv", tmp_path / "p1.csv"]
    for i, part in enumerate(parts):
        run(part, shard=(i, 2))
    merged = tmp_path / "merged.csv"
    merge_prediction_csvs(parts, merged)
    assert merged.read_bytes() == full.read_bytes()
    resumed = tmp_path / "resumed.csv"
    text = full.read_text()
    resumed.write_text(text[: text.index("\n", 150) + 7])  # killed mid-row
    result, said = run(resumed, resume=True, chunk_size=3)
    assert "half-written" in said
    assert result.resumed >= 1 and resumed.read_bytes() == full.read_bytes()
    # A single-label CSV is not continued by a multi-label model, nor the other way round.
    single = tmp_path / "single.csv"
    predict(folder, single)
    with pytest.raises(GraftError, match="another model's"):
        run(single, resume=True)
    with pytest.raises(GraftError, match="another model's"):
        predict(folder, full, resume=True)
