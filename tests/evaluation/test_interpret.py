"""Interpretation: per-image losses, confusions, top losses and image grids from known probabilities."""

import io

import numpy as np
import pytest
from PIL import Image

from graft.data.transforms import Preprocessing
from graft.evaluation.interpret import Interpretation
from graft.evaluation.plots import png_bytes
from graft.inference.decision import Decision
from graft.infrastructure.errors import GraftError
from tests.conftest import make_image_folder

CLASSES = ["ant", "bee", "wasp"]
# Rows: true ant, ant, bee, bee, wasp, wasp, wasp.
LABELS = np.array([0, 0, 1, 1, 2, 2, 2])
PROBS = np.array(
    [
        [0.90, 0.05, 0.05],  # right
        [0.20, 0.70, 0.10],  # ant -> bee
        [0.10, 0.80, 0.10],  # right
        [0.60, 0.30, 0.10],  # bee -> ant
        [0.05, 0.15, 0.80],  # right
        [0.10, 0.85, 0.05],  # wasp -> bee, the worst
        [0.30, 0.50, 0.20],  # wasp -> bee
    ]
)


@pytest.fixture
def interp(tmp_path):
    root = make_image_folder(tmp_path, {"ant": 2, "bee": 2, "wasp": 3}, size=(48, 36))
    paths = sorted(root.rglob("*.png"))
    return Interpretation(CLASSES, paths, LABELS, PROBS, Preprocessing(input_size=32), source="test")


def test_losses_are_minus_log_of_the_true_class(interp):
    expected = -np.log(PROBS[np.arange(7), LABELS])
    np.testing.assert_allclose(interp.losses, expected)
    assert interp.result.loss == pytest.approx(expected.mean())
    assert interp.result.accuracy == pytest.approx(3 / 7)


def test_confusion_counts_and_row_normalised(interp):
    cm = interp.confusion()
    assert cm.tolist() == [[1, 1, 0], [1, 1, 0], [0, 2, 1]]
    norm = interp.confusion(normalize=True)
    np.testing.assert_allclose(norm.sum(1), 1.0)
    assert norm[2, 1] == pytest.approx(2 / 3)


def test_most_confused_pairs_sorted_by_count(interp):
    assert interp.most_confused() == [("wasp", "bee", 2), ("ant", "bee", 1), ("bee", "ant", 1)]
    assert interp.most_confused(min_count=2) == [("wasp", "bee", 2)]
    assert interp.most_confused(k=1) == [("wasp", "bee", 2)]


def test_top_losses_highest_first_with_predicted_probability(interp):
    rows = interp.top_losses(3)
    assert [r["path"] for r in rows] == [interp.paths[5], interp.paths[1], interp.paths[6]]
    first = rows[0]
    assert (first["true"], first["pred"]) == ("wasp", "bee")
    assert first["prob"] == pytest.approx(0.85) and first["true_prob"] == pytest.approx(0.05)
    assert first["loss"] == pytest.approx(-np.log(0.05))
    assert [r["loss"] for r in rows] == sorted((r["loss"] for r in rows), reverse=True)


def test_sample_is_seeded_and_in_evaluation_order(interp):
    a, b = interp.sample(4, seed=3), interp.sample(4, seed=3)
    assert [r["path"] for r in a] == [r["path"] for r in b]
    order = [interp.paths.index(r["path"]) for r in a]
    assert order == sorted(order) and len(set(order)) == 4
    assert len(interp.sample(50)) == 7


def test_sample_per_class_takes_that_many_of_each_true_class(interp):
    rows = interp.sample(per_class=2, seed=1)
    assert [r["true"] for r in rows] == ["ant", "ant", "bee", "bee", "wasp", "wasp"]
    order = [interp.paths.index(r["path"]) for r in rows]
    assert order == sorted(order)
    assert [r["path"] for r in interp.sample(per_class=2, seed=1)] == [r["path"] for r in rows]
    assert [r["true"] for r in interp.sample(per_class=9)] == [CLASSES[i] for i in LABELS]
    assert _decoded(interp.plot_predictions(per_class=1, cols=3)).size[0] > 200


def _decoded(fig) -> Image.Image:
    image = Image.open(io.BytesIO(png_bytes(fig)))
    image.load()
    return image


def test_plots_render_to_png(interp):
    for fig in (interp.plot_confusion(), interp.plot_confusion(normalize=True)):
        image = _decoded(fig)
        assert min(image.size) > 200
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # a drawing, not a blank canvas
    grid = _decoded(interp.plot_top_losses(4, cols=2))
    # 2 x 2 images captioned; taller than wide once the captions are in.
    assert grid.size[0] > 300 and grid.size[1] > 300


def test_grid_images_are_the_crop_the_model_saw(interp):
    crop = interp._image(interp.paths[0])
    assert crop.size == (32, 32) and crop.mode == "RGB"


def test_empty_interpretation_has_nan_metrics():
    empty = Interpretation(CLASSES, [], np.zeros(0, dtype=np.int64), np.zeros((0, 3)), Preprocessing())
    assert empty.result.n == 0 and np.isnan(empty.result.accuracy)
    assert empty.top_losses() == [] and empty.most_confused() == []


def test_binary_threshold_moves_the_answers_and_the_grid_colours(tmp_path):
    root = make_image_folder(tmp_path, {"ant": 2, "bee": 2}, size=(40, 40))
    paths = sorted(root.rglob("*.png"))
    probs = np.array([[0.8, 0.2], [0.65, 0.35], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    top = Interpretation(["ant", "bee"], paths, labels, probs, Preprocessing(input_size=32))
    low = Interpretation(
        ["ant", "bee"],
        paths,
        labels,
        probs,
        Preprocessing(input_size=32),
        decision=Decision(thresholds=(0.3,)),
    )
    assert top.preds.tolist() == [0, 0, 0, 1] and low.preds.tolist() == [0, 1, 1, 1]
    assert low.result.confusion.tolist() == [[1, 1], [0, 2]] and low.result.accuracy == 0.75
    # Highest loss: the bee at 0.4, right at this threshold; then the ant at 0.65, now wrong.
    assert [r["right"] for r in low.top_losses()] == [True, False, True, True]
    assert [r["right"] for r in top.top_losses()] == [False, True, True, True]
    assert _decoded(low.plot_roc_pr()).size[0] > 400
    with pytest.raises(GraftError, match="two-class"):
        Interpretation(CLASSES, [], LABELS, PROBS, Preprocessing()).plot_roc_pr()


ML_CLASSES = ["cat", "dog", "fox"]
ML_LABELS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
ML_PROBS = np.array([[0.9, 0.2, 0.1], [0.8, 0.4, 0.1], [0.1, 0.3, 0.6], [0.3, 0.7, 0.2]])


@pytest.fixture
def multi(tmp_path):
    root = make_image_folder(tmp_path, {"x": 4}, size=(40, 40))
    paths = sorted(root.rglob("*.png"))
    decision = Decision(multi_label=True, thresholds=(0.5, 0.5, 0.5))
    return Interpretation(
        ML_CLASSES, paths, ML_LABELS, ML_PROBS, Preprocessing(input_size=32), decision=decision
    )


def test_multi_label_losses_preds_and_result(multi):
    expected = -(ML_LABELS * np.log(ML_PROBS) + (1 - ML_LABELS) * np.log(1 - ML_PROBS)).mean(1)
    np.testing.assert_allclose(multi.losses, expected)
    assert multi.preds.tolist() == (ML_PROBS >= 0.5).tolist()
    assert multi.result.multi_label and multi.result.accuracy == 0.5
    assert multi.result.loss == pytest.approx(expected.mean())
    with pytest.raises(GraftError, match="no confusion matrix"):
        multi.confusion()


def test_multi_label_top_losses_show_label_sets(multi):
    rows = multi.top_losses(4)
    # Losses: image 1 (dog at 0.4 missed) and image 2 (fox at 0.6 extra) lead.
    assert [multi.paths.index(r["path"]) for r in rows] == list(np.argsort(-multi.losses, kind="stable"))
    by_index = {multi.paths.index(r["path"]): r for r in rows}
    assert (by_index[1]["true"], by_index[1]["pred"]) == ("cat dog", "cat")
    assert (by_index[1]["worst"], by_index[1]["prob"], by_index[1]["true_prob"]) == ("dog", 0.4, 1.0)
    assert (by_index[2]["true"], by_index[2]["pred"], by_index[2]["worst"]) == ("(none)", "fox", "fox")
    assert [by_index[i]["right"] for i in range(4)] == [True, False, False, True]


def test_multi_label_mistakes_are_missed_and_extra_labels(multi):
    assert multi.most_confused() == [("dog", "missed", 1), ("fox", "extra", 1)]
    assert multi.most_confused(min_count=2) == []
    # Images with cat (0, 1) and with dog (1, 3), one each at most, counted once.
    rows = multi.sample(per_class=5)
    assert [multi.paths.index(r["path"]) for r in rows] == [0, 1, 3]


def test_multi_label_plots_render(multi):
    assert _decoded(multi.plot_top_losses(4, cols=2)).size[1] > 300
    assert _decoded(multi.plot_predictions(4, cols=2)).size[1] > 300
    curves = _decoded(multi.plot_pr_curves())
    assert min(curves.size) > 300 and len(np.unique(np.asarray(curves.convert("L")))) > 10
