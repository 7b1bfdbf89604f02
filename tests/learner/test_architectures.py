"""Other architectures through the whole pipeline: torchvision weights found offline, inception's aux loss."""

import os
import subprocess
import sys

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from graft import ImageData, Learner
from graft.data.loaders import Batch
from graft.engine.loop import train_epoch
from graft.features.forward import split_outputs
from tests.conftest import make_image_folder

RESNET18_FILE = "resnet18-f37072fd.pth"  # basename of ResNet18_Weights.IMAGENET1K_V1.url


@pytest.fixture(scope="module")
def seeded_weights(tmp_path_factory):
    """A random resnet18 state_dict saved where torch hub keeps torchvision's official file."""
    home = tmp_path_factory.mktemp("torch_home")
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, home / "hub" / "checkpoints" / RESNET18_FILE)
    return home, state


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_image_folder(root / "train", {"red": 8, "blue": 8}, seed=1)
    make_image_folder(root / "val", {"red": 3, "blue": 3}, seed=2)
    return root


def _train(data, out, *extra, env=None):
    args = [sys.executable, "-m", "graft", "train", str(data), "--out", str(out), "--arch", "resnet18",
            "--mode", "features", "--epochs", "1", "--input-size", "64", "--batch-size", "4",
            "--workers", "0", *extra]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, env=env)


def _assert_body_is(run_dir, state):
    saved = load_file(str(run_dir / "model.safetensors"))
    body = [k for k in state if not k.startswith("fc.")]
    # Features mode keeps the body (BatchNorm statistics too) exactly as loaded.
    assert all(torch.equal(saved[k], state[k]) for k in body)
    assert saved["fc.weight"].shape == (2, 512)


def test_resnet18_trains_with_weights_from_a_seeded_torch_home(seeded_weights, small_data, tmp_path):
    home, state = seeded_weights
    env = {**os.environ, "TORCH_HOME": str(home)}
    proc = _train(small_data, tmp_path / "run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "torchvision:resnet18 (pretrained)" in proc.stdout
    _assert_body_is(tmp_path / "run", state)


def test_resnet18_trains_with_a_weights_file(seeded_weights, small_data, tmp_path):
    _, state = seeded_weights
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty_home")}
    proc = _train(small_data, tmp_path / "run", "--weights", str(weights), env=env)
    assert proc.returncode == 0, proc.stderr
    _assert_body_is(tmp_path / "run", state)


def test_missing_torchvision_weights_name_the_file(small_data, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty_home")}
    proc = _train(small_data, tmp_path / "run", env=env)
    assert proc.returncode == 2
    assert RESNET18_FILE in proc.stderr and "--weights" in proc.stderr and "Traceback" not in proc.stderr


def test_inception_trains_with_auxiliary_loss(small_data):
    torch.manual_seed(0)
    data = ImageData.from_folder(small_data)
    learn = Learner(data, "inception_v3", pretrained=False)
    assert learn.preprocessing.input_size == 299
    model = learn.model.train()
    x, y = torch.randn(2, 3, 299, 299), torch.tensor([0, 1])
    logits, aux = split_outputs(model(x))
    assert logits.shape == (2, 2) and len(aux) == 1 and aux[0].shape == (2, 2)

    # train_epoch adds 0.4 × the auxiliary loss: compare with the loss computed by hand.
    batch = Batch(x, y, torch.arange(2), [])
    # Deterministic forwards for the comparison: no dropout, and the main body's BatchNorm fixed.
    # Aux logits exist only while the top module is in train mode.
    model.eval()
    model.training = True
    model.AuxLogits.train()
    with torch.no_grad():
        main_out, aux_out = split_outputs(model(x))
    expected = nn.functional.cross_entropy(main_out, y) + 0.4 * nn.functional.cross_entropy(aux_out[0], y)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    stats = train_epoch(model, [batch], opt, sched, nn.CrossEntropyLoss(), torch.device("cpu"),
                        torch.amp.GradScaler("cpu", enabled=False), 0.4, "test")  # fmt: skip
    assert stats.loss == pytest.approx(expected.item(), rel=1e-4)


def test_inception_below_its_training_size_is_a_clear_error(small_data, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "graft", "train", str(small_data), "--out", str(tmp_path / "run"),
         "--arch", "inception_v3", "--no-pretrained", "--input-size", "224", "--workers", "0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "inception_v3 trains at 299 px or more" in proc.stderr and "--input-size" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_mnasnet_trains_saves_and_loads(small_data, tmp_path):
    """MNASNet loads a state_dict only with its version record, which safetensors does not keep."""
    from graft import load_learner

    data = ImageData.from_folder(small_data)
    learn = Learner(data, "mnasnet0_5", pretrained=False, input_size=64, workers=0)
    learn.fit(mode="full", epochs=2, batch_size=4, augment=False)  # restores the best epoch's weights
    learn.save(tmp_path / "run")
    again = load_learner(tmp_path / "run", device="cpu")
    paths, probs = again.predict_probs(small_data / "val")
    assert len(paths) == 6
    assert abs(probs - learn.predict_probs(small_data / "val")[1]).max() < 1e-5
