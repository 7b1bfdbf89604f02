"""``graft models`` (listing, fetch) and ``graft train`` fetching weights on first use.

Weights come from a real HTTP server on 127.0.0.1 (tests/hub_server.py), reached through
GRAFT_TORCHVISION_MIRROR and HF_ENDPOINT, as a user behind a company mirror would set them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from graft.cli.main import main
from tests.conftest import make_image_folder
from tests.hub_server import serve_timm, serve_torchvision

QUICK = ["--input-size", "96", "--freeze-epochs", "1", "--epochs", "1", "--batch-size", "6",
         "--valid-split", "0.25", "--no-augment", "--workers", "0"]  # fmt: skip
SMALL_TIMM = "mobilenetv3_small_050.lamb_in1k"


@pytest.fixture
def data(tmp_path):
    return make_image_folder(tmp_path / "data", {"ants": 8, "bees": 8}, size=(48, 40), seed=3)


def test_fetch_then_train_offline_with_the_server_gone(loopback_hub, data, tmp_path, capsys) -> None:
    filename, _ = serve_torchvision(loopback_hub, "squeezenet1_0")
    assert main(["models", "fetch", "squeezenet1_0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("squeezenet1_0: ") and filename in out and "downloaded" in out
    assert "for an offline machine, copy" in out
    assert main(["models", "fetch", "squeezenet1_0"]) == 0
    assert "MB, cached, sha256 checked)" in capsys.readouterr().out
    assert loopback_hub.paths("GET") == [f"/models/{filename}"]
    assert main(["models", "squeezenet1_0"]) == 0
    assert " cached " in capsys.readouterr().out

    loopback_hub.stop()
    out_dir = tmp_path / "run"
    args = ["train", str(data), "--arch", "squeezenet1_0", "--offline", "--out", str(out_dir), *QUICK]
    assert main(args) == 0
    meta = json.loads((out_dir / "graft.json").read_text())
    assert meta["model"]["arch"] == "squeezenet1_0" and meta["config"]["pretrained"] is True
    assert len(loopback_hub.requests) == 1  # the first fetch's GET, and nothing since
    assert os.environ.get("GRAFT_OFFLINE") == "1"  # --offline holds for the whole process


def test_fetch_reports_each_failure_and_goes_on(loopback_hub, capsys) -> None:
    serve_torchvision(loopback_hub, "squeezenet1_0")
    assert main(["models", "fetch", "resnet18", "squeezenet1_0", "cifar_resnet18"]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert errors[0].startswith("graft: error: cannot download the resnet18 weights: ")
    assert "HTTP 404" in errors[0]
    assert any("cifar_resnet18 is one of graft's own architectures" in line for line in errors)
    assert "squeezenet1_0: " in captured.out


def test_offline_fetch_of_an_absent_file_is_one_line(loopback_hub, capsys) -> None:
    serve_torchvision(loopback_hub, "squeezenet1_0")
    assert main(["models", "fetch", "squeezenet1_0", "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "downloads are off (GRAFT_OFFLINE=1)" in err
    assert loopback_hub.requests == []


def test_listing_sizes_come_from_the_hub_when_asked(loopback_hub, capsys) -> None:
    _, data = serve_timm(loopback_hub, SMALL_TIMM)
    assert main(["models", SMALL_TIMM]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(SMALL_TIMM))
    assert " downloadable " in line and " MB " not in line and loopback_hub.requests == []
    assert main(["models", SMALL_TIMM, "--sizes"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(SMALL_TIMM))
    assert f"{len(data) / 1e6:.1f} MB" in line
    assert loopback_hub.paths() == [f"/timm/{SMALL_TIMM}/resolve/main/model.safetensors"]


def test_models_takes_one_pattern(capsys) -> None:
    assert main(["models", "*resnet*", "*vit*"]) == 2
    assert "one PATTERN" in capsys.readouterr().err
    assert main(["models", "fetch"]) == 2


def _cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graft", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_no_network_is_one_line_and_exit_2_from_the_real_command(loopback_hub, data, monkeypatch) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    monkeypatch.setenv("GRAFT_TORCHVISION_MIRROR", dead)
    monkeypatch.setenv("HF_ENDPOINT", dead)
    for arch in ("resnet34", "convnext_tiny.fb_in22k_ft_in1k"):
        start = time.perf_counter()
        proc = _cli("train", str(data), "--arch", arch, "--out", str(data.parent / "run"), timeout=120)
        elapsed = time.perf_counter() - start
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"graft: error: cannot download the {arch} weights from {dead}")
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert elapsed < 60  # a hang would run into the subprocess timeout instead


@pytest.mark.slow
def test_train_resnet34_with_the_real_command(loopback_hub, data, tmp_path) -> None:
    serve_torchvision(loopback_hub, "resnet34")
    out = tmp_path / "run"
    env = loopback_hub.subprocess_env(tmp_path / "site")
    proc = _cli("train", str(data), "--arch", "resnet34", "--out", str(out), *QUICK, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "graft: fetched resnet34 weights (87.3 MB) from http://127.0.0.1:" in proc.stderr
    assert "B/s" in proc.stderr  # torch.hub's progress bar
    assert json.loads((out / "graft.json").read_text())["model"]["arch"] == "resnet34"
    assert loopback_hub.paths() == ["/models/resnet34-b627a593.pth"]


@pytest.mark.slow
def test_train_convnext_with_the_real_command_then_again_offline(loopback_hub, data, tmp_path) -> None:
    arch = "convnext_tiny.fb_in22k_ft_in1k"
    repo, _ = serve_timm(loopback_hub, arch)
    # huggingface_hub draws its progress bar on terminals only; TQDM_POSITION=-1 is its switch
    # to draw it anyway, as on a user's terminal.
    env = {**os.environ, "TQDM_POSITION": "-1"}
    proc = _cli("train", str(data), "--arch", arch, "--out", str(tmp_path / "first"), *QUICK, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"graft: fetched {arch} weights (" in proc.stderr
    assert f"/{repo}/resolve/main/model.safetensors into " in proc.stderr
    assert "B/s" in proc.stderr and "114M/114M" in proc.stderr  # size and rate
    seen = len(loopback_hub.requests)
    loopback_hub.stop()
    proc = _cli("train", str(data), "--arch", arch, "--offline", "--out", str(tmp_path / "second"), *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert "fetched" not in proc.stderr and len(loopback_hub.requests) == seen
