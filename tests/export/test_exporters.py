"""ONNX and TorchScript export of a really trained (tiny) run: contract, parity, and the ONNX runtime."""

import json
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from graft import GraftError, ImageData, Learner, load_learner
from graft.cli.main import main
from graft.export import exporters
from graft.export.exporters import export
from graft.export.onnx_runtime import META_KEY, OnnxClassifier
from tests.conftest import make_image_folder, write_image


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, size=(50, 40), seed=1)
    make_image_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, size=(50, 40), seed=2)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    learn.fit(mode="finetune", freeze_epochs=2, epochs=1, batch_size=8, lr=0.02, augment=False,
              workers=0, log=lambda _: None)  # fmt: skip
    out = learn.save(tmp_path_factory.mktemp("run") / "run")
    return root, out


@pytest.fixture(scope="module")
def onnx_file(run):
    _, out = run
    learn = load_learner(out, device="cpu")
    return export(learn, "onnx")


def test_onnx_export_carries_the_contract_and_passes_parity(run, onnx_file):
    _, out = run
    assert onnx_file.path == out / "model.onnx" and onnx_file.images == 9
    assert onnx_file.max_diff <= 1e-4 and onnx_file.agree == 9
    session = ort.InferenceSession(str(onnx_file.path), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map[META_KEY])
    saved = json.loads((out / "graft.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"] == saved["classes"]
    assert meta["preprocessing"] == saved["preprocessing"]
    # Dynamic batch: any batch size runs.
    for n in (1, 5):
        logits = session.run(None, {"image": np.zeros((n, 3, 32, 32), np.float32)})[0]
        assert logits.shape == (n, 3)


def test_onnx_runtime_matches_the_learner_image_by_image(run, onnx_file, native_bf16):
    # The Learner predicts in fp32 on either kind of CPU: the ONNX model's numbers, to 1e-4.
    root, out = run
    paths, expected = load_learner(out, device="cpu").predict_probs(root / "val")
    got_paths, got = OnnxClassifier(onnx_file.path).predict_probs(root / "val")
    assert got_paths == paths
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_onnx_runtime_skips_undecodable_files_with_a_warning(tmp_path, onnx_file):
    write_image(tmp_path / "good.png", (200, 30, 30))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="bad.jpg"):
        kept, probs = OnnxClassifier(onnx_file.path).predict_probs(tmp_path)
    assert [p.name for p in kept] == ["good.png"] and probs.shape == (1, 3)


def test_torchscript_export_round_trips(run, tmp_path):
    _, out = run
    learn = load_learner(out, device="cpu")
    report = export(learn, "torchscript", tmp_path / "m.pt", check=[run[0] / "val"])
    assert report.max_diff <= 1e-4 and report.agree == report.images == 9
    extra = {"graft.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(report.path), _extra_files=extra)
    assert json.loads(extra["graft.json"])["classes"] == ["blue", "green", "red"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x), learn.model.float().eval()(x), atol=1e-5, rtol=1e-4)


def test_parity_failure_writes_nothing(run, tmp_path, monkeypatch):
    _, out = run
    monkeypatch.setattr(exporters, "PARITY_TOLERANCE", -1.0)  # any difference, even 0, now fails
    target = tmp_path / "m.onnx"
    with pytest.raises(GraftError, match="disagrees with the PyTorch model"):
        export(load_learner(out, device="cpu"), "onnx", target, check=[run[0] / "val"])
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_not_a_graft_onnx_file_is_refused(tmp_path, onnx_file):
    garbage = tmp_path / "x.onnx"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(GraftError, match="not a readable ONNX model"):
        OnnxClassifier(garbage)
    import onnx

    proto = onnx.load(str(onnx_file.path))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    with pytest.raises(GraftError, match="no graft metadata"):
        OnnxClassifier(plain)


def test_cli_export_and_predict_with_onnx_without_torch(run, tmp_path, capsys):
    root, out = run
    target = tmp_path / "cli.onnx"
    assert main(["export", str(out), "--out", str(target)]) == 0
    printed = capsys.readouterr().out
    assert "parity with PyTorch on 9 images" in printed and "same top-1 on 9/9" in printed
    code = (
        "import sys; from graft.cli.main import main; "
        f"rc = main(['predict', '--onnx', {str(target)!r}, {str(root / 'val')!r}, '--top-k', '2']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "NO-TORCH"
    onnx_rows = [line.split("\t") for line in lines[:-1]]
    assert main(["predict", str(out), str(root / "val"), "--top-k", "2"]) == 0
    torch_rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [r[0] for r in onnx_rows] == [r[0] for r in torch_rows]
    assert [r[1].split()[0] for r in onnx_rows] == [r[1].split()[0] for r in torch_rows]
    # A RUN ending in .onnx needs no --onnx.
    assert main(["predict", str(target), str(root / "val"), "--top-k", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines[:-1]


def test_onnx_predictions_stream_shard_and_resume_without_torch(run, onnx_file, tmp_path):
    root, _ = run
    model, val, full = str(onnx_file.path), str(root / "val"), tmp_path / "full.csv"
    parts = [tmp_path / "p0.csv", tmp_path / "p1.csv"]
    resumed, merged = tmp_path / "resumed.csv", tmp_path / "merged.csv"
    calls = [
        ["predict", model, val, "--top-k", "2", "--csv", str(full)],
        *(
            ["predict", model, val, "--top-k", "2", "--csv", str(p), "--shard", f"{i}/2"]
            for i, p in enumerate(parts)
        ),
        ["merge-predictions", *map(str, parts), "--out", str(merged)],
        ["predict", model, val, "--top-k", "2", "--csv", str(resumed), "--resume", "--chunk-size", "2"],
    ]
    code = (
        "import sys; from pathlib import Path; from graft.cli.main import main\n"
        f"for argv in {calls!r}:\n"
        "    if '--resume' in argv:  # a run killed in the middle of a row\n"
        f"        text = Path({str(full)!r}).read_text()\n"
        f"        Path({str(resumed)!r}).write_text(text[: text.index(chr(10), 200) + 9])\n"
        "    assert main(argv) == 0\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert full.read_text().count("\n") == 1 + 9
    assert merged.read_bytes() == full.read_bytes() == resumed.read_bytes()
    assert "dropped a half-written last line" in proc.stderr


def test_the_export_is_flushed_to_disk_before_it_is_renamed_into_place(run, tmp_path, monkeypatch):
    """Issue 19: the exported file had a writer of its own, without fsync (a power cut after the
    rename could leave an empty model.onnx); now it goes through fileio.atomic_write like every
    other file. Which files reach fsync is read from the real file descriptors."""
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    learn = load_learner(run[1], device="cpu")
    out = tmp_path / "exported.onnx"
    report = export(learn, "onnx", out=out)
    assert report.path == out and out.is_file()
    assert any(name.startswith(".exported.onnx.") and name.endswith(".tmp") for name in synced), synced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported.onnx"]  # no temporary file left
