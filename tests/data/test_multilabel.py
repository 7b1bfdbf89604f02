"""Multi-label datasets (``id,labels`` CSVs), class counts and class-balanced sampling."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from graft.data.dataset import ImageData, Sample
from graft.data.loaders import BalancedSampler, balanced_weights, make_loader
from graft.data.selection import eval_samples
from graft.infrastructure.errors import GraftError


def _dataset(root: Path, rows: list[tuple[str, str]], header: str = "id,labels") -> Path:
    """A flat images/ folder with one small image per row, and labels.csv."""
    (root / "images").mkdir(parents=True)
    rng = random.Random(0)
    for key, _ in rows:
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (24, 24), colour).save(root / "images" / f"{key}.png")
    lines = [header] + [f"{key},{labels}" for key, labels in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _rows(n: int = 40) -> list[tuple[str, str]]:
    sets = ["cat", "dog", "cat dog", "", "bird cat", "bird"]
    return [(f"i{i:03d}", sets[i % len(sets)]) for i in range(n)]


def test_a_labels_column_is_read_as_space_separated_labels(tmp_path):
    root = _dataset(tmp_path / "d", _rows())
    data = ImageData.from_folder(root, labels="labels.csv", valid_split=0.25)
    assert data.multi_label and data.classes == ["bird", "cat", "dog"]
    everything = [s for split in data.splits.values() for s in split]
    assert len(everything) == 40 and all(isinstance(s.label, tuple) for s in everything)
    by_name = {s.path.stem: s.label for s in everything}
    assert by_name["i002"] == (1, 2) and by_name["i003"] == () and by_name["i004"] == (0, 1)
    assert any("no labels: none of the classes" in n for n in data.notes)
    val = data.targets("val")
    assert val.shape == (len(data.splits["val"]), 3) and val.dtype == torch.float32
    assert sorted(val.sum(0).tolist()) == sorted(data.class_counts("val"))
    # the split holds out about a quarter of each label combination's rarest label
    assert 8 <= len(data.splits["val"]) <= 12 and all(data.class_counts("val"))
    summary = data.summary()
    assert "multi-label" in summary and "(no label)" in summary


def test_the_record_round_trips_label_lists(tmp_path):
    root = _dataset(tmp_path / "d", _rows())
    data = ImageData.from_folder(root, labels="labels.csv")
    record = data.to_record()
    assert record["multi_label"] is True
    again = ImageData.from_record(root, record)
    assert again.multi_label and again.splits == data.splits
    assert torch.equal(again.targets("train"), data.targets("train"))


def test_single_label_csvs_are_unchanged_and_multi_label_can_be_forced(tmp_path):
    rows = [(f"i{i:02d}", "a b" if i % 2 else "b") for i in range(20)]
    root = _dataset(tmp_path / "d", rows, header="id,label")
    plain = ImageData.from_folder(root, labels="labels.csv")
    assert not plain.multi_label and plain.classes == ["a b", "b"]  # a class name with a space
    forced = ImageData.from_folder(root, labels="labels.csv", multi_label=True)
    assert forced.multi_label and forced.classes == ["a", "b"]
    with pytest.raises(GraftError, match="needs a labels CSV"):
        ImageData.from_folder(tmp_path / "d" / "images", multi_label=True)


def test_bad_rows_get_notes_not_crashes(tmp_path):
    rows = [*_rows(30), ("i000", "dog"), ("i001", "dog"), ("", "cat")]
    rows[5] = ("i005", "cat cat dog")
    rows[29] = ("i029", "nan")  # pandas' NaN for an empty list
    root = _dataset(tmp_path / "d", [r for r in rows if r[0]])
    text = (root / "labels.csv").read_text() + ",cat\n"  # a row without an id
    (root / "labels.csv").write_text(text)
    data = ImageData.from_folder(root, labels="labels.csv")
    notes = " | ".join(data.notes)
    assert "1 row of labels.csv lists a label twice; counted once" in notes
    assert "1 row of labels.csv repeats an id with other labels; kept the first" in notes
    assert "without an id ignored" in notes
    labels = {s.path.stem: s.label for split in data.splits.values() for s in split}
    assert labels["i005"] == (1, 2)  # cat, dog: once each
    assert labels["i029"] == () and "holds a missing-value marker (e.g. nan): none of the classes" in notes
    assert labels["i000"] == (1,)  # its first row: cat


def test_numeric_class_names_stay_names(tmp_path):
    rows = [(f"i{i:02d}", ["1", "10 2", "2", "1 10"][i % 4]) for i in range(24)]
    root = _dataset(tmp_path / "d", rows)
    data = ImageData.from_folder(root, labels="labels.csv")
    assert data.classes == ["1", "10", "2"]  # sorted as text, never as numbers
    assert ImageData.from_record(root, data.to_record()).classes == ["1", "10", "2"]


def test_labels_the_model_never_saw_are_refused_and_fewer_than_two_classes_too(tmp_path):
    data = ImageData.from_folder(_dataset(tmp_path / "a", _rows()), labels="labels.csv")
    with pytest.raises(GraftError, match="classes unknown to the model: bird"):
        eval_samples(data, "val", ["cat", "dog"])
    # the model's class order may differ from the data's: the label tuples follow it
    samples, _ = eval_samples(data, "val", ["dog", "cat", "bird"])
    names = {s.path: {data.classes[i] for i in s.label} for s in data.splits["val"]}
    assert all({["dog", "cat", "bird"][i] for i in s.label} == names[s.path] for s in samples)
    with pytest.raises(GraftError, match="needs at least two"):
        ImageData.from_folder(_dataset(tmp_path / "b", [("a", "cat"), ("b", "")]), labels="labels.csv")


def test_balanced_sampler_draws_classes_about_equally(tmp_path):
    samples = [Sample(Path(f"{i}.png"), 0) for i in range(95)] + [
        Sample(Path(f"b{i}.png"), 1) for i in range(5)
    ]
    weights = balanced_weights(samples)
    assert weights[0] == pytest.approx(1 / 95) and weights[-1] == pytest.approx(1 / 5)
    sampler = BalancedSampler(weights, seed=3)
    sampler.set_epoch(1)
    drawn = list(sampler)
    assert len(drawn) == 100 and all(epoch == 1 for _, epoch in drawn)
    share = Counter(samples[i].label for i, _ in drawn)[1] / 100
    assert 0.35 < share < 0.65  # 5% of the images, about half of the draws
    assert drawn == list(sampler)  # the same epoch draws the same
    sampler.set_epoch(2)
    assert drawn != list(sampler)


def test_a_multi_label_loader_yields_zero_one_rows(tmp_path):
    root = _dataset(tmp_path / "d", _rows(12))
    data = ImageData.from_folder(root, labels="labels.csv", valid_split=0)
    loader = make_loader(data.splits["train"], lambda im: torch.zeros(3, 8, 8), batch_size=12, num_classes=3)
    (batch,) = list(loader)
    assert torch.equal(batch.labels, data.targets("train")[batch.indices])
