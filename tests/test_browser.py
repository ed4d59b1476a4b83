"""The web page in a real headless Chromium (Debian's), driven by Playwright: upload, draw, errors.

Screenshots are kept in test-artifacts/ (laptop and phone widths) to look at.
Set FMNIST_REQUIRE_BROWSER=1 (CI does) to make a missing Chromium an error instead of a skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT
from fmnist import data

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Chromium is not installed (apt-get install chromium)"
        if os.environ.get("FMNIST_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def server(trained_run: Path):
    from fmnist.bench import running_server

    with running_server(trained_run) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def test_upload_draw_and_errors_in_the_page(server: str, browser, real_data_dir: Path, tmp_path: Path) -> None:
    dataset = data.load(real_data_dir)
    image_path = tmp_path / "ankle-boot.png"
    Image.fromarray(dataset.x_test[0]).resize((140, 140)).save(image_path)  # test image 0: an ankle boot

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(server + "/")
    page.wait_for_selector("#gallery img")
    assert "Test accuracy" in page.inner_text("#card")

    # Upload a real test image: the right class, named plainly, and ten probability bars.
    page.set_input_files("#file", str(image_path))
    page.wait_for_function("document.querySelectorAll('#bars li').length === 10")
    assert "This looks like Ankle boot" in page.inner_text("#verdict")
    assert page.is_visible("#seen") and page.is_visible("#original")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-laptop.png"), full_page=True)

    # Draw a shape on the canvas and classify it.
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 40)
    page.mouse.down()
    for x, y in [(220, 40), (220, 250), (60, 250), (60, 40)]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()
    page.evaluate("document.getElementById('verdict').textContent = ''")
    page.click("#predict-drawing")
    page.wait_for_function("document.getElementById('verdict').textContent.startsWith('This looks like')")
    assert page.is_hidden("#error")

    # A gallery image: one click, one prediction.
    page.click("#gallery button >> nth=0")
    page.wait_for_function("document.getElementById('verdict').textContent.includes('T-shirt/top')")

    # An oversized file and a file that is not an image: errors in words, in the page.
    big = tmp_path / "huge.png"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    page.set_input_files("#file", str(big))
    page.wait_for_selector("#error:not([hidden])")
    assert "limit is 10 MB" in page.inner_text("#error")
    text = tmp_path / "notes.png"
    text.write_bytes(b"this is not an image")
    page.set_input_files("#file", str(text))
    page.wait_for_function("document.getElementById('error').textContent.includes('not an image')")
    assert problems == []

    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(server + "/")
    phone.wait_for_selector("#gallery img")
    phone.set_input_files("#file", str(image_path))
    phone.wait_for_function("document.querySelectorAll('#bars li').length === 10")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing wider than the screen
    phone.screenshot(path=str(ARTIFACTS / "web-phone.png"), full_page=True)

