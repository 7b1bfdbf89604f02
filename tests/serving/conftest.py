"""Fixtures of the serving tests: a really trained tiny run, and the app on a live loopback port."""

import socket
import threading
import time

import pytest
import uvicorn

from graft import ImageData, Learner
from graft.serving.app import create_app
from tests.conftest import make_image_folder


@pytest.fixture(scope="package")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colors")
    make_image_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, size=(50, 40), seed=1)
    make_image_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, size=(50, 40), ext=".jpg", seed=2)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    learn.fit(mode="features", epochs=5, batch_size=8, lr=0.02, augment=False, workers=0, log=lambda _: None)
    return root, learn.save(tmp_path_factory.mktemp("run") / "run")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="package")
def live_server(run):
    """The app under uvicorn on a loopback port, in a background thread."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(run[1], device="cpu"), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="package")
def multi_run(tmp_path_factory):
    """A really trained tiny multi-label run (thresholds chosen on val) and its images."""
    from tests.inference.multi_label_run import make_tiles, train_multi_label

    root = make_tiles(tmp_path_factory.mktemp("tiles"))
    return root / "images", train_multi_label(root, tmp_path_factory.mktemp("multi") / "run")
