"""doctor.html: thumbnails (upright, small, one decode per file), cards per finding, escaping."""

from __future__ import annotations

import base64
import io
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import graft.workflows.doctor_page as doctor_page
from graft.evaluation.findings import ISSUES, Finding
from graft.workflows.doctor_page import render_page, thumbnail_uri, write_page
from tests.conftest import write_image

URI = "data:image/jpeg;base64,"


class PageParser(HTMLParser):
    """What a test checks in a page: sections, cards, images, tables, text and any script."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: set[str] = set()  # every attribute name on the page
        self.sections: list[str] = []  # data-issue of each issue section, in page order
        self.cards: list[dict] = []  # {"issue", "path", "score", "imgs", "placeholders", "text"}
        self.rows: dict[str, list[list[str]]] = {}  # table id -> rows of cell texts
        self.nav: list[str] = []
        self.text: list[str] = []
        self._stack: list[tuple[str, str]] = []  # (tag, class) of open elements
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._capture: str | None = None  # card field being read

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        self.tags.append(tag)
        self.attrs.update(a)
        if tag not in ("img", "meta"):
            self._stack.append((tag, cls))
        if tag == "section" and "data-issue" in a:
            self.sections.append(a["data-issue"])
        elif tag == "div" and cls.split()[:1] == ["card"]:
            self.cards.append(
                {"issue": self.sections[-1], "path": "", "score": "", "imgs": [], "placeholders": 0}
            )
        elif tag == "img" and self.cards and self._in("card"):
            self.cards[-1]["imgs"].append(a["src"])
        elif tag == "div" and cls == "ph" and self._in("card"):
            self.cards[-1]["placeholders"] += 1
        elif tag == "div" and cls == "path" and self.cards:
            self._capture = "path"
        elif tag == "span" and cls == "score":
            self._capture = "score"
        elif tag == "table":
            self._table = a.get("id", "")
            self.rows[self._table] = []
        elif tag == "tr":
            self.rows[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a" and self._in_tag("nav"):
            self.nav.append(a["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[self._table][-1].append("".join(self._cell))
            self._cell = None
        if tag in ("div", "span"):
            self._capture = None
        if self._stack and tag not in ("img", "meta"):
            self._stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._capture:
            self.cards[-1][self._capture] += data

    def _in(self, cls: str) -> bool:
        return any(c.split()[:1] == [cls] for _, c in self._stack)

    def _in_tag(self, tag: str) -> bool:
        return any(t == tag for t, _ in self._stack)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def decode(uri: str) -> Image.Image:
    assert uri.startswith(URI)
    im = Image.open(io.BytesIO(base64.b64decode(uri[len(URI) :])))
    assert im.format == "JPEG"
    return im


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    """A few small real images, one corrupt file and a missing one."""
    root = tmp_path / "data"
    paths = {
        "cat1": write_image(root / "train" / "cat" / "c1.png", (220, 40, 40), (64, 48)),
        "cat2": write_image(root / "train" / "cat" / "c2.jpg", (220, 40, 40), (48, 64), seed=1),
        "dog1": write_image(root / "train" / "dog" / "d1.png", (40, 70, 220), (50, 50), seed=2),
        "dog2": write_image(root / "val" / "dog" / "d2.png", (40, 70, 220), (80, 20), seed=3),
        "dog3": write_image(root / "test" / "dog" / "d3.webp", (40, 70, 220), (30, 30), seed=4),
    }
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths["bad"] = bad
    paths["root"] = root
    return paths


def findings_for(d: dict[str, Path]) -> list[Finding]:
    return [
        Finding(d["dog3"], "outlier", 0.4, label="dog", split="test", detail="far from its class"),
        Finding(d["cat1"], "label_error", 0.61, "relabel", "dog", "cat", "train", detail="looks like dog"),
        Finding(d["bad"], "unreadable", 1.0, "quarantine", label="dog", split="train", detail="truncated"),
        Finding(d["cat2"], "label_error", 0.93, "review", "dog", "cat", "train"),
        Finding(d["dog2"], "leak", 0.99, "quarantine", label="dog", split="val", other=d["dog1"]),
        Finding(d["dog1"], "duplicate", 0.97, "review", label="dog", split="train", other=d["cat1"]),
        Finding(d["dog3"], "tiny", 0.2, "review", label="dog", split="test", detail="30x30"),
    ]


BALANCE = {"train": {"cat": 120, "dog": 30}, "val": {"cat": 12, "dog": 3}, "test": {"dog": 5}}


def test_every_finding_has_its_thumbnails_and_sections_follow_issues_order(dataset):
    findings = findings_for(dataset)
    page = render_page(findings, dataset["root"], ["7 findings in 6 images"], BALANCE, ["cat is 4x dog"])
    p = parse(page)
    assert "script" not in p.tags and "link" not in p.tags  # self-contained, no JavaScript
    assert len(p.cards) == len(findings)
    # Every <img> on the page is an embedded thumbnail, one per image shown.
    assert page.count("<img") == sum(len(c["imgs"]) for c in p.cards) == page.count(URI)
    for card in p.cards:
        if card["issue"] == "unreadable":
            assert card["imgs"] == [] and card["placeholders"] == 1
        elif card["issue"] in ("leak", "duplicate"):
            assert len(card["imgs"]) == 2 and card["placeholders"] == 0  # side by side with the copy
        else:
            assert len(card["imgs"]) == 1 and card["placeholders"] == 0
        for uri in card["imgs"]:
            assert max(decode(uri).size) <= 160
    # Sections in ISSUES order, only the ones present, and the contents links to each.
    present = {f.issue for f in findings}
    assert p.sections == [k for k in ISSUES if k in present]
    assert p.nav == ["#balance", *(f"#issue-{k}" for k in p.sections)]
    # Within a section, highest score first; scores with 3 decimals; paths relative to root.
    label_errors = [c for c in p.cards if c["issue"] == "label_error"]
    assert [c["path"] for c in label_errors] == ["train/cat/c2.jpg", "train/cat/c1.png"]
    assert [c["score"] for c in label_errors] == ["0.930", "0.610"]
    text = " ".join(p.text)
    assert "Likely label errors" in text and "(2)" in text
    assert "relabel → dog" in text and "looks like dog" in text and "copy of" in text
    assert "7 findings in 6 images" in text and "cat is 4x dog" in text


def test_each_distinct_image_is_decoded_once_in_threads(dataset, monkeypatch):
    calls: list[tuple[Path, str]] = []
    real = doctor_page.load_image

    def counting(path, min_size=None):
        calls.append((Path(path), threading.current_thread().name))
        return real(path, min_size)

    monkeypatch.setattr(doctor_page, "load_image", counting)
    many = findings_for(dataset) * 40  # a few hundred findings over six files
    page = render_page(many, dataset["root"], [], BALANCE, [])
    decoded = [path for path, _ in calls]
    assert sorted(map(str, decoded)) == sorted({str(p) for p in decoded})  # each once
    assert set(decoded) == {dataset[k] for k in ("cat1", "cat2", "dog1", "dog2", "dog3")}
    assert all(name != threading.main_thread().name for _, name in calls)
    assert len(parse(page).cards) == len(many)


def test_unreadable_and_missing_files_give_placeholders_not_errors(dataset, tmp_path):
    assert thumbnail_uri(dataset["bad"]) is None
    assert thumbnail_uri(tmp_path / "missing.png") is None
    (tmp_path / "folder.jpg").mkdir()
    assert thumbnail_uri(tmp_path / "folder.jpg") is None
    findings = [
        Finding(tmp_path / "missing.png", "outlier", 0.5),  # vanished since the scan
        Finding(dataset["dog1"], "duplicate", 0.9, other=dataset["bad"]),
    ]
    p = parse(render_page(findings, dataset["root"], [], {}, []))
    assert [c["issue"] for c in p.cards] == ["duplicate", "outlier"]
    assert [c["placeholders"] for c in p.cards] == [1, 1]
    assert [len(c["imgs"]) for c in p.cards] == [1, 0]


def test_hostile_names_appear_only_escaped(tmp_path):
    root = tmp_path / "data"
    # A file name cannot hold "/", so the class folder carries the first half of the tag.
    script = write_image(root / "<script>alert(1)<" / "script>.jpg", (200, 10, 10))
    quoted = write_image(root / "cat" / 'a"&b.jpg', (10, 200, 10))
    hostile = "<script>alert(2)</script>"
    findings = [
        Finding(script, "label_error", 0.9, "relabel", hostile, hostile, "train", detail=f'"{hostile}" & co'),
        Finding(quoted, "duplicate", 0.8, label='x" onerror="alert(3)', other=script, detail="<b>bold</b>"),
    ]
    balance = {"train": {hostile: 1, "cat": 1}}
    page = render_page(findings, root, [f"summary {hostile}"], balance, [f"note {hostile}"], title=hostile)
    p = parse(page)
    assert "script" not in p.tags and "b" not in p.tags
    assert "<script" not in page and "<b>" not in page and 'a"&b' not in page
    assert "onerror" not in p.attrs  # a quote in a label cannot open an attribute
    text = "".join(p.text)
    assert "<script>alert(1)</script>.jpg" in text  # shown, as text
    assert 'a"&b.jpg' in text and f'"{hostile}" & co' in text and "<b>bold</b>" in text
    assert [c["path"] for c in p.cards] == ["<script>alert(1)</script>.jpg", 'cat/a"&b.jpg']
    assert [len(c["imgs"]) for c in p.cards] == [1, 2]
    assert p.rows["balance-table"][1][0] == hostile


def test_balance_table_shows_counts_and_totals(dataset):
    p = parse(render_page([], dataset["root"], [], BALANCE, ["train on more dog images"]))
    rows = p.rows["balance-table"]
    assert rows[0] == ["class", "train", "val", "test", "total"]
    assert rows[1:] == [
        ["cat", "120", "12", "0", "132"],
        ["dog", "30", "3", "5", "38"],
        ["total", "150", "15", "5", "170"],
    ]
    assert "train on more dog images" in "".join(p.text)
    assert p.sections == [] and p.cards == []


def test_exif_rotated_jpeg_thumbnail_is_upright(tmp_path):
    # Stored 200 wide x 100 high, left half red; EXIF 6: view it turned 90 degrees clockwise.
    im = Image.new("RGB", (200, 100), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif.tobytes())
    thumb = decode(thumbnail_uri(path)).convert("RGB")
    assert thumb.size == (80, 160)  # upright: taller than wide
    top, bottom = thumb.getpixel((40, 20)), thumb.getpixel((40, 140))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_big_image_gives_small_thumbnail(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    Image.new("RGB", (3000, 2000), (30, 120, 200)).save(path)
    thumb = decode(thumbnail_uri(path))
    assert thumb.size == (160, 107)
    assert max(decode(thumbnail_uri(path, size=64)).size) == 64


def test_write_page_writes_atomically(tmp_path):
    out = tmp_path / "sub" / "doctor.html"
    write_page(out, "<p>é</p>")
    assert out.read_text(encoding="utf-8") == "<p>é</p>"
    assert [f.name for f in out.parent.iterdir()] == ["doctor.html"]  # no temporary file left
