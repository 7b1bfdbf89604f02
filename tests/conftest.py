"""Shared fixtures: generated image folders and access to the real datasets in ../shared/datasets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The real datasets sit beside the checkout (never inside it): <parent of repo>/shared/datasets.
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

# Well-separated class colours so a model can learn generated data quickly.
PALETTE = [
    (220, 40, 40),
    (40, 180, 60),
    (40, 70, 220),
    (230, 200, 30),
    (160, 50, 200),
    (30, 200, 210),
    (240, 130, 20),
    (120, 120, 120),
]


def shared_dataset(name: str) -> Path:
    """Path of ``shared/datasets/<name>``, or skip the test when it is not there."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(
            f"../shared/datasets/{name} not found: "
            "real-data tests need the shared datasets beside the checkout"
        )
    return path


def write_image(
    path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30), seed: int = 0
) -> Path:
    """Write a noisy image of ``color`` (width, height = ``size``); the format follows the suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.array(color, dtype=np.int16)[None, None, :]
    noise = rng.integers(-25, 26, size=(h, w, 3), dtype=np.int16)
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)
    return path


def make_image_folder(
    root: Path,
    classes: dict[str, int] | None = None,
    size: tuple[int, int] = (40, 30),
    ext: str = ".png",
    seed: int = 0,
) -> Path:
    """Write ``root/<class>/<class>_<i><ext>`` images with a colour per class; returns ``root``.

    Args:
        root: Folder to fill (created if needed). For a train/val layout call it once per split,
            e.g. on ``tmp_path / "train"`` and ``tmp_path / "val"`` with different seeds.
        classes: Class name -> number of images. Default ``{"cat": 6, "dog": 5}``.
        size: (width, height) of every image.
        ext: File suffix, which picks the format (``.png``, ``.jpg``, ``.bmp``, ...).
        seed: Noise seed, so two calls can write different pixels.
    """
    classes = {"cat": 6, "dog": 5} if classes is None else classes
    root = Path(root)
    for k, (name, count) in enumerate(classes.items()):
        color = PALETTE[k % len(PALETTE)]
        for i in range(count):
            write_image(root / name / f"{name}_{i}{ext}", color, size, seed=seed * 100_003 + k * 1000 + i)
    return root


@pytest.fixture(name="make_image_folder")
def make_image_folder_fixture() -> Callable[..., Path]:
    """The :func:`make_image_folder` function: ``make_image_folder(tmp_path, classes={...})``."""
    return make_image_folder


@pytest.fixture(name="shared_dataset")
def shared_dataset_fixture() -> Callable[[str], Path]:
    """The :func:`shared_dataset` function: ``shared_dataset("hymenoptera")`` or skip."""
    return shared_dataset


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the suite's feature cache out of the user's ~/.cache (one per test session)."""
    os.environ["GRAFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))


# Both kinds of CPU, forced with GRAFT_CPU_BF16 rather than read from the machine running the tests
# (on a CPU without native bf16 the bf16 path is emulated: slower, same arithmetic).
CPU_KINDS = {"cpu-without-bf16": "0", "cpu-with-native-bf16": "1"}


@pytest.fixture(params=list(CPU_KINDS.values()), ids=list(CPU_KINDS))
def native_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the test once as on a CPU without native bf16 and once as on one with it."""
    monkeypatch.setenv("GRAFT_CPU_BF16", request.param)
    return request.param == "1"


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the internet: downloads are off unless a test serves them on loopback."""
    monkeypatch.setenv("GRAFT_OFFLINE", "1")


@pytest.fixture
def loopback_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A :class:`tests.hub_server.LoopbackHub` that graft downloads from, with empty caches.

    graft reaches it through the settings a user behind a proxy has: ``GRAFT_TORCHVISION_MIRROR``
    for torchvision's host and ``HF_ENDPOINT`` for the hub. Random weights cannot carry the
    sha256 prefix in an official torchvision file name, so for files this server holds the
    expected prefix is that of the bytes it was given (``LoopbackHub.served_prefixes``; a
    subprocess gets the same through ``hub.subprocess_env``).
    """
    from graft.models import download
    from tests.hub_server import LoopbackHub

    hub = LoopbackHub().start()
    for var in ("GRAFT_OFFLINE", "HF_HUB_OFFLINE", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("GRAFT_TORCHVISION_MIRROR", hub.url)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    for var, folder in (("TORCH_HOME", "torch_home"), ("HF_HUB_CACHE", "hf_cache")):
        (tmp_path / folder).mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(tmp_path / folder))
    official = download.expected_hash

    def served_prefix(filename: str) -> str | None:
        return hub.served_prefixes(official).get(filename) or official(filename)

    monkeypatch.setattr(download, "expected_hash", served_prefix)
    yield hub
    hub.stop()


def tiny_run(root: Path, train: dict[str, int], val: dict[str, int]):
    """A Lite0 run trained for seconds (frozen body, 32 px, fp32) on generated images of solid
    colours in ``root/train`` and ``root/val``; returns the fitted learner."""
    from graft import ImageData, Learner

    make_image_folder(root / "train", train, size=(50, 40), seed=1)
    make_image_folder(root / "val", val, size=(50, 40), seed=2)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    fast = {"batch_size": 8, "lr": 0.02, "augment": False, "workers": 0, "precision": "fp32"}
    learn.fit(mode="features", epochs=2, **fast, log=lambda _: None)
    return learn
