"""The web page of graft serve in headless Chromium: pick an image, read the prediction shown (slow)."""

from pathlib import Path

import httpx
import pytest

from tests.evaluation.test_report_browser import CHROMIUM, FLAGS

pytestmark = pytest.mark.slow


def test_upload_through_the_page_shows_the_api_prediction(run, live_server):
    if not Path(CHROMIUM).is_file():
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    image = sorted((run[0] / "val" / "red").glob("*.jpg"))[0]
    expected = httpx.post(
        f"{live_server}/predict?top_k=5", files=[("file", (image.name, image.read_bytes(), "image/jpeg"))]
    ).json()["predictions"][0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(live_server + "/")
            page.set_input_files("#file", str(image))
            card = page.locator(".pred").first
            card.wait_for(timeout=30_000)
            shown_label = card.get_attribute("data-label")
            names = card.locator(".row .name").all_inner_texts()
            probs = [float(t) for t in card.locator(".row .prob").all_inner_texts()]
            thumbnail_width = page.evaluate("document.querySelector('.pred img').naturalWidth")
        finally:
            browser.close()
    assert shown_label == expected["label"]
    assert names == [t["label"] for t in expected["top"]]
    assert probs == pytest.approx([t["prob"] for t in expected["top"]], abs=1e-3)
    assert thumbnail_width > 0  # the picked image is shown beside its bars
