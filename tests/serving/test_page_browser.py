"""The web page of graft serve in headless Chromium: pick an image, read the prediction shown (slow)."""

from pathlib import Path

import httpx
import pytest

from tests.workflows.test_report_browser import CHROMIUM, FLAGS

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


def test_one_bad_file_among_three_shows_its_error_beside_the_others(run, live_server, tmp_path):
    """Issue 18: one bad file hid every result, and the drop box overlapped the first result."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    good = sorted((run[0] / "val" / "red").glob("*.jpg"))[:2]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(live_server + "/")
            page.set_input_files("#file", [str(good[0]), str(bad), str(good[1])])
            page.wait_for_function("document.querySelectorAll('#results > *').length === 3", timeout=30_000)
            cards = page.locator(".pred .filename").all_inner_texts()
            errors = page.locator("#results .error").all_inner_texts()
            drop_bottom = page.evaluate("document.getElementById('drop').getBoundingClientRect().bottom")
            first_top = page.evaluate("document.querySelector('#results > *').getBoundingClientRect().top")
        finally:
            browser.close()
    assert sorted(cards) == sorted(f.name for f in good)
    assert len(errors) == 1 and errors[0].startswith("notes.jpg: ") and "not an image" in errors[0]
    assert drop_bottom <= first_top, (drop_bottom, first_top)
