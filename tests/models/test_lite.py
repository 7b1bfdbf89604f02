"""The bundled EfficientNet-Lite weights: strict conversion and a real-image sanity check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from graft.data.transforms import eval_transform
from graft.models import create_model, read_state_dict
from graft.models.factory import _load_pretrained
from graft.models.registry import lite_file

HYMENOPTERA_VAL = Path("/work/shared/datasets/hymenoptera/val")
ANT, BEE = 310, 309  # ImageNet-1k class indices


@pytest.mark.parametrize(("index", "size", "crop_pct"), [(0, 224, 0.875), (1, 240, 0.882), (2, 260, 0.890)])
def test_lite_loads_strictly_with_its_preprocessing(index: int, size: int, crop_pct: float) -> None:
    arch = f"tf_efficientnet_lite{index}"
    model, spec, pre = create_model(arch, 4)
    assert (spec.source, spec.arch, spec.head_names) == ("timm", arch, ["classifier"])
    assert (pre.input_size, pre.interpolation) == (size, "bicubic")
    assert pre.crop_pct == pytest.approx(crop_pct)
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)
    packaged = read_state_dict(lite_file(arch))
    assert torch.equal(model.conv_stem.weight, packaged["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_mean, packaged["_bn1.running_mean"])  # lukemelas _bn1 = head BN
    last = len(packaged) and max(int(k.split(".")[1]) for k in packaged if k.startswith("_blocks."))
    stage = len(model.blocks) - 1
    assert torch.equal(
        model.blocks[stage][-1].conv_pwl.weight, packaged[f"_blocks.{last}._project_conv.weight"]
    )
    assert model.classifier.out_features == 4


def test_lite_weights_file_in_lukemelas_format_is_converted() -> None:
    path = lite_file("tf_efficientnet_lite0")
    model, _, _ = create_model("timm:tf_efficientnet_lite0", 2, weights=path, pretrained=False)
    assert torch.equal(
        model.blocks[0][0].conv_dw.weight, read_state_dict(path)["_blocks.0._depthwise_conv.weight"]
    )


def _images(folder: Path, n: int) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]


@pytest.mark.skipif(not HYMENOPTERA_VAL.is_dir(), reason="hymenoptera dataset not present")
def test_lite0_imagenet_predictions_tell_ants_from_bees() -> None:
    """The converted 1000-class model must know ants (310) from bees (309) on real photos."""
    _, _, pre = create_model("tf_efficientnet_lite0", 2)
    imagenet_model = _load_pretrained("timm", "tf_efficientnet_lite0", {}).eval()
    tf = eval_transform(pre)
    paths = [(p, ANT) for p in _images(HYMENOPTERA_VAL / "ants", 20)]
    paths += [(p, BEE) for p in _images(HYMENOPTERA_VAL / "bees", 20)]
    assert len(paths) == 40
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p, _ in paths])
    with torch.no_grad():
        logits = imagenet_model(x)
    picked = torch.where(logits[:, ANT] > logits[:, BEE], ANT, BEE)
    truth = torch.tensor([label for _, label in paths])
    accuracy = (picked == truth).float().mean().item()
    assert accuracy >= 0.9, f"ant-vs-bee accuracy {accuracy:.2f}"
