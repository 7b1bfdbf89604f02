"""The README's recipes (examples/), each shortened: a few real images per class, one epoch, small input.

The scripts run as a user runs them (a subprocess, offline, with private weight and feature caches).
The full-length numbers are in the README's recipe table.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from graft.models import create_model
from tests.conftest import shared_dataset
from tests.hub_server import serve_torchvision

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def subset(src: Path, dst: Path, per_class: int) -> Path:
    """``dst`` mirrors ``src``'s folders, with symlinks to the first ``per_class`` files of each
    folder that holds images."""
    for folder in sorted(p for p in [src, *src.rglob("*")] if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in {".jpg", ".png"})
        for f in files[:per_class]:
            target = dst / folder.relative_to(src) / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f)
    return dst


def run_recipe(
    script: str, *args: str | Path, tmp_path: Path, torch_home: Path | None = None, env: dict | None = None
) -> str:
    env = {
        **(env or os.environ),
        "TORCH_HOME": str(torch_home or tmp_path / "torch_home"),
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "GRAFT_CACHE_DIR": str(tmp_path / "features"),
    }
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def seed_torch_home(home: Path, archs: list[str]) -> dict[str, dict]:
    """Random state_dicts saved under torchvision's official file names, as a download would leave them."""
    states = {}
    for arch in archs:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        kwargs = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
        torch.manual_seed(len(states))
        states[arch] = torchvision.models.get_model(arch, weights=None, **kwargs).state_dict()
        path = home / "hub" / "checkpoints" / Path(weights.url).name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(states[arch], path)
    return states


@pytest.mark.slow
def test_malaria_recipe_falls_back_to_the_bundled_body(tmp_path):
    data = subset(shared_dataset("malaria_subset"), tmp_path / "malaria", per_class=10)
    out = run_recipe(
        "malaria_cells.py", data, "--out", tmp_path / "run", "--epochs", "2", "--input-size", "64",
        "--shown", "1", tmp_path=tmp_path,
    )  # fmt: skip
    assert "densenet121: no ImageNet weights (no pretrained weights for densenet121 on this machine" in out
    assert "body: tf_efficientnet_lite0" in out
    # 70/20/10 of 2 x 10 images: 2 test images, reported as the tutorial does.
    assert re.search(r"Test Loss: \d+\.\d{4}  Test Accuracy: \d+% \([012]/2\)", out), out
    assert len(re.findall(r"true (NotInfected|infected) ", out)) == 2  # one shown per class
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    # The tutorial's head: Linear(features, 460) - ReLU - Dropout(0.4) - Linear(460, 2).
    assert saved["classifier.0.weight"].shape == (460, 1280)
    assert saved["classifier.3.weight"].shape == (2, 460)
    assert (tmp_path / "run" / "test_predictions.png").stat().st_size > 1000


@pytest.mark.slow
def test_malaria_recipe_uses_densenet121_when_its_weights_are_cached(tmp_path):
    data = subset(shared_dataset("malaria_subset"), tmp_path / "malaria", per_class=10)
    states = seed_torch_home(tmp_path / "home", ["densenet121"])
    out = run_recipe(
        "malaria_cells.py", data, "--out", tmp_path / "run", "--epochs", "1", "--input-size", "64",
        "--shown", "1", tmp_path=tmp_path, torch_home=tmp_path / "home",
    )  # fmt: skip
    assert "body: densenet121, ImageNet weights from" in out
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert saved["classifier.0.weight"].shape == (460, 1024)
    # Adam trained the head only: the body is the cached file's, BatchNorm statistics included.
    body = [k for k in states["densenet121"] if k.startswith("features.")]
    assert all(torch.equal(saved[k], states["densenet121"][k]) for k in body)


@pytest.mark.slow
def test_fastai_flow_recipe(tmp_path):
    data = subset(shared_dataset("hymenoptera"), tmp_path / "hymenoptera", per_class=9)
    out = run_recipe(
        "fastai_flow.py", data, "--out", tmp_path / "flow", "--epochs", "1", "--input-size", "64",
        tmp_path=tmp_path,
    )  # fmt: skip
    # 9 val images per class: 3 of each moved to test/.
    assert re.search(r"ants\s+9\s+6\s+3", out) and re.search(r"bees\s+9\s+6\s+3", out)
    assert "most confused:" in out and "after unfreezing: val accuracy" in out
    listed = re.findall(
        r"^  (ants|bees)/(\S+): (ants|bees) [01]\.\d{3}(?:  \(unknown: unknown score [\d.]+\))?$",
        out,
        flags=re.M,
    )
    files = sorted((p.parent.name, p.name) for p in (tmp_path / "flow" / "data" / "test").rglob("*.jpg"))
    assert [(c, f) for c, f, _ in listed] == files  # every test image, in file order
    for name in ("top_losses.png", "confusion.png", "run/model.safetensors", "run/graft.json"):
        assert (tmp_path / "flow" / name).is_file()


@pytest.mark.slow
def test_finetune_vs_features_recipe_trains_what_each_variant_says(tmp_path):
    data = subset(shared_dataset("hymenoptera"), tmp_path / "hymenoptera", per_class=6)
    out = run_recipe(
        "finetune_vs_features.py", data, "--out", tmp_path / "cmp", "--epochs", "1", "--input-size", "64",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert "resnet34" not in out.split("body:")[1].split("\n")[0]  # no resnet34 weights: the fallback
    assert all(
        re.search(rf"^{v}\s+[01]\.\d{{4}}", out, flags=re.M) for v in ("finetune", "features", "selective")
    )
    pretrained, _, _ = create_model("tf_efficientnet_lite0", 2)
    start = pretrained.state_dict()
    runs = {
        v: load_file(str(tmp_path / "cmp" / v / "model.safetensors"))
        for v in ("finetune", "features", "selective")
    }
    assert all((tmp_path / "cmp" / v / "val_predictions.png").is_file() for v in runs)

    def changed(weights: dict) -> set[str]:
        """Body blocks (blocks.N counted apart) with any tensor that differs from the pretrained one."""
        moved = [k for k in start if not k.startswith("classifier") and not torch.equal(weights[k], start[k])]
        return {".".join(k.split(".")[:2]) if k.startswith("blocks.") else k.split(".")[0] for k in moved}

    assert changed(runs["features"]) == set()
    assert changed(runs["selective"]) == {"blocks.5", "blocks.6", "conv_head", "bn2"}
    assert {"conv_stem", "blocks.0", "blocks.3", "conv_head"} <= changed(runs["finetune"])


@pytest.mark.slow
def test_six_architectures_recipe_with_cached_downloaded_and_missing_weights(tmp_path, loopback_hub):
    data = subset(shared_dataset("hymenoptera"), tmp_path / "hymenoptera", per_class=4)
    archs = ["vgg11_bn", "squeezenet1_0", "densenet121", "inception_v3"]
    states = seed_torch_home(tmp_path / "home", archs)
    serve_torchvision(loopback_hub, "resnet18")  # downloaded on first use; alexnet: the mirror lacks it
    out = run_recipe(
        "six_architectures.py", data, "--out", tmp_path / "six", "--epochs", "1", "--input-size", "80",
        "--batch-size", "4", tmp_path=tmp_path, torch_home=tmp_path / "home",
        env=loopback_hub.subprocess_env(tmp_path / "site"),
    )  # fmt: skip
    assert loopback_hub.paths() == ["/models/resnet18-f37072fd.pth", "/models/alexnet-owt-7be5be79.pth"]
    table = out.split("head\n")[-1]
    heads = {
        "resnet18": "fc", "vgg11_bn": "classifier.6", "squeezenet1_0": "classifier.1",
        "densenet121": "classifier", "inception_v3": "AuxLogits.fc, fc",
    }  # fmt: skip
    for arch, head in heads.items():
        for how in ("features", "finetune", "scratch"):
            size = 299 if arch == "inception_v3" else 80  # inception's aux head trains at 299 px only
            row = rf"^{arch}\s+{how}\s+[01]\.\d{{4}}\s+{size}\s+[\d.]+\s+{re.escape(head)}$"
            assert re.search(row, table, re.M), (arch, how)
    assert "alexnet: no ImageNet weights (cannot download the alexnet weights: http://127.0.0.1:" in out
    assert re.search(r"^alexnet\s+features\s+-\s+-\s+-\s+no weights$", table, re.M)
    assert re.search(r"^alexnet\s+scratch\s+[01]\.\d{4}\s+80\s", table, re.M)
    # Feature extraction kept squeezenet's seeded body exactly; its new head is a 1x1 conv to 2 classes.
    saved = load_file(str(tmp_path / "six" / "squeezenet1_0-features" / "model.safetensors"))
    body = [k for k in states["squeezenet1_0"] if k.startswith("features.")]
    assert all(torch.equal(saved[k], states["squeezenet1_0"][k]) for k in body)
    assert saved["classifier.1.weight"].shape == (2, 512, 1, 1)
    # Inception's auxiliary head was replaced too (it feeds the training loss).
    inception = load_file(str(tmp_path / "six" / "inception_v3-finetune" / "model.safetensors"))
    assert inception["AuxLogits.fc.weight"].shape == (2, 768) and inception["fc.weight"].shape == (2, 2048)


def run_shell_recipe(script: str, *args: str | Path, tmp_path: Path, **env: str) -> str:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # this environment's graft
    full = {**os.environ, "PATH": path, "GRAFT_CACHE_DIR": str(tmp_path / "features"), **env}
    command = ["bash", str(EXAMPLES / script), *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, env=full)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_cifar10_from_scratch_recipe(tmp_path):
    datasets = tmp_path / "datasets"
    subset(shared_dataset("cifar10_folders"), datasets / "cifar10_folders", per_class=6)
    (datasets / "cifar10_tiny").symlink_to(shared_dataset("cifar10_tiny"))
    runs = tmp_path / "runs"
    out = run_shell_recipe("cifar10_scratch.sh", datasets, runs, tmp_path=tmp_path, EPOCHS="1")
    assert "model: graft:cifar_resnet18 (random init), input 32px" in out
    assert re.search(r"accuracy [01]\.\d{4} \(\d+/60\)", out)  # the 6 x 10 test images
    config = json.loads((runs / "folders" / "graft.json").read_text())
    assert config["config"]["crop_padding"] == 4 and config["preprocessing"]["input_size"] == 32
    assert config["preprocessing"]["mean"] != [0.4914, 0.4822, 0.4465]  # measured on these images
    rows = list(csv.reader((runs / "submission.csv").open()))
    assert rows[0] == ["id", "label"] and len(rows) == 2 and rows[1][0] == "1"
    assert rows[1][1] in config["classes"]


@pytest.mark.slow
def test_dog_breeds_recipe_writes_the_sample_shaped_submission(tmp_path):
    data = shared_dataset("dog_tiny")
    out = run_shell_recipe(
        "dog_breeds.sh", data, tmp_path / "dog", tmp_path=tmp_path, EPOCHS="1", GRAFT_ARGS="--input-size 64"
    )
    organized = json.loads((tmp_path / "dog" / "data" / "organize.json").read_text())
    assert organized["counts"]["train_valid"] == 300 and organized["counts"]["test"] == 300
    final = json.loads((tmp_path / "dog" / "final" / "graft.json").read_text())
    assert final["config"]["head"] == 256 and final["config"]["schedule"] == "step"
    assert len(final["classes"]) == 110 and final["metrics"]["best_epoch"] == 1  # no val: the last epoch
    header = next(csv.reader((data / "sample_submission.csv").open()))
    rows = list(csv.reader((tmp_path / "dog" / "submission.csv").open()))
    assert rows[0] == header and len(rows) == 301
    probs = [[float(x) for x in row[1:]] for row in rows[1:]]
    assert all(abs(sum(p) - 1) < 1e-3 for p in probs)
    missing = [i for i, name in enumerate(header[1:]) if name not in final["classes"]]
    assert len(missing) == 10 and all(p[i] == 0 for p in probs for i in missing)
    assert "wrote a probs submission of 300 rows" in out


@pytest.mark.slow
def test_real_world_labels_recipe(tmp_path):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "flowers5").symlink_to(shared_dataset("flowers5"))
    subset(shared_dataset("hymenoptera"), datasets / "hymenoptera", per_class=40)
    out = run_recipe(
        "real_world_labels.py", datasets, "--out", tmp_path / "labels", "--collages", "40",
        "--input-size", "64", "--epochs", "1", "--freeze-epochs", "2", tmp_path=tmp_path,
    )  # fmt: skip
    assert "[40 collages] decision: thresholds (max F1 per class on val (8))" in out
    assert re.search(r"^40 collages, val +8 ", out, re.M) and re.search(
        r"^40 collages, test +8 ", out, re.M
    ), out
    assert re.search(r"^hymenoptera 1:20, --balance none, val +80 ", out, re.M), out  # val: 40 + 40
    assert re.search(r"--balance auto vs none: [+-]\d+\.\d points of val balanced accuracy", out)
    meta = json.loads((tmp_path / "labels" / "run-auto" / "graft.json").read_text())
    assert meta["resolved"]["balance"] == "weights" and meta["split"]["splits"]["train"]
    assert sum(row[1] == "bees" for row in meta["split"]["splits"]["train"]) == 2  # 40 ants / 20
