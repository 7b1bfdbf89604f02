"""Offline weights: seeded torch hub / Hugging Face caches, user files, hostile pickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from graft.infrastructure.errors import GraftError
from graft.models import create_model, find_pretrained, read_state_dict

RESNET18_FILE = "resnet18-f37072fd.pth"  # basename of ResNet18_Weights.DEFAULT.url


def _seed_hub(torch_home: Path, filename: str, state_dict: dict) -> Path:
    path = torch_home / "hub" / "checkpoints" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path


@pytest.fixture
def resnet18_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_official_file_name_matches_torchvision() -> None:
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    assert os.path.basename(url) == RESNET18_FILE


def test_torchvision_weights_from_seeded_torch_home(isolated_caches, resnet18_sd) -> None:
    _seed_hub(isolated_caches["torch_home"], RESNET18_FILE, resnet18_sd)
    model, spec, _ = create_model("resnet18", 3)
    assert torch.equal(model.layer3[1].conv2.weight, resnet18_sd["layer3.1.conv2.weight"])
    assert torch.equal(model.bn1.running_var, resnet18_sd["bn1.running_var"])
    assert model.fc.out_features == 3 and spec.head_names == ["fc"]


def test_find_pretrained_says_where_weights_are_without_building(isolated_caches, resnet18_sd) -> None:
    assert find_pretrained("resnet18") is None
    path = _seed_hub(isolated_caches["torch_home"], RESNET18_FILE, resnet18_sd)
    assert find_pretrained("resnet18") == str(path)
    assert find_pretrained("tf_efficientnet_lite0").endswith(".pth")  # bundled with graft's dependencies


def test_missing_torchvision_weights_explain_what_to_do(isolated_caches) -> None:
    # Downloads are off in the tests (GRAFT_OFFLINE=1); test_download covers them.
    with pytest.raises(GraftError) as info:
        create_model("resnet18", 3)
    msg = str(info.value)
    assert RESNET18_FILE in msg and str(isolated_caches["torch_home"]) in msg
    assert "--weights" in msg and "--no-pretrained" in msg and "graft models fetch resnet18" in msg


def test_inception_and_googlenet_match_torchvision_pretrained_structure(isolated_caches) -> None:
    """Seed the official files, then compare with torchvision's own weights="DEFAULT" models."""
    home = isolated_caches["torch_home"]
    for name, weights_enum in [
        ("inception_v3", torchvision.models.Inception_V3_Weights),
        ("googlenet", torchvision.models.GoogLeNet_Weights),
    ]:
        builder = getattr(torchvision.models, name)
        seeded = builder(weights=None, aux_logits=True, init_weights=False).state_dict()
        _seed_hub(home, os.path.basename(weights_enum.DEFAULT.url), seeded)
        reference = builder(weights="DEFAULT")  # torchvision loads the seeded file, no download
        ours, spec, _ = create_model(name, 4)
        ref_sd, our_sd = reference.state_dict(), ours.state_dict()
        assert ref_sd.keys() == our_sd.keys(), name
        head_keys = {f"{h}.{s}" for h in spec.head_names for s in ("weight", "bias")}
        for key in ref_sd:
            if key not in head_keys:
                assert torch.equal(ref_sd[key], our_sd[key]), (name, key)
        assert ours.transform_input == reference.transform_input is True


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_user_weights_file(tmp_path: Path, resnet18_sd, suffix: str) -> None:
    path = tmp_path / f"my_resnet{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in resnet18_sd.items()}, str(path))
    else:
        torch.save(resnet18_sd, path)
    model, _, _ = create_model("resnet18", 5, weights=path)
    assert torch.equal(model.layer1[0].conv1.weight, resnet18_sd["layer1.0.conv1.weight"])
    assert model.fc.out_features == 5


def test_user_weights_wrapped_with_other_classes_and_module_prefix(tmp_path: Path) -> None:
    torch.manual_seed(1)
    sd = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model, _, _ = create_model("resnet18", 2, weights=str(path), pretrained=False)
    assert torch.equal(model.layer4[0].conv1.weight, sd["layer4.0.conv1.weight"])
    assert model.fc.out_features == 2


def test_user_weights_for_another_architecture_name_body_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(GraftError, match=r"layer1\.2\.") as info:
        create_model("resnet18", 2, weights=path)
    assert "unexpected" in str(info.value)


def test_user_weights_with_a_wrong_body_shape(tmp_path: Path, resnet18_sd) -> None:
    resnet18_sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(resnet18_sd, path)
    with pytest.raises(GraftError, match=r"conv1\.weight"):
        create_model("resnet18", 2, weights=path)


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "pickle-protocol-2", "torch.save"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    if writer.startswith("pickle"):
        # Protocol 2 gets past torch's opcode checks to the `open` global itself.
        protocol = 2 if writer.endswith("2") else pickle.DEFAULT_PROTOCOL
        path.write_bytes(pickle.dumps(_Exploit(str(marker)), protocol=protocol))
    else:
        torch.save({"state_dict": _Exploit(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(GraftError, match="refusing"):
        create_model("resnet18", 2, weights=path)
    assert not marker.exists()


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(torchvision.models.resnet18(weights=None), path)
    with pytest.raises(GraftError, match="state_dict"):
        create_model("resnet18", 2, weights=path)


def test_garbage_files_are_graft_errors(tmp_path: Path) -> None:
    for name, data in [("x.safetensors", b"not safetensors"), ("x.bin", b"\x00\x01junk"), ("x.pth", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(GraftError):
            create_model("resnet18", 2, weights=path)
    with pytest.raises(GraftError, match="not found"):
        create_model("resnet18", 2, weights=tmp_path / "nope.pth")


def test_timm_weights_from_seeded_hf_cache(isolated_caches) -> None:
    """A timm model's hub weights, found in the Hugging Face cache and loaded offline."""
    torch.manual_seed(2)
    sd = timm.create_model("resnet18").state_dict()
    repo = isolated_caches["hf_cache"] / "models--timm--resnet18.a1_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    save_file(sd, str(snap / "model.safetensors"))
    model, spec, pre = create_model("timm:resnet18", 3)
    assert torch.equal(model.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])
    assert spec.source == "timm" and model.fc.out_features == 3
    assert (pre.interpolation, pre.crop_pct) == ("bicubic", 0.95)


def test_timm_weights_from_seeded_torch_hub(isolated_caches) -> None:
    torch.manual_seed(3)
    sd = timm.create_model("resnet18").state_dict()
    _seed_hub(isolated_caches["torch_home"], "resnet18_a1_0-d63eafa0.pth", sd)
    model, _, _ = create_model("timm:resnet18", 3)
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])


def test_missing_timm_weights_name_the_hub_cache(isolated_caches) -> None:
    with pytest.raises(GraftError) as info:
        create_model("timm:resnet18", 3)
    msg = str(info.value)
    assert f"{isolated_caches['hf_cache']}/models--timm--resnet18.a1_in1k" in msg
    assert "model.safetensors or pytorch_model.bin of timm/resnet18.a1_in1k" in msg
    assert "--weights" in msg and "graft models fetch timm:resnet18" in msg


def test_missing_non_tf_lite_hints_at_bundled_twin() -> None:
    with pytest.raises(GraftError, match="tf_efficientnet_lite0 has bundled weights"):
        create_model("efficientnet_lite0", 3)


def test_no_pretrained_needs_no_files() -> None:
    model, _, _ = create_model("resnet18", 3, pretrained=False)
    assert model.fc.out_features == 3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    head=st.sampled_from(
        [b"", b"\x80\x02", b"\x80\x04\x95", b"PK\x03\x04", b"\x08\x00\x00\x00\x00\x00\x00\x00{"]
    ),
    body=st.binary(max_size=400),
    suffix=st.sampled_from([".pth", ".safetensors"]),
)
def test_junk_weights_files_are_one_line_errors(tmp_path_factory, head, body, suffix) -> None:
    """Any bytes at all: a GraftError (never IndexError, KeyError, struct.error... as a traceback)."""
    path = tmp_path_factory.mktemp("junk") / f"w{suffix}"
    path.write_bytes(head + body)
    with pytest.raises(GraftError):
        read_state_dict(path)
