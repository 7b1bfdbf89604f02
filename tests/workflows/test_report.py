"""report.html from a really trained (tiny) learner: sections, tables that agree with evaluate, PNGs."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from graft import ImageData, Learner, load_learner
from graft.evaluation.calibration import expected_calibration_error, uncalibrated
from graft.evaluation.interpret import Interpretation
from graft.inference.decision import Decision, Reject
from graft.workflows.report import MULTI_LABEL_SECTIONS, SECTIONS, report_sections, write_report
from tests.conftest import make_image_folder

PNGS = ("curves", "confusion", "confusion_normalized", "reliability", "coverage", "top_losses", "predictions")


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


def summary_facts(report: ReportParser) -> dict[str, str]:
    return {row[0]: row[1] for row in report.tables["summary-facts"][1:]}


def test_summary_and_per_class_show_balanced_accuracy_and_macro_f1(trained, report):
    _, learn, _ = trained
    _, parsed = report
    result = learn.evaluate()
    facts = summary_facts(parsed)
    # Each score with its 95% bootstrap interval, as graft evaluate prints it.
    low, high = result.intervals["balanced_accuracy"]
    assert facts["balanced accuracy"] == f"{result.balanced_accuracy:.4f} [{low:.3f}-{high:.3f}]"
    low, high = result.intervals["macro_f1"]
    assert facts["macro F1"] == f"{result.macro_f1:.4f} [{low:.3f}-{high:.3f}]"
    assert "ROC AUC / AP" not in facts  # three classes: no single positive class


def test_three_classes_get_one_against_the_rest_areas(trained, report):
    _, learn, _ = trained
    _, parsed = report
    interp = learn.interpret()
    rows = parsed.tables["roc-pr-table"][1:]
    assert [r[0] for r in rows] == learn.classes
    for i, row in enumerate(rows):
        positive = interp.labels == i
        assert float(row[1]) == pytest.approx(roc_auc_score(positive, interp.probs[:, i]), abs=6e-5)
        assert float(row[2]) == pytest.approx(average_precision_score(positive, interp.probs[:, i]), abs=6e-5)


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    make_image_folder(root / "train", {"cat": 6, "dog": 6}, size=(40, 40), seed=3)
    make_image_folder(root / "val", {"cat": 4, "dog": 5}, size=(40, 40), seed=4)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    learn.fit(mode="features", epochs=2, batch_size=4, workers=0, precision="fp32", log=lambda _: None)
    return learn, learn.interpret()


def test_binary_run_has_roc_and_pr_curves_at_its_threshold(binary, tmp_path):
    learn, interp = binary
    interp = dataclasses.replace(interp, decision=Decision(thresholds=(0.3,), chosen_by="by hand"))
    parsed = parse_report(write_report(learn, interp, tmp_path))
    assert parsed.sections == list(SECTIONS)
    assert "ROC and PR curves" in dict(parsed.images) and (tmp_path / "roc_pr.png").is_file()
    scores, positive = interp.probs[:, 1], interp.labels == 1
    facts = summary_facts(parsed)
    auc, ap = roc_auc_score(positive, scores), average_precision_score(positive, scores)
    assert facts["ROC AUC / AP"] == f"{auc:.4f} / {ap:.4f} (dog)"
    assert facts["threshold"] == "dog when its probability ≥ 0.3000 (by hand)"
    # The confusion matrix is the one at the threshold, not at the top class.
    answered = np.where(scores >= 0.3, 1, 0)
    expected = [[int(((interp.labels == t) & (answered == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    assert confusion_from_html(parsed).tolist() == expected
    assert parsed.tables["roc-pr-table"][1] == ["dog", f"{auc:.4f}", f"{ap:.4f}"]


ML_LABELS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]])
ML_PROBS = np.array(
    [[0.9, 0.2, 0.1], [0.8, 0.4, 0.1], [0.1, 0.3, 0.6], [0.3, 0.7, 0.8], [0.2, 0.1, 0.9], [0.6, 0.5, 0.4]]
)


@pytest.fixture(scope="module")
def multi_label_report(trained, tmp_path_factory):
    """A multi-label report from hand-made predictions on real images, with a history that has
    the multi-label validation scores."""
    root, learn, _ = trained
    run = copy.copy(learn)
    # A column the run did not record (here val_bal_acc, a single-label score) is not shown.
    rows = [{k: v for k, v in r.items() if k != "val_bal_acc"} for r in learn.history]
    run.history = [dict(r, val_map=0.7, val_macro_f1=0.6, val_micro_f1=0.65) for r in rows]
    paths = sorted((root / "val").rglob("*.png"))[:6]
    decision = Decision(multi_label=True, thresholds=(0.5, 0.45, 0.5), chosen_by="max F1 on val")
    interp = Interpretation(
        list(learn.classes), paths, ML_LABELS, ML_PROBS, learn.preprocessing, "hand-made", decision=decision
    )
    out = tmp_path_factory.mktemp("multi")
    return interp, out, parse_report(write_report(run, interp, out, top_losses=3, samples=4))


def test_multi_label_report_sections_and_images(multi_label_report):
    interp, out, parsed = multi_label_report
    assert parsed.sections == list(MULTI_LABEL_SECTIONS) == list(report_sections(interp))
    assert "confusion-counts" not in parsed.tables and not (out / "confusion.png").exists()
    assert "confidence" not in parsed.sections and "calibration-table" not in parsed.tables
    assert not (out / "reliability.png").exists() and not (out / "coverage.png").exists()
    assert sorted(alt for alt, _ in parsed.images) == sorted(
        ["training curves", "per-class PR curves", "top losses", "sample predictions"]
    )
    assert parsed.external == []


def test_multi_label_tables_agree_with_the_result(multi_label_report):
    interp, _, parsed = multi_label_report
    result = interp.result
    facts = summary_facts(parsed)
    assert facts["exact match"].startswith(f"{result.accuracy:.4f}")
    (lo1, hi1), (lo2, hi2) = result.intervals["micro_f1"], result.intervals["macro_f1"]
    assert facts["micro F1 / macro F1"] == (
        f"{result.micro_f1:.4f} [{lo1:.3f}-{hi1:.3f}] / {result.macro_f1:.4f} [{lo2:.3f}-{hi2:.3f}]"
    )
    low, high = result.intervals["map"]
    assert facts["mean average precision"] == f"{result.mean_ap:.4f} [{low:.3f}-{high:.3f}]"
    rows = parsed.tables["per-class-table"]
    assert rows[0] == ["class", "precision", "recall", "F1", "AP", "support", "answered", "threshold"]
    assert [r[-1] for r in rows[1:]] == ["0.500", "0.450", "0.500"]
    assert [int(r[5]) for r in rows[1:]] == ML_LABELS.sum(0).tolist()
    aps = [average_precision_score(ML_LABELS[:, c], ML_PROBS[:, c]) for c in range(3)]
    assert [float(r[4]) for r in rows[1:]] == pytest.approx(aps, abs=6e-4)


def test_multi_label_top_losses_are_label_sets_and_history_has_the_new_columns(multi_label_report):
    interp, _, parsed = multi_label_report
    classes = interp.classes
    top = parsed.tables["top-losses-table"][1:]
    worst = int(np.argmax(interp.losses))
    true = " ".join(classes[c] for c in np.flatnonzero(ML_LABELS[worst])) or "(none)"
    answered = " ".join(classes[c] for c in np.flatnonzero(ML_PROBS[worst] >= [0.5, 0.45, 0.5])) or "(none)"
    assert top[0][:3] == [interp.paths[worst].name, true, answered]
    assert len(top) == 3
    header = parsed.tables["history"][0]
    assert {"val macro F1", "val micro F1", "val mAP"} <= set(header) and "val bal. acc" not in header
    mistakes = {(r[0], r[1]): int(r[2]) for r in parsed.tables["confused-pairs"][1:]}
    assert mistakes == {(c, kind): n for c, kind, n in interp.most_confused(10)}


def test_confidence_section_without_temperature_or_scores(trained, tmp_path):
    _, learn, _ = trained
    interp = dataclasses.replace(learn.interpret(), decision=Decision(), scores=None)
    parsed = parse_report(write_report(learn, interp, tmp_path, top_losses=2, samples=2))
    rows = parsed.tables["calibration-table"]
    assert [r[0] for r in rows[1:]] == ["uncalibrated", "calibrated"]
    assert rows[1][2:] == rows[2][2:]  # T = 1: the same probabilities twice
    assert rows[2][2] == f"{expected_calibration_error(interp.probs, interp.labels):.4f}"
    coverage = parsed.tables["coverage-table"]
    assert coverage[0] == ["coverage", "ranked by calibrated confidence"]
    assert coverage[1] == ["100%", f"{interp.result.accuracy:.4f}"]
    assert "unknown-table" not in parsed.tables


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def confidence_report(trained, tmp_path_factory):
    """A report of hand-made, temperature-scaled predictions with out-of-distribution scores and
    an "unknown" rule, on the run's real val images."""
    _, learn, _ = trained
    real = learn.interpret()
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(len(real.labels), 3))
    logits[np.arange(len(logits))[::2], real.labels[::2]] += 4.0  # right on half, at least
    scores = rng.uniform(0.05, 0.6, size=len(logits))
    scores[3] = np.nan  # an image without features: never rejected
    reject = Reject(0.4, "unknown", "accepts 95% of val")
    decision = Decision(temperature=2.0, reject=reject)
    interp = dataclasses.replace(real, probs=softmax(logits / 2.0), decision=decision, scores=scores)
    out = tmp_path_factory.mktemp("confidence")
    return interp, out, parse_report(write_report(learn, interp, out, top_losses=3, samples=4))


def test_confidence_section_shows_calibration_before_and_after(confidence_report):
    interp, out, parsed = confidence_report
    assert parsed.sections == list(SECTIONS) and "confidence" in parsed.sections
    alts = [alt for alt, _ in parsed.images]
    assert "reliability diagram" in alts and "accuracy vs coverage" in alts
    assert (out / "reliability.png").is_file() and (out / "coverage.png").is_file()
    rows = {r[0]: r[1:] for r in parsed.tables["calibration-table"][1:]}
    before = uncalibrated(interp.probs, 2.0)
    assert rows["uncalibrated"][:2] == ["1", f"{expected_calibration_error(before, interp.labels):.4f}"]
    assert rows["calibrated"][:2] == ["2", f"{expected_calibration_error(interp.probs, interp.labels):.4f}"]
    assert rows["uncalibrated"][2] == f"{before.max(1).mean():.4f}"  # mean confidence


def test_confidence_section_ranks_by_both_scores_and_applies_the_unknown_rule(confidence_report):
    interp, _, parsed = confidence_report
    coverage = parsed.tables["coverage-table"]
    assert coverage[0] == [
        "coverage",
        "ranked by calibrated confidence",
        "ranked by out-of-distribution score",
    ]
    correct = interp.preds == interp.labels
    assert coverage[1] == ["100%", f"{correct.mean():.4f}", f"{correct.mean():.4f}"]
    # 50% of 12 images: the 6 with the lowest score (the NaN one first).
    ranked = np.argsort(np.where(np.isnan(interp.scores), -1.0, interp.scores))[:6]
    assert coverage[-1][0] == "50%" and coverage[-1][2] == f"{correct[ranked].mean():.4f}"
    facts = {r[0]: r[1] for r in parsed.tables["unknown-table"][1:]}
    rejected = interp.scores > 0.4
    assert facts["threshold"] == "cosine distance > 0.4000 (accepts 95% of val)"
    assert facts['answered "unknown"'] == f"{rejected.mean():.1%} ({rejected.sum()} of 12 images)"
    assert facts["accuracy of the rest"] == f"{correct[~rejected].mean():.4f}"
