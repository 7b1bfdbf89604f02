"""report.html in a real browser: headless Chromium (Debian's package) driven by Playwright (slow).

`.ci/run` installs Chromium; elsewhere these tests skip with the reason.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft import ImageData, Learner
from graft.workflows.report import SECTIONS, write_report
from tests.conftest import make_image_folder

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's servers, which this offline machine refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def render_in_chromium(report: Path, screenshot: Path) -> dict:
    """Open ``report`` in headless Chromium; return each section's size and picture, and each
    image's decoded size. Writes a full-page screenshot to ``screenshot``."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            sections = {}
            for key in SECTIONS:
                element = page.locator(f"section#{key}")
                box = element.bounding_box()
                picture = Image.open(io.BytesIO(element.screenshot())).convert("L")
                sections[key] = {"box": box, "picture": picture,
                                 "title": element.locator("h2").inner_text()}  # fmt: skip
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
            )
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"sections": sections, "images": images, "requests": requests}


def assert_renders(report: Path, screenshot: Path) -> None:
    """Every section is laid out with visible content, every image decodes, nothing is fetched."""
    seen = render_in_chromium(report, screenshot)
    for key, title in SECTIONS.items():
        section = seen["sections"][key]
        assert section["title"] == title
        assert section["box"] is not None and section["box"]["height"] > 60 and section["box"]["width"] > 600
        pixels = np.asarray(section["picture"], dtype=float)
        assert pixels.std() > 10, f"section {key} looks blank"
    assert seen["images"], "no images in the report"
    for alt, complete, width, height in seen["images"]:
        assert complete and width > 100 and height > 100, alt
    assert all(url.startswith(("file:", "data:")) for url in seen["requests"])  # self-contained
    shot = Image.open(screenshot)
    assert shot.size[0] == 1200 and shot.size[1] > 2000  # the whole page, not one screen


def test_report_renders_in_chromium(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, size=(48, 40), seed=1)
    make_image_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, size=(48, 40), seed=2)
    learn = Learner(ImageData.from_folder(root), "tf_efficientnet_lite0", input_size=32, seed=0)
    learn.fit(mode="features", epochs=3, batch_size=8, lr=0.02, augment=False, workers=0, log=lambda _: None)
    report = write_report(learn, out=tmp_path / "run")
    assert_renders(report, tmp_path / "screenshot.png")
