"""The Python API end to end on generated images: data → learner → fit → evaluate → predict → save → load."""

import json

import numpy as np
import pytest
import torch

from graft import GraftError, ImageData, Learner, load_learner
from graft.learner.bundle import META_FILE, WEIGHTS_FILE


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import make_image_folder

    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 12, "green": 12, "blue": 12}, seed=1)
    make_image_folder(root / "val", {"red": 4, "green": 4, "blue": 4}, seed=2)
    make_image_folder(root / "test", {"red": 3, "green": 3, "blue": 3}, seed=3)
    data = ImageData.from_folder(root)
    learn = Learner(data, "tf_efficientnet_lite0", input_size=32, seed=0)
    history = learn.fit(
        mode="finetune",
        freeze_epochs=5,
        epochs=1,
        batch_size=6,
        lr=0.02,
        augment=False,
        workers=0,
        log=lambda _: None,
    )
    return root, learn, history


def test_fit_records_history_and_learns(trained):
    _, learn, history = trained
    assert [row["phase"] for row in history] == ["frozen"] * 5 + ["unfrozen"]
    assert all(np.isfinite(row["train_loss"]) for row in history)
    assert learn.metrics["best_epoch"] in range(1, 7)
    # Colour classes are trivially separable: the model must get them.
    assert learn.evaluate().accuracy == 1.0  # the test split


def test_predict_save_load_round_trip(trained, tmp_path):
    root, learn, _ = trained
    files = sorted((root / "test").rglob("*.png"))
    before = learn.predict(files, k=2)
    assert [p.path for p in before] == files
    assert all(p.labels[0] == p.path.parent.name for p in before)
    assert all(p.probs[0] >= p.probs[1] for p in before)

    run = learn.save(tmp_path / "run")
    meta = json.loads((run / META_FILE).read_text())
    assert meta["classes"] == ["blue", "green", "red"]
    assert meta["config"]["input_size"] == 32 and meta["preprocessing"]["input_size"] == 32
    assert sorted(meta["split"]["splits"]) == ["test", "train", "val"]

    loaded = load_learner(run, device="cpu")
    after = loaded.predict(root / "test", k=2)
    assert [p.labels for p in after] == [p.labels for p in before]
    np.testing.assert_allclose([p.probs for p in after], [p.probs for p in before], atol=1e-6)
    assert loaded.evaluate(root / "test").accuracy == 1.0  # a folder of class folders
    assert loaded.evaluate(root, split="val").n == 12  # a dataset root and a split


def test_loading_refuses_a_tampered_model(trained, tmp_path):
    _, learn, _ = trained
    run = learn.save(tmp_path / "run")
    state = bytearray((run / WEIGHTS_FILE).read_bytes())
    state[len(state) // 2] ^= 0x01
    (run / WEIGHTS_FILE).write_bytes(bytes(state))
    with pytest.raises(GraftError, match="refusing a modified or corrupt model"):
        load_learner(run)


def test_weights_that_do_not_fit_the_architecture_are_refused(trained, tmp_path):
    _, learn, _ = trained
    learn.model.classifier = torch.nn.Linear(1280, 7)  # wrong head: shapes disagree with graft.json
    try:
        run = learn.save(tmp_path / "run")
    finally:
        learn.model.classifier = torch.nn.Linear(1280, 3)
    # graft.json says 3 outputs, the head has 7: refused before the network is built.
    with pytest.raises(GraftError, match=r"model\.num_classes is 3, but the weights' head has no such"):
        load_learner(run)


def test_evaluating_the_training_root_uses_the_saved_split(tmp_path):
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "flat", {"red": 10, "blue": 10}, seed=4)
    data = ImageData.from_folder(root, valid_split=0.2, test_split=0.2, seed=0)
    learn = Learner(data, "tf_efficientnet_lite0", input_size=32)
    # No --split: the run's own dataset root means its held-out test split, not class folders.
    result = learn.evaluate(root)
    assert result.n == len(data.splits["test"]) == 4


def test_prediction_reuses_its_folded_copy_until_the_weights_change(trained, tmp_path):
    root, learn, _ = trained
    loaded = load_learner(learn.save(tmp_path / "run"), device="cpu")
    files = sorted((root / "test").rglob("*.png"))
    _, first = loaded.predict_probs(files)
    fast = loaded._inference_model()
    _, again = loaded.predict_probs(files)
    assert loaded._inference_model() is fast
    np.testing.assert_array_equal(first, again)

    head = loaded.model.get_submodule(loaded.spec.head_names[0])
    with torch.no_grad():
        head.bias.add_(torch.tensor([10.0, 0.0, 0.0]))  # in place, like an optimizer step
    _, changed = loaded.predict_probs(files)
    assert loaded._inference_model() is not fast
    assert (changed.argmax(1) == 0).all() and not (first.argmax(1) == 0).all()


def test_normalize_data_and_a_cifar_resnet_trained_from_layer4(tmp_path):
    from graft.data import Preprocessing, channel_stats
    from graft.features.extract import feature_head
    from tests.conftest import make_image_folder

    make_image_folder(tmp_path / "train", {"red": 4, "blue": 4}, size=(36, 32), seed=1)
    make_image_folder(tmp_path / "val", {"red": 2, "blue": 2}, size=(36, 32), seed=2)
    data = ImageData.from_folder(tmp_path)
    with pytest.raises(GraftError, match="normalize"):
        Learner(data, "cifar_resnet18", pretrained=False, normalize="imagenet")
    learn = Learner(data, "cifar_resnet18", pretrained=False, normalize="data", workers=0)
    expected = channel_stats(data.splits["train"], Preprocessing(input_size=32, crop_pct=1.0), workers=0)
    assert (learn.preprocessing.mean, learn.preprocessing.std) == expected
    assert learn.config.normalize == "data" and feature_head(learn.model, learn.spec) is not None
    with pytest.raises(GraftError, match="normalize"):
        learn.fit(normalize="model")
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        learn.fit(mode="scratch", unfreeze=["layer4"], epochs=1, batch_size=4, workers=0, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    after = learn.model.state_dict()
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert torch.equal(after["layer3.1.conv2.weight"], before["layer3.1.conv2.weight"])
    assert not torch.equal(after["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])


def test_without_a_val_split_the_unfrozen_epochs_run_and_the_log_says_why():
    """``graft train DATA/train_valid --valid-split 0``: --unfreeze-below has nothing to judge by."""
    from graft.engine.callbacks import blind_unfreeze
    from graft.engine.optim import Phase
    from graft.infrastructure.config import TrainConfig

    cfg = TrainConfig(data="x", valid_split=0).resolved()  # finetune, no --epochs: unfreeze_below 0.95
    unfrozen, frozen = Phase("unfrozen", 3, 1e-3, 100.0, []), Phase("frozen", 3, 1e-3, 1.0, [])
    assert "--epochs 0 keeps the frozen head" in blind_unfreeze(unfrozen, cfg, has_val=False)
    assert blind_unfreeze(unfrozen, cfg, has_val=True) is None
    assert blind_unfreeze(frozen, cfg, has_val=False) is None
    asked = TrainConfig(data="x", valid_split=0, epochs=2).resolved()  # asked-for epochs: nothing to say
    assert blind_unfreeze(unfrozen, asked, has_val=False) is None
