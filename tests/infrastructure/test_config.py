"""The run config: defaults resolved per context, bad values refused, CLI flags generated from it."""

import pytest

from graft.cli.config_args import config_from_args
from graft.cli.main import build_parser
from graft.infrastructure.config import TrainConfig
from graft.infrastructure.errors import GraftError


def test_resolved_fills_per_optimizer_defaults():
    c = TrainConfig(data="d").resolved()
    assert (c.lr, c.weight_decay) == (2e-3, 1e-2)
    c = TrainConfig(data="d", optimizer="sgd").resolved()
    assert (c.lr, c.weight_decay) == (1e-2, 1e-4)
    assert TrainConfig(data="d", mode="scratch").resolved().pretrained is False
    assert TrainConfig(data="d", mode="full").resolved().freeze_epochs == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "bogus"},
        {"epochs": 0, "freeze_epochs": 0},
        {"batch_size": 0},
        {"label_smoothing": 1.0},
        {"mode": "features", "unfreeze": ["layer4"]},
        {"crop_padding": -1},
        {"normalize": "imagenet"},
    ],
)
def test_bad_values_are_refused(kwargs):
    with pytest.raises(GraftError):
        TrainConfig(data="d", **kwargs).resolved()


def test_train_flags_map_onto_config():
    args = build_parser().parse_args(
        [
            "train",
            "DATA",
            "--valid-split",
            "0.3",
            "--no-augment",
            "--unfreeze",
            "layer3, layer4",
            "--head",
            "512",
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--no-pretrained",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.data == "DATA" and cfg.valid_split == 0.3 and cfg.augment is False
    assert cfg.unfreeze == ["layer3", "layer4"] and cfg.head == 512
    assert cfg.optimizer == "sgd" and cfg.lr == 0.05 and cfg.pretrained is False
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_crop_padding_flag_and_runs_saved_before_it():
    cfg = config_from_args(build_parser().parse_args(["train", "DATA", "--crop-padding", "4"]))
    assert cfg.crop_padding == 4 and cfg.resolved().crop_padding == 4
    old = TrainConfig(data="d").to_dict()
    del old["crop_padding"]  # graft.json of a run from before this option
    assert TrainConfig.from_dict(old) == TrainConfig(data="d")


def test_normalize_flag_and_runs_saved_before_it():
    cfg = config_from_args(build_parser().parse_args(["train", "DATA", "--normalize", "data"]))
    assert cfg.normalize == "data" and cfg.resolved().normalize == "data"
    assert TrainConfig().normalize == "model"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "DATA", "--normalize", "imagenet"])
    old = TrainConfig(data="d").to_dict()
    del old["normalize"]
    assert TrainConfig.from_dict(old) == TrainConfig(data="d")
