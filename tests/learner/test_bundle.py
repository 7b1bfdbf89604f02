"""Run folders: atomic safetensors + JSON, verified on load, refused when tampered with."""

import json

import pytest
import torch

from graft.infrastructure.errors import GraftError
from graft.learner.bundle import HISTORY_FILE, META_FILE, WEIGHTS_FILE, load_bundle, read_history, save_bundle

META = {"model": {"arch": "x"}, "classes": ["a", "b"], "preprocessing": {"input_size": 32}}


def _state():
    torch.manual_seed(0)
    w = torch.randn(4, 3)
    # A view and a tensor sharing storage: safetensors refuses those unless they are made whole.
    return {"w": w, "w_t": w.t(), "b": torch.zeros(4), "step": torch.tensor(3)}


def test_round_trip(tmp_path):
    state = _state()
    history = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}]
    save_bundle(tmp_path / "run", state, META, history)
    loaded, meta = load_bundle(tmp_path / "run")
    assert set(loaded) == set(state)
    for k in state:
        assert torch.equal(loaded[k], state[k])
    assert meta["classes"] == ["a", "b"] and meta["format"] == 1
    assert {"torch", "timm", "graft"} <= set(meta["versions"])
    assert [r["val_acc"] for r in read_history(tmp_path / "run")] == ["0.5", "0.75"]
    # Nothing but the three files is left behind (no temp files).
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        [WEIGHTS_FILE, META_FILE, HISTORY_FILE]
    )


def test_tampered_weights_are_refused(tmp_path):
    run = save_bundle(tmp_path / "run", _state(), META, [])
    data = bytearray((run / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (run / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(GraftError, match="sha256"):
        load_bundle(run)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": 99}', "unsupported bundle format"),
        ('{"format": 1}', "lacks"),
    ],
)
def test_malformed_metadata_is_refused(tmp_path, content, message):
    run = save_bundle(tmp_path / "run", _state(), META, [])
    (run / META_FILE).write_text(content)
    with pytest.raises(GraftError, match=message):
        load_bundle(run)


def test_missing_run_and_missing_weights(tmp_path):
    with pytest.raises(GraftError, match="not found"):
        load_bundle(tmp_path / "nope")
    run = save_bundle(tmp_path / "run", _state(), META, [])
    (run / WEIGHTS_FILE).unlink()
    with pytest.raises(GraftError, match=r"no model\.safetensors"):
        load_bundle(run)


def test_metadata_is_plain_json(tmp_path):
    run = save_bundle(tmp_path / "run", _state(), META, [])
    meta = json.loads((run / META_FILE).read_text())
    assert len(meta["weights_sha256"]) == 64


def test_bundle_files_get_the_umask_mode(tmp_path):
    """Not mkstemp's private 0600: a run folder is shared like any file the user writes."""
    import os

    umask = os.umask(0o022)
    try:
        save_bundle(tmp_path / "run", {"w": torch.ones(2)}, {"model": {}}, [{"epoch": 1}])
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert modes == {"model.safetensors": 0o644, "graft.json": 0o644, "history.csv": 0o644}
