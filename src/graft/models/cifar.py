"""graft's own architectures (model source ``graft``): torchvision networks reshaped for small inputs.

They have no published weights: train them from scratch (``--mode scratch`` or
``--no-pretrained``), or start from a state_dict of your own with ``--weights FILE``.

To add one, write a builder that returns the network with an ImageNet-style head (a final
``nn.Linear``, which graft replaces) and add an :class:`Architecture` to :data:`ARCHITECTURES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torchvision
from torch import nn

from graft.data.transforms import Preprocessing

# CIFAR-10's per-channel mean and standard deviation over all pixels of its 50,000 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CIFAR_PREPROCESSING = Preprocessing(
    input_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, interpolation="bilinear", crop_pct=1.0
)


@dataclass(frozen=True)
class Architecture:
    """One of graft's own networks.

    Attributes:
        build: Returns the randomly initialised network with a 1000-class ``nn.Linear`` head.
        preprocessing: Its default input size, mean, std, interpolation and crop fraction.
    """

    build: Callable[[], nn.Module]
    preprocessing: Preprocessing


def cifar_resnet18() -> torchvision.models.ResNet:
    """torchvision's ResNet-18 for 32 px inputs, as in kuangliu/pytorch-cifar: the 7x7 stride-2
    stem convolution becomes a 3x3 stride-1 one and the max-pool is dropped, so layer1 sees
    32x32 feature maps and layer4 4x4 ones (11.2 M parameters with a 10-class head)."""
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    model.maxpool = nn.Identity()
    return model


ARCHITECTURES: dict[str, Architecture] = {
    "cifar_resnet18": Architecture(cifar_resnet18, CIFAR_PREPROCESSING),
}


def names() -> tuple[str, ...]:
    """The names of graft's own architectures, sorted."""
    return tuple(sorted(ARCHITECTURES))


def build(name: str) -> nn.Module:
    """A fresh, randomly initialised ``name`` (its original 1000-class head)."""
    return ARCHITECTURES[name].build()


def preprocessing(name: str) -> Preprocessing:
    """The default preprocessing of ``name``."""
    return ARCHITECTURES[name].preprocessing
