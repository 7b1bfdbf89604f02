"""Fetching published weights on first use, from a real HTTP server on 127.0.0.1.

The server (tests/hub_server.py) stands in for download.pytorch.org (reached through
GRAFT_TORCHVISION_MIRROR) and the Hugging Face hub (HF_ENDPOINT); torch.hub and huggingface_hub
do every transfer, as they would against the real hosts.
"""

from __future__ import annotations

import io
import socket
import time
import urllib.parse
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from huggingface_hub import try_to_load_from_cache

from graft.infrastructure.errors import GraftError
from graft.models import create_model, fetch_weights, find_pretrained
from graft.models import download as dl
from graft.models.weights import torchvision_compat
from tests.hub_server import (
    serve_timm,
    serve_torchvision,
    timm_state_dict,
    torch_bytes,
    torchvision_state_dict,
)

SMALL_TIMM = "mobilenetv3_small_050.lamb_in1k"  # 1.6 M parameters: a quick hub download


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_requests_are_the_official_names_and_paths(monkeypatch) -> None:
    weights = torchvision.models.ResNet34_Weights.DEFAULT
    where = dl.remote("torchvision", "resnet34")
    assert where.url == weights.url == "https://download.pytorch.org/models/resnet34-b627a593.pth"
    assert where.dest.name == "resnet34-b627a593.pth" and where.dest.parent.name == "checkpoints"
    assert dl.expected_hash(where.dest.name) == "b627a593"  # what torch.hub checks
    monkeypatch.setenv("GRAFT_TORCHVISION_MIRROR", "https://mirror.example/pytorch/")
    assert (
        dl.remote("torchvision", "resnet34").url
        == "https://mirror.example/pytorch/models/resnet34-b627a593.pth"
    )

    cfg = timm.models.get_pretrained_cfg("convnext_tiny.fb_in22k_ft_in1k")
    hub = dl.remote("timm", "convnext_tiny.fb_in22k_ft_in1k")
    assert hub.repo_id == cfg.hf_hub_id == "timm/convnext_tiny.fb_in22k_ft_in1k"
    assert hub.filenames == ("model.safetensors", "pytorch_model.bin")  # timm's order
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    assert dl.remote("timm", "convnext_tiny.fb_in22k_ft_in1k").url == (
        "https://hub.example/timm/convnext_tiny.fb_in22k_ft_in1k/resolve/main/model.safetensors"
    )


def test_named_torchvision_weights_pick_their_file_and_preprocessing() -> None:
    v1 = dl.remote("torchvision", "resnet50.imagenet1k_v1")
    assert v1.url.endswith("/resnet50-0676ba61.pth")
    assert dl.remote("torchvision", "resnet50").url.endswith("/resnet50-11ad3fa6.pth")  # DEFAULT = V2
    _, spec, pre = create_model("resnet50.IMAGENET1K_V1", 2, pretrained=False)
    _, _, pre2 = create_model("resnet50", 2, pretrained=False)
    assert spec.arch == "resnet50.imagenet1k_v1" and spec.source == "torchvision"
    assert pre.crop_pct == pytest.approx(224 / 256) and pre2.crop_pct == pytest.approx(224 / 232)
    with pytest.raises(GraftError, match=r"resnet50\.imagenet1k_v2"):
        create_model("torchvision:resnet50.imagenet9k", 2, pretrained=False)


def test_torchvision_first_use_downloads_with_progress_then_uses_the_cache(loopback_hub, capfd) -> None:
    filename, data = serve_torchvision(loopback_hub, "squeezenet1_0")
    model, spec, _ = create_model("squeezenet1_0", 3)
    assert loopback_hub.paths() == [f"/models/{filename}"]
    err = capfd.readouterr().err
    assert "B/s" in err or "100%" in err  # torch.hub's progress bar: size and rate
    dest = dl.remote("torchvision", "squeezenet1_0").dest
    assert "fetched squeezenet1_0 weights (" in err and f"into {dest}" in err
    served = torch.load(io.BytesIO(data), weights_only=True)
    assert torch.equal(model.features[0].weight, served["features.0.weight"])
    assert model.classifier[1].out_channels == 3 and spec.head_names == ["classifier.1"]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    assert [p.name for p in _files(checkpoints)] == [filename]  # no temporary file left behind

    create_model("squeezenet1_0", 3)
    assert len(loopback_hub.requests) == 1  # the second run never touches the network


def test_timm_first_use_downloads_from_the_hub_then_uses_the_cache(loopback_hub, capfd) -> None:
    repo, _ = serve_timm(loopback_hub, SMALL_TIMM)
    keys = set(timm_state_dict(SMALL_TIMM))
    model, spec, _ = create_model(SMALL_TIMM, 4)
    path = f"/{repo}/resolve/main/model.safetensors"
    assert loopback_hub.requests[0] == ("HEAD", path) and ("GET", path) in loopback_hub.requests
    assert f"fetched {SMALL_TIMM} weights" in capfd.readouterr().err
    cached = try_to_load_from_cache(repo, "model.safetensors", cache_dir=dl.registry.hf_cache_dir())
    assert isinstance(cached, str)
    from safetensors.torch import load_file

    served = load_file(cached)
    assert set(served) == keys
    assert torch.equal(model.conv_stem.weight, served["conv_stem.weight"])
    assert model.get_classifier().out_features == 4 and spec.source == "timm"
    seen = len(loopback_hub.requests)
    create_model(SMALL_TIMM, 4)
    assert len(loopback_hub.requests) == seen


@pytest.mark.parametrize("arch", ["densenet121", "mnasnet0_5"])
def test_official_checkpoint_formats_load(loopback_hub, arch) -> None:
    """densenet's published file has pre-rename keys (``norm.1``); MNASNet loads only with its version."""
    _, data = serve_torchvision(loopback_hub, arch)
    served = torch.load(io.BytesIO(data), weights_only=True)
    if arch == "densenet121":
        assert "features.denseblock1.denselayer1.norm.1.weight" in served
    model, _, _ = create_model(arch, 3)
    own = model.state_dict()
    renamed = torchvision_compat(arch, served)
    assert all(torch.equal(own[k], v) for k, v in renamed.items() if not k.startswith("classifier"))


def test_timm_falls_back_to_pytorch_model_bin(loopback_hub) -> None:
    repo = timm.models.get_pretrained_cfg(SMALL_TIMM).hf_hub_id
    sd = timm_state_dict(SMALL_TIMM)
    loopback_hub.add_hub_file(repo, "pytorch_model.bin", torch_bytes(sd))
    model, _, _ = create_model(SMALL_TIMM, 2)
    assert torch.equal(model.conv_stem.weight, sd["conv_stem.weight"])
    assert ("HEAD", f"/{repo}/resolve/main/model.safetensors") in loopback_hub.requests


@pytest.mark.parametrize("variable", ["GRAFT_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("arch", ["squeezenet1_0", SMALL_TIMM])
def test_offline_makes_no_request_and_says_how_to_get_the_file(loopback_hub, monkeypatch, variable, arch):
    serve_torchvision(loopback_hub, "squeezenet1_0")
    serve_timm(loopback_hub, SMALL_TIMM)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(GraftError) as info:
        create_model(arch, 2)
    msg = str(info.value)
    assert loopback_hub.requests == []
    assert f"downloads are off ({variable}=1)" in msg and f"graft models fetch {arch}" in msg
    if arch == "squeezenet1_0":
        assert f"squeezenet1_0-b66bff10.pth belongs in {Path(torch.hub.get_dir()) / 'checkpoints'}" in msg
    else:
        assert f"models--timm--{SMALL_TIMM}" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("arch", ["resnet34", "convnext_tiny.fb_in22k_ft_in1k"])
def test_no_network_is_a_one_line_error_within_seconds(loopback_hub, monkeypatch, arch) -> None:
    dead = _closed_port()
    monkeypatch.setenv("GRAFT_TORCHVISION_MIRROR", dead)
    monkeypatch.setenv("HF_ENDPOINT", dead)
    start = time.perf_counter()
    with pytest.raises(GraftError, match=f"cannot download the {arch} weights from {dead}") as info:
        create_model(arch, 2)
    assert time.perf_counter() - start < 10
    assert "graft models fetch" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("arch", ["squeezenet1_0", SMALL_TIMM])
def test_a_silent_server_times_out(loopback_hub, monkeypatch, arch) -> None:
    serve_torchvision(loopback_hub, "squeezenet1_0", fault="hang")
    serve_timm(loopback_hub, SMALL_TIMM, fault="hang")
    monkeypatch.setenv("GRAFT_DOWNLOAD_TIMEOUT", "1")
    start = time.perf_counter()
    with pytest.raises(GraftError, match="cannot download"):
        create_model(arch, 2)
    assert time.perf_counter() - start < 8


@pytest.mark.parametrize("fault", ["cut", "corrupt"])
def test_torchvision_transfer_that_fails_its_hash_leaves_nothing(loopback_hub, fault) -> None:
    serve_torchvision(loopback_hub, "squeezenet1_0", fault=fault)
    with pytest.raises(GraftError, match=r"does not match the sha256 in its name.*nothing was saved"):
        create_model("squeezenet1_0", 2)
    assert _files(Path(torch.hub.get_dir())) == []
    assert find_pretrained("squeezenet1_0") is None


@pytest.mark.parametrize("fault", ["cut", "corrupt"])
def test_hub_transfer_that_fails_leaves_no_weights(loopback_hub, fault) -> None:
    repo, _ = serve_timm(loopback_hub, SMALL_TIMM, fault=fault)
    with pytest.raises(GraftError, match=r"nothing was saved|removed from the cache"):
        create_model(SMALL_TIMM, 2)
    cache = Path(dl.registry.hf_cache_dir())
    assert not [p for p in _files(cache) if "/blobs/" in str(p) or "/snapshots/" in str(p)]
    assert try_to_load_from_cache(repo, "model.safetensors", cache_dir=str(cache)) is None


def test_server_errors_are_one_line(loopback_hub) -> None:
    with pytest.raises(GraftError, match="answered HTTP 404"):
        create_model("squeezenet1_0", 2)  # the mirror lacks the file
    with pytest.raises(GraftError, match=r"does not exist or is gated or private; .* set HF_TOKEN"):
        create_model(SMALL_TIMM, 2)  # the hub lacks the repo
    loopback_hub.add_hub_file(timm.models.get_pretrained_cfg(SMALL_TIMM).hf_hub_id, "README.md", b"hi")
    with pytest.raises(GraftError, match=r"has no model\.safetensors or pytorch_model\.bin"):
        create_model(SMALL_TIMM, 2)


def test_a_cached_file_that_fails_its_hash_says_how_to_remove_it(isolated_caches) -> None:
    bad = isolated_caches["torch_home"] / "hub" / "checkpoints" / "squeezenet1_0-b66bff10.pth"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(torch_bytes(torchvision_state_dict("squeezenet1_0")))  # not the official bytes
    with pytest.raises(GraftError, match=rf"fails its sha256 check.*rm '{bad}'.*graft models fetch"):
        fetch_weights("squeezenet1_0", verify=True)
    bad.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(GraftError, match=rf"delete {bad} and run again to fetch it anew"):
        create_model("squeezenet1_0", 2)


def test_bad_timeout_setting_is_a_graft_error(monkeypatch) -> None:
    monkeypatch.setenv("GRAFT_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(GraftError, match="GRAFT_DOWNLOAD_TIMEOUT"):
        dl.timeout()


def test_human_sizes() -> None:
    assert [dl.human_size(n) for n in (None, 12, 87_319_819, 2.5e9)] == ["?", "12 B", "87.3 MB", "2.5 GB"]


# The seeds' torchvision architectures and three timm families: each downloads, loads and gets
# its head replaced. (squeezenet1_0 and a MobileNetV3 run above, in the fast suite.)
TORCHVISION_SEEDS = ["resnet18", "resnet34", "densenet121", "vgg11_bn", "alexnet", "inception_v3"]
TIMM_FAMILIES = [
    "convnext_tiny.fb_in22k_ft_in1k",
    "efficientnet_b0.ra_in1k",
    "vit_small_patch14_dinov2.lvd142m",
]


@pytest.mark.slow
@pytest.mark.parametrize("arch", [*TORCHVISION_SEEDS, "vit_b_16", *TIMM_FAMILIES])
def test_every_family_downloads_and_gets_a_new_head(loopback_hub, arch) -> None:
    if arch not in TIMM_FAMILIES:
        _, data = serve_torchvision(loopback_hub, arch)
        served = torchvision_compat(arch, torch.load(io.BytesIO(data), weights_only=True))
    else:
        _, data = serve_timm(loopback_hub, arch)
        from safetensors.torch import load

        served = load(data)
    model, spec, _ = create_model(arch, 5)
    own = model.state_dict()
    body = [k for k in served if k in own and not any(k.startswith(h + ".") for h in spec.head_names)]
    assert len(body) > 10 and all(torch.equal(own[k], served[k]) for k in body)
    for head in spec.head_names:
        assert model.get_submodule(head).weight.shape[0] == 5
    if arch == "inception_v3":
        assert set(spec.head_names) == {"fc", "AuxLogits.fc"}
    assert len(loopback_hub.paths("GET")) == 1


@pytest.mark.slow
def test_a_vit_at_another_input_size_resamples_downloaded_position_embeddings(loopback_hub) -> None:
    arch = "vit_small_patch14_dinov2.lvd142m"  # published for 518 px
    serve_timm(loopback_hub, arch)
    model, spec, pre = create_model(arch, 3, input_size=224)
    assert spec.build_kwargs == {"img_size": 224} and pre.input_size == 224
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3)
    assert urllib.parse.urlsplit(dl.remote("timm", arch).url).path.endswith("/model.safetensors")


def test_an_unusable_cache_folder_is_a_graft_error(loopback_hub, tmp_path, monkeypatch) -> None:
    serve_torchvision(loopback_hub, "squeezenet1_0")
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a-file" / "torch"))
    with pytest.raises(GraftError, match=r"cannot create .*a-file/torch/hub/checkpoints.*TORCH_HOME"):
        create_model("squeezenet1_0", 2)
    assert loopback_hub.requests == []


def test_weights_or_fallback_says_why_it_fell_back(isolated_caches) -> None:
    from graft.models import weights_or_fallback

    arch, path, why = weights_or_fallback("resnet18", "tf_efficientnet_lite0")  # downloads are off
    assert arch == "tf_efficientnet_lite0" and path.name == "efficientnet-lite0-57934424.pth"
    assert why.startswith("no pretrained weights for resnet18 on this machine, and downloads are off")
    assert weights_or_fallback("tf_efficientnet_lite1", "resnet18")[::2] == ("tf_efficientnet_lite1", None)
