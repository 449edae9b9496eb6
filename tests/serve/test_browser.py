"""The page in a real browser: Debian's chromium, headless, driven by Playwright, against a real
`pneumoscan serve` process. Uploads a real film and checks the label, the bars and the heatmap;
screenshots land in test-output/browser/.

Needs `apt-get install chromium` (.ci/run does it) and the playwright package; skips otherwise.
"""

from __future__ import annotations

import pytest
from serve_fixtures import NORMAL_FILM, PNEUMONIA_FILM, TEST_OUTPUT

from pneumoscan.api import load_model
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.devtools.loadtest import ServerProcess
from pneumoscan.devtools.local import CHROMIUM, CHROMIUM_ARGS

SCREENSHOTS = TEST_OUTPUT / "browser"

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} not found: apt-get install -y chromium (as .ci/run does)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server():
    with ServerProcess() as process:
        yield process


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    # JavaScript errors only; the browser also logs a failed request, which one test provokes.
    page.on(
        "console",
        lambda message: (
            page.errors.append(message.text)
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    page.goto(server.url + "/")
    page.wait_for_selector("input[name=model]")
    yield page
    context.close()


def test_dropping_a_film_shows_label_bars_and_heatmap(page):
    binary = load_model("binary")
    expected = binary.predict(PNEUMONIA_FILM)
    assert NOT_DIAGNOSTIC_NOTICE in page.text_content("#notice")
    page.set_input_files("#file", str(PNEUMONIA_FILM))
    page.wait_for_selector("#figure:not([hidden])", timeout=30_000)
    assert page.text_content("#label") == expected.label
    bars = page.locator("#bars li")
    assert bars.count() == len(binary.class_names)
    names = [bars.nth(i).locator(".bar-name").text_content() for i in range(bars.count())]
    assert names == list(binary.class_names)
    values = [
        float(bars.nth(i).locator(".bar-track").get_attribute("aria-valuenow"))
        for i in range(bars.count())
    ]
    expected_values = [100 * expected.probabilities[name] for name in binary.class_names]
    assert values == pytest.approx(expected_values, abs=0.06)
    assert f"{binary.threshold:.3f}" in page.text_content("#decision")
    # The heatmap really decoded and is drawn at full opacity over the film.
    page.wait_for_function("() => document.getElementById('overlay').naturalWidth > 0")
    assert page.evaluate("document.getElementById('overlay').naturalWidth") >= 256
    assert page.evaluate("getComputedStyle(document.getElementById('overlay')).opacity") == "1"
    assert NOT_DIAGNOSTIC_NOTICE in page.text_content("#result-notice")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "page.png"), full_page=True)
    # Overlay on/off and opacity.
    page.fill("#opacity", "40")
    page.dispatch_event("#opacity", "input")
    assert page.evaluate("getComputedStyle(document.getElementById('overlay')).opacity") == "0.4"
    page.uncheck("#overlay-on")
    assert page.evaluate("getComputedStyle(document.getElementById('overlay')).opacity") == "0"
    assert not page.errors, page.errors


def test_three_class_model_by_keyboard_and_phone_layout(page):
    three_class = load_model("three-class")
    # Keyboard only: Tab reaches the model radios and the file picker.
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.name"))
    assert "model" in reached and "file" in reached
    page.focus("input[name=model][value=binary]")
    page.keyboard.press("ArrowDown")
    assert page.is_checked("input[name=model][value=three-class]")
    page.set_input_files("#file", str(NORMAL_FILM))
    page.wait_for_selector("#figure:not([hidden])", timeout=30_000)
    assert page.text_content("#label") == three_class.predict(NORMAL_FILM).label
    assert page.locator("#bars li").count() == len(three_class.class_names)
    assert "no threshold" in page.text_content("#decision")
    # A phone: nothing wider than the screen, the notice still on screen after scrolling.
    page.set_viewport_size({"width": 390, "height": 844})
    page.mouse.wheel(0, 2000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    notice_top = page.evaluate("document.getElementById('notice').getBoundingClientRect().top")
    assert notice_top == 0
    page.locator("#result-heading").scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "page-phone.png"), full_page=False)
    assert not page.errors, page.errors


def test_not_a_chest_xray_and_unreadable_file_are_explained(page, tmp_path):
    from skimage import data as samples
    from skimage.io import imsave

    photo = tmp_path / "photo.png"
    imsave(photo, samples.astronaut())
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#outcome:not([hidden])", timeout=30_000)
    assert page.text_content("#label") == "Not a chest X-ray"
    assert "no prediction" in page.text_content("#explanation")
    assert page.locator("#bars li").count() == 0
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(PNEUMONIA_FILM.read_bytes()[:3000])
    page.set_input_files("#file", str(broken))
    page.wait_for_function("() => document.getElementById('status').classList.contains('error')")
    assert "400" in page.text_content("#status")
    assert not page.errors, page.errors


def test_docs_page_renders_offline(browser, server):
    page = browser.new_page()
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert "/v1/predict" in page.text_content("body")
    assert all(url.startswith(server.url) or url.startswith("data:") for url in requested)
    page.close()
