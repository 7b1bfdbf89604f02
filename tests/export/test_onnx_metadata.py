"""Tampered ONNX metadata (issue 18, item 2): every field ``predict --onnx`` reads is checked, and
checked against the graph, before anything is allocated from it; one line naming the field, exit 2.

The malicious files are built here from a tiny model really exported by graft, by rewriting its
``metadata_props`` with the ``onnx`` package: no fixture files.
"""

import json
import math
import os
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graft import GraftError, ImageData, Learner, load_learner
from graft.cli.main import main
from graft.data.transforms import Preprocessing
from graft.export.exporters import export
from graft.export.onnx_runtime import META_KEY, OnnxClassifier
from graft.infrastructure import checks
from graft.infrastructure.fileio import default_mode
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 3-class model at 32 px, exported by graft; its ONNX proto, contract and an image to predict."""
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 6, "green": 6, "blue": 6}, size=(50, 40), seed=1)
    make_image_folder(root / "val", {"red": 2, "green": 2, "blue": 2}, size=(50, 40), seed=2)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    learn.fit(mode="features", epochs=1, batch_size=8, lr=0.02, augment=False, workers=0, log=lambda _: None)
    out = learn.save(tmp_path_factory.mktemp("run") / "run")
    learn = load_learner(out, device="cpu")
    report = export(learn, "onnx")
    proto = onnx.load(str(report.path))
    meta = json.loads(next(e.value for e in proto.metadata_props if e.key == META_KEY))
    image = next((root / "val" / "red").iterdir())
    return report.path, proto, meta, image


def _write(proto: onnx.ModelProto, path, text: str):
    """``proto`` saved to ``path`` with its graft metadata replaced by ``text``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.metadata_props[:]
    entry = copy.metadata_props.add()
    entry.key, entry.value = META_KEY, text
    onnx.save(copy, str(path))
    return path


def _changed(meta: dict, where: str, value) -> dict:
    """A deep copy of ``meta`` with the field at dotted ``where`` set to ``value`` (or removed,
    for ``...``)."""
    meta = json.loads(json.dumps(meta))
    *parents, key = where.split(".")
    d = meta
    for p in parents:
        d = d[p]
    if value is ...:
        del d[key]
    else:
        d[key] = value
    return meta


# (field, value, what the one-line error must say)
BAD_FIELDS = [
    ("preprocessing.input_size", 1e9, r"preprocessing\.input_size must be a whole number from 8 to 4096"),
    ("preprocessing.input_size", 10**9, r"preprocessing\.input_size must be a whole number"),
    ("preprocessing.input_size", 0, r"preprocessing\.input_size must be a whole number"),
    ("preprocessing.input_size", -5, r"preprocessing\.input_size must be a whole number"),
    ("preprocessing.input_size", "32", r"preprocessing\.input_size must be a whole number"),
    ("preprocessing.input_size", 64, r"preprocessing\.input_size is 64, but the model's input is 32x32"),
    ("preprocessing.std", [0, 0, 0], r"preprocessing\.std must be a number in \[1e-06, 1000\]"),
    ("preprocessing.std", [math.nan, 1, 1], r"preprocessing\.std must be a number"),
    ("preprocessing.mean", [0.5, 0.5], r"preprocessing\.mean must be a list of 3 numbers"),
    ("preprocessing.mean", [math.inf, 0, 0], r"preprocessing\.mean must be a number"),
    ("preprocessing.crop_pct", 0, r"preprocessing\.crop_pct must be a number in \(0\.05, 1\]"),
    ("preprocessing.crop_pct", 1e300, r"preprocessing\.crop_pct must be a number"),
    ("preprocessing.interpolation", "lanczos", r"preprocessing\.interpolation must be one of"),
    ("preprocessing.resize", 512, r"preprocessing has unknown fields: resize"),
    ("preprocessing.std", ..., r"preprocessing\.std is missing"),
    ("preprocessing", ..., r"preprocessing is missing"),
    ("preprocessing", [1, 2], r"preprocessing must be an object"),
    ("classes", ["ants"], r"classes lists 1 name for a model with 3 outputs"),
    ("classes", ["ants", "bees"], r"classes lists 2 names for a model with 3 outputs"),
    ("classes", ["a", "b", "c", "d"], r"metadata\.classes must be a list of 1 to 3 strings"),
    ("classes", ["a", "a", "b"], r"metadata\.classes names an entry twice"),
    ("classes", ["a", "", "b"], r"metadata\.classes must be a non-empty string"),
    ("classes", "abc", r"metadata\.classes must be a list"),
    ("classes", ..., r"classes is missing"),
    ("format", 4, r"metadata\.format must be a whole number from 1 to 3"),
]


@pytest.mark.parametrize(
    ("field", "value", "message"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS]
)
def test_tampered_field_is_one_line_naming_it(exported, tmp_path, capsys, field, value, message):
    _, proto, meta, image = exported
    bad = _write(proto, tmp_path / "bad.onnx", json.dumps(_changed(meta, field, value)))
    with pytest.raises(GraftError, match=message):
        OnnxClassifier(bad, providers=["CPUExecutionProvider"])
    assert main(["predict", "--onnx", str(bad), str(image)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"graft: error: {bad}: graft metadata: "), err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"not valid JSON \(JSONDecodeError\)"),
        ("[" * 200_000 + "]" * 200_000, r"not valid JSON \(RecursionError\)"),
        ("[1, 2, 3]", r"metadata must be an object, not list"),
    ],
    ids=["not-json", "deep-nesting", "a-list"],
)
def test_metadata_that_is_not_a_json_object(exported, tmp_path, capsys, text, message):
    _, proto, _, image = exported
    bad = _write(proto, tmp_path / "bad.onnx", text)
    with pytest.raises(GraftError, match=message):
        OnnxClassifier(bad)
    assert main(["predict", str(bad), str(image)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_one_output_graph_is_refused(exported, tmp_path):
    # Well-formed metadata for one class on a real (hand-built) graph with one output: graft
    # trains no one-class model, whose softmax would say 1.0 for anything.
    _, _, meta, _ = exported
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["logits"]),
        ],
        "one",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [1.0, 1.0, 1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    bad = _write(model, tmp_path / "one.onnx", json.dumps(_changed(meta, "classes", ["only"])))
    with pytest.raises(GraftError, match="the model has 1 output: a classifier needs at least two classes"):
        OnnxClassifier(bad)


def test_the_untouched_export_still_predicts(exported, capsys):
    path, _, _, image = exported
    model = OnnxClassifier(path)
    assert (model.classes, model.input_size, model.resize_size) == (["blue", "green", "red"], 32, 37)
    kept, probs = model.predict_probs([image])
    assert kept == [image] and probs.shape == (1, 3) and np.isclose(probs.sum(), 1.0)
    assert main(["predict", str(path), str(image)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}\tred ")


@pytest.mark.parametrize(
    ("field", "value"),
    [(f.split(".")[1], v) for f, v, _ in BAD_FIELDS if f.startswith("preprocessing.") and v is not ...]
    + [("input_size", 8), ("input_size", 4096), ("std", [1e-6] * 3), ("crop_pct", 1.0), ("mean", [-1e3] * 3)],
)
def test_onnx_and_run_file_preprocessing_bounds_agree(exported, field, value):
    # The ONNX runtime (torch-free) and Preprocessing.from_dict must refuse and accept exactly the
    # same values, with the same words.
    d = dict(exported[2]["preprocessing"], **{field: value})

    def outcome(check):
        try:
            check(d)
        except GraftError as e:
            return str(e)
        return "ok"

    assert outcome(checks.preprocessing) == outcome(Preprocessing.from_dict)


def test_exported_file_has_the_mode_of_any_new_file(exported):
    # mkstemp makes 0600 files; an export is shared, so it gets 0666 less the umask (issue 18, item 6).
    path = exported[0]
    assert stat.S_IMODE(os.stat(path).st_mode) == default_mode(0o666)
