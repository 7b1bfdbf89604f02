"""A run folder is shared like a model file: graft.json is checked field by field before anything is built."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from graft import ImageData, Learner, load_learner
from graft.cli.main import main
from graft.infrastructure.errors import GraftError
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runfile")
    data = make_image_folder(root / "data", {"ants": 4, "bees": 4}, seed=5)
    learn = Learner(
        ImageData.from_folder(data, valid_split=0.25), "squeezenet1_1", pretrained=False, workers=0
    )
    learn.save(root / "run")
    return root / "run", data


def _tampered(saved_run, tmp_path, change) -> str:
    run, _ = saved_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "graft.json").read_text())
    change(meta)
    (copy / "graft.json").write_text(json.dumps(meta))
    return str(copy)


def _set(section, key, value):
    def change(meta):
        meta[section][key] = value

    return change


def _drop(section, key):
    return lambda meta: meta[section].pop(key)


CASES = {
    "hub arch": (_set("model", "arch", "hf-hub:evil/model"), r"model\.arch: unknown architecture"),
    "unknown source": (
        _set("model", "source", "pip"),
        r"model\.source must be one of graft, ",
    ),
    "huge head": (_set("model", "num_classes", 10**12), r"model\.num_classes must be a whole number from 2"),
    "huge hidden": (_set("model", "head_hidden", 10**9), r"model\.head_hidden must be a whole number"),
    "string classes count": (_set("model", "num_classes", "2"), r"model\.num_classes must be a whole number"),
    "build kwarg": (
        _set("model", "build_kwargs", {"pretrained": True}),
        r"build_kwargs has unknown fields",
    ),
    "missing field": (_drop("model", "num_classes"), r"model\.num_classes is missing"),
    "input size 0": (
        _set("preprocessing", "input_size", 0),
        r"preprocessing\.input_size must be",
    ),
    "input size 1e9": (_set("preprocessing", "input_size", 10**9), r"preprocessing\.input_size"),
    "negative size": (_set("preprocessing", "input_size", -5), r"preprocessing\.input_size"),
    "crop 0": (
        _set("preprocessing", "crop_pct", 0),
        r"crop_pct must be a number in \(0\.05, 1\]",
    ),
    "crop 1e300": (_set("preprocessing", "crop_pct", 1e300), r"preprocessing\.crop_pct"),
    "std 0": (_set("preprocessing", "std", [0, 1, 1]), r"preprocessing\.std must be a number in"),
    "nan mean": (
        _set("preprocessing", "mean", [math.nan, 0.5, 0.5]),
        r"preprocessing\.mean must be",
    ),
    "two stds": (_set("preprocessing", "std", [1, 1]), r"preprocessing\.std must be a list of 3 numbers"),
    "interpolation": (_set("preprocessing", "interpolation", "lanczos9"), r"preprocessing\.interpolation"),
    "three classes": (lambda m: m.update(classes=["a", "b", "c"]), r"run\.classes must be a list of 1 to 2"),
    "one class": (lambda m: m.update(classes=["a"]), r"classes lists 1 name for a model with 2 outputs"),
    "same class twice": (lambda m: m.update(classes=["a", "a"]), r"run\.classes names an entry twice"),
    "one-class model": (
        lambda m: (m["model"].update(num_classes=1), m.update(classes=["a"])),
        r"model\.num_classes must be a whole number from 2",
    ),
    "num_classes and head disagree": (
        lambda m: (m["model"].update(num_classes=3), m.update(classes=["a", "b", "c"])),
        r"model\.num_classes is 3, but the weights' head has no such output",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_run_file_is_refused_naming_the_field(saved_run, tmp_path, case) -> None:
    change, message = CASES[case]
    run = _tampered(saved_run, tmp_path, change)
    with pytest.raises(GraftError, match=message) as info:
        load_learner(run, device="cpu")
    assert "\n" not in str(info.value) and "graft.json" in str(info.value)


def test_deep_nesting_is_refused(saved_run, tmp_path) -> None:
    run = _tampered(saved_run, tmp_path, lambda m: None)
    text = (tmp_path / "run" / "graft.json").read_text()
    (tmp_path / "run" / "graft.json").write_text(text[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(GraftError, match="nested too deeply"):
        load_learner(run, device="cpu")


def test_the_cli_says_it_in_one_line(saved_run, tmp_path, capsys) -> None:
    _, data = saved_run
    run = _tampered(saved_run, tmp_path, _set("model", "arch", "hf-hub:evil/model"))
    assert main(["predict", run, str(data / "ants")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("graft: error: ") and err.count("\n") == 1 and "model.arch" in err


def test_an_untampered_run_still_loads(saved_run) -> None:
    run, data = saved_run
    learn = load_learner(run, device="cpu")
    assert learn.classes == ["ants", "bees"] and learn.spec.arch == "squeezenet1_1"
    assert learn.predict_probs(data / "ants")[1].shape == (4, 2)
