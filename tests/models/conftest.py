"""Shared fixtures: every test sees empty, private weight caches unless it seeds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these small-model tests single-threaded, then restore the thread count.

    On a shared 2-core machine, intra-op threads fighting other processes made the suite about
    four times slower (90 s instead of 22 s); the tensors here are too small to gain from threads.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point TORCH_HOME and the Hugging Face cache at empty folders under ``tmp_path``.

    Keeps the results independent of whatever happens to be cached on the machine.
    """
    torch_home = tmp_path / "torch_home"
    hf_cache = tmp_path / "hf_cache"
    torch_home.mkdir()
    hf_cache.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"torch_home": torch_home, "hf_cache": hf_cache}


@pytest.fixture(scope="session")
def scratch():
    """``scratch(arch, head_hidden=None)``: a shared from-scratch ``create_model(arch, 3)`` result.

    Building the big models (vgg, vit, inception) dominates the suite's time, so each
    configuration is built once per session. Tests must not change the weights in place.
    """
    from graft.models import create_model

    cache: dict[tuple, tuple] = {}

    def make(arch: str, head_hidden: int | None = None):
        key = (arch, head_hidden)
        if key not in cache:
            cache[key] = create_model(arch, 3, pretrained=False, head_hidden=head_hidden)
        return cache[key]

    return make
