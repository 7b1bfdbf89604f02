"""Imbalanced classes on real images: a copy of hymenoptera whose bees keep 1/20 of the ants'
training images (val untouched), trained with ``--balance auto`` and ``--balance none``; and a
two-class decision threshold chosen on val for a target recall."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graft
from graft import GraftError, TrainConfig, load_learner
from graft.cli.main import main
from tests.conftest import shared_dataset
from tests.labels_data import make_imbalanced

# The frozen head on cached features: what --balance changes, in seconds instead of minutes.
FROZEN = {"mode": "features", "workers": 0, "precision": "fp32", "report": False}


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    source = shared_dataset("hymenoptera")
    return make_imbalanced(tmp_path_factory.mktemp("imb") / "hym20", "bees", source, ratio=20)


@pytest.fixture(scope="module")
def runs(skewed, tmp_path_factory):
    out = tmp_path_factory.mktemp("imb-runs")
    done = {}
    for balance in ("auto", "none", "sampler"):
        lines: list[str] = []
        cfg = TrainConfig(data=str(skewed), out=str(out / balance), balance=balance, **FROZEN)
        done[balance] = (graft.train(cfg, log=lines.append), lines)
    return done


@pytest.mark.slow
def test_balance_auto_beats_none_on_the_untouched_val_set(runs):
    scores = {}
    for balance, (run, _) in runs.items():
        result = run.learner.evaluate(split="val")
        scores[balance] = (result.macro_f1, result.balanced_accuracy)
        print(f"--balance {balance}: val macro F1 {result.macro_f1:.4f}, balanced accuracy ", end="")
        print(f"{result.balanced_accuracy:.4f}")
    assert scores["auto"][0] > scores["none"][0] and scores["auto"][1] > scores["none"][1]
    assert scores["sampler"][1] > scores["none"][1]
    auto, lines = runs["auto"]
    resolved = json.loads((auto.run_dir / "graft.json").read_text())["resolved"]
    assert (resolved["balance"], resolved["monitor"]) == ("weights", "val_bal_acc")
    assert any(line.startswith("imbalance: largest/smallest training class 20.") for line in lines)
    assert any("balanced accuracy" in line for line in lines if line.startswith("val:"))
    none = json.loads((runs["none"][0].run_dir / "graft.json").read_text())["resolved"]
    assert (none["balance"], none["monitor"]) == ("none", "val_bal_acc")  # the monitor follows the data


@pytest.mark.slow
def test_a_target_recall_sets_a_threshold_that_predict_evaluate_and_the_run_keep(skewed, tmp_path, capsys):
    out = tmp_path / "recall"
    cfg = TrainConfig(data=str(skewed), out=str(out), balance="none", target_recall=0.95, **FROZEN)
    run = graft.train(cfg, log=lambda _: None)
    learn = load_learner(out)
    decision = learn.decision
    assert learn.classes[decision.positive] == "bees"  # the smaller class by default
    interp = learn.interpret(skewed, "val")
    bees = interp.labels == decision.positive
    recall = (interp.preds[bees] == decision.positive).mean()
    assert recall >= 0.95  # chosen on val: it holds there by construction
    plain = (interp.probs.argmax(1)[bees] == decision.positive).mean()
    assert plain < recall  # and it is not what the top class gave (the ants dominate training)
    # predict answers at the threshold too
    bee_files = [p for p, b in zip(interp.paths, bees, strict=True) if b][:20]
    predicted = learn.predict(bee_files)
    want = interp.probs[np.isin(interp.paths, bee_files)][:, decision.positive] >= decision.thresholds[0]
    assert [p.labels[0] == "bees" for p in predicted] == list(want)  # the class answer, unknown or not
    assert run.learner.decision == decision
    # a tampered threshold is refused with one line
    meta = json.loads((out / "graft.json").read_text())
    meta["decision"]["threshold"] = 7
    (out / "graft.json").write_text(json.dumps(meta))
    assert main(["evaluate", str(out), str(skewed)]) == 2
    err = capsys.readouterr().err.strip()
    assert "were modified or damaged: threshold is 7, outside [0, 1]" in err and len(err.splitlines()) == 1
    with pytest.raises(GraftError, match="outside"):
        load_learner(out)


def test_threshold_options_the_data_cannot_take_are_refused_before_training(skewed, tmp_path):
    three = TrainConfig(
        data=str(skewed), out=str(tmp_path / "x"), positive="wasps", target_recall=0.9, **FROZEN
    )
    with pytest.raises(GraftError, match="--positive must name one of two classes: ants, bees"):
        graft.train(three, log=lambda _: None)
    assert not (tmp_path / "x" / "graft.json").exists()
