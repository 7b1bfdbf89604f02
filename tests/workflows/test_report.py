"""report.html from a really trained (tiny) learner: sections, tables that agree with evaluate, PNGs."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from graft import ImageData, Learner, load_learner
from graft.workflows.report import SECTIONS, write_report
from tests.conftest import make_image_folder

PNGS = ("curves", "confusion", "confusion_normalized", "top_losses", "predictions")


class ReportParser(HTMLParser):
    """Section ids, tables (id -> rows of cell texts) and embedded images of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[tuple[str, bytes]] = []
        self.external: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "table" and attrs.get("id"):
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "img":
            src = attrs["src"]
            if src.startswith("data:image/png;base64,"):
                self.images.append((attrs.get("alt", ""), base64.b64decode(src.split(",", 1)[1])))
            else:
                self.external.append(src)
        elif tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
            self.external.append(attrs.get("href") or attrs.get("src"))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_report(path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def confusion_from_html(report: ReportParser) -> np.ndarray:
    rows = report.tables["confusion-counts"][1:]  # after the header row
    return np.array([[int(c) for c in row[1:]] for row in rows])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 10, "green": 10, "blue": 10}, size=(48, 40), seed=1)
    make_image_folder(root / "val", {"red": 4, "green": 5, "blue": 3}, size=(48, 40), seed=2)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    learn.fit(
        mode="finetune",
        freeze_epochs=3,
        epochs=1,
        batch_size=8,
        lr=0.02,
        augment=False,
        workers=0,
        log=lambda _: None,
    )
    run = learn.save(tmp_path_factory.mktemp("run"))
    return root, learn, run


@pytest.fixture(scope="module")
def report(trained):
    _, learn, run = trained
    path = write_report(learn, out=run, top_losses=4, samples=6)
    return path, parse_report(path)


def test_every_section_is_present_in_order(report):
    _, parsed = report
    assert parsed.sections == list(SECTIONS)


def test_self_contained_every_image_embedded_and_decodable(report):
    path, parsed = report
    assert parsed.external == []
    assert len(parsed.images) == len(PNGS)
    for alt, data in parsed.images:
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format == "PNG" and min(image.size) > 100, alt
    for name in PNGS:  # also written beside the page, byte-identical to what is embedded
        assert (path.parent / f"{name}.png").read_bytes() in {d for _, d in parsed.images}


def test_confusion_table_agrees_with_evaluate(trained, report):
    _, learn, _ = trained
    _, parsed = report
    cm = confusion_from_html(parsed)
    result = learn.evaluate()
    assert cm.sum() == 12 == result.n
    assert cm.tolist() == result.confusion.tolist()
    header = parsed.tables["confusion-counts"][0]
    assert header[1:] == learn.classes
    normalised = np.array([[float(c) for c in row[1:]] for row in parsed.tables["confusion-normalized"][1:]])
    np.testing.assert_allclose(normalised.sum(1), 1.0, atol=0.011)


def test_per_class_table_and_history(trained, report):
    _, learn, _ = trained
    _, parsed = report
    per_class = parsed.tables["per-class-table"][1:]
    assert [row[0] for row in per_class] == learn.classes
    assert [int(row[4]) for row in per_class] == [3, 5, 4]  # support: blue, green, red
    history = parsed.tables["history"][1:]
    assert [row[1] for row in history] == ["frozen"] * 3 + ["unfrozen"]
    counts = {row[0]: row[1:] for row in parsed.tables["split-counts"][1:]}
    assert counts["total"] == ["30", "12"]


def test_loaded_run_reports_the_same_confusion(trained, report, tmp_path):
    root, _, run = trained
    _, parsed = report
    loaded = load_learner(run, device="cpu")
    again = parse_report(write_report(loaded, loaded.interpret(root), tmp_path))
    assert confusion_from_html(again).tolist() == confusion_from_html(parsed).tolist()
    assert again.sections == list(SECTIONS)  # curves come from history.csv
    assert len(again.tables["history"]) == 5


def test_class_names_are_escaped(tmp_path):
    root = tmp_path / "data"
    name = "<i>x&y"  # a folder name cannot hold "/", so no closing tag
    make_image_folder(root / "train", {name: 4, "plain": 4}, seed=1)
    make_image_folder(root / "val", {name: 2, "plain": 2}, seed=2)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32)
    learn.fit(mode="features", epochs=1, batch_size=4, workers=0, log=lambda _: None)
    path = write_report(learn, out=tmp_path / "run")
    text = path.read_text(encoding="utf-8")
    assert name not in text and "&lt;i&gt;x&amp;y" in text
    assert parse_report(path).tables["confusion-counts"][0][1] == name
