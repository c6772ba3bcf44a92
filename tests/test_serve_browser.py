"""`linedraw serve` in a real browser: headless system Chromium driven by Playwright (no browser download).

Draws on the canvas with the mouse (and a pen, through pointer events), undoes and clears with the keyboard,
uploads and pastes sketches, and checks that a photo named like an HTML tag shows as text and never runs, and
that an oversized upload shows the server's message. Skips when Playwright or a Chromium binary is missing
(Debian: `apt-get install chromium`; LINEDRAW_CHROMIUM names another binary).
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.test_serve import XSS_NAME, indexes, running_server, sketch_png  # noqa: F401  (indexes is a fixture)
from tests.test_retrieval_cli import data  # noqa: F401  (a fixture)
from tests.test_study_browser import chromium_path

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

from linedraw.serve.app import create_app  # noqa: E402
from linedraw.serve.search import SketchSearch  # noqa: E402

MAX_UPLOAD = 300_000
SETTLED = "document.getElementById('results').dataset.settled === '1'"
SNAPSHOT = ("[...document.querySelectorAll('#results .hit')]"
            ".map(li => li.dataset.id + ':' + li.querySelector('.score').textContent).join(',')")


@pytest.fixture(scope="module")
def server_url(indexes):  # noqa: F811
    search = SketchSearch([indexes[0], indexes[1]], "cpu", max_upload_bytes=MAX_UPLOAD, max_pixels=550 * 550,
                          default_k=20)
    try:
        with running_server(create_app(search)) as url:
            yield url
    finally:
        search.close()


@pytest.fixture()
def page(server_url):
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        # bypass_csp: Playwright's polling needs eval, and the escaping must hold without the CSP's help
        page = browser.new_page(viewport={"width": 1200, "height": 900}, bypass_csp=True)
        page.errors, page.dialogs = [], []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(server_url + "/")
        page.wait_for_selector("body[data-ready='1']")
        yield page
        browser.close()


def stroke(page, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through `points`, given as fractions of the canvas."""
    box = page.locator("#canvas").bounding_box()
    at = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def circle(cx: float, cy: float, r: float, n: int = 16) -> list[tuple[float, float]]:
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.linspace(0, 2 * np.pi, n + 1)]


def results_after(page, before: str) -> str:
    """Wait until no search is waiting or running and the results grid differs from `before`; return it."""
    try:
        page.wait_for_function(f"(() => {{ const now = {SNAPSHOT}; return {SETTLED} && now !== {json.dumps(before)}; }})()",
                               timeout=30_000)
    except sync_api.TimeoutError:
        pytest.fail(f"results did not change; status {page.text_content('#status')!r}, "
                    f"error {page.text_content('#error')!r}, page errors {page.errors}")
    return page.evaluate(SNAPSHOT)


def settled(page) -> str:
    """The results grid once no search is waiting or running."""
    page.wait_for_function(SETTLED, timeout=30_000)
    return page.evaluate(SNAPSHOT)


def test_drawing_searches_and_the_results_follow_the_strokes(page):
    assert "Draw a sketch" in page.text_content("#status")
    stroke(page, circle(0.5, 0.5, 0.3))
    first = results_after(page, "")
    assert "sketch" in page.text_content("#status")
    stroke(page, [(0.1, 0.1), (0.9, 0.9)])
    stroke(page, [(0.9, 0.1), (0.1, 0.9)])
    second = results_after(page, first)

    # Ctrl+Z removes the last stroke; the canvas then differs from both earlier states
    page.keyboard.press("Control+z")
    third = results_after(page, second)
    assert third != first
    page.keyboard.press("Control+z")  # back to the circle alone: the very same query as the first
    assert results_after(page, third) == first

    # a pen stroke (pointer events, as a tablet sends them) draws and searches too
    box = page.locator("#canvas").bounding_box()
    page.evaluate("""([x, y, w, h]) => {
        const canvas = document.getElementById('canvas');
        const at = (type, fx, fy, buttons) => canvas.dispatchEvent(new PointerEvent(type, {pointerId: 7,
            pointerType: 'pen', isPrimary: true, bubbles: true, button: 0, buttons, pressure: 0.5,
            clientX: x + fx * w, clientY: y + fy * h}));
        at('pointerdown', 0.2, 0.8, 1);
        for (let i = 1; i <= 10; i++) at('pointermove', 0.2 + 0.06 * i, 0.8 - 0.05 * i, 1);
        at('pointerup', 0.8, 0.3, 0);
    }""", [box["x"], box["y"], box["width"], box["height"]])
    results_after(page, first)

    # Escape clears the canvas and the results
    page.keyboard.press("Escape")
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 0")
    assert "Draw a sketch" in page.text_content("#status")
    assert page.errors == [] and page.dialogs == []


def test_upload_shows_hostile_names_as_text_and_clicks_through(page, tmp_path):
    upload = tmp_path / f"{XSS_NAME}.png"
    upload.write_bytes(sketch_png("cat"))
    page.set_input_files("#file", str(upload))
    results_after(page, "")
    assert page.is_visible("#upload-preview") and page.text_content("#upload-name") == upload.name

    names = page.eval_on_selector_all("#results .hit .name", "nodes => nodes.map(n => n.textContent)")
    assert len(names) == 7 and any(name.endswith(f"{XSS_NAME}.png") for name in names)
    page.wait_for_function("[...document.images].every(img => img.complete)")
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert page.evaluate("[...document.querySelectorAll('#results img')].every(img => img.naturalWidth > 0)")

    # a result's link opens the full photo, served by index number and id
    href = page.get_attribute("#results .hit a", "href")
    assert href.startswith("/photo/0/")
    assert page.evaluate("href => fetch(href).then(r => r.headers.get('content-type'))", href).startswith("image/")

    # the other index, from the selector
    page.select_option("#index", "1")
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 3")
    assert all("/dog/" in p for p in page.eval_on_selector_all("#results .hit .path", "n => n.map(x => x.textContent)"))
    assert page.errors == [] and page.dialogs == []


def test_pasted_image_is_searched(page):
    page.evaluate("""async () => {
        const canvas = document.createElement('canvas');
        canvas.width = canvas.height = 96;
        const ctx = canvas.getContext('2d');
        ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, 96, 96);
        ctx.strokeRect(20, 20, 50, 50);
        const blob = await new Promise(resolve => canvas.toBlob(resolve, 'image/png'));
        const data = new DataTransfer();
        data.items.add(new File([blob], 'clip.png', {type: 'image/png'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true}));
    }""")
    results_after(page, "")
    assert page.text_content("#upload-name") == "pasted image"


@pytest.mark.parametrize("kind, words", [("bytes", "too large"), ("pixels", "pixels")])
def test_oversized_upload_shows_the_servers_message(page, tmp_path, kind, words):
    path = tmp_path / "big.png"
    if kind == "bytes":  # noise does not compress: well over the byte limit
        noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        assert path.stat().st_size > MAX_UPLOAD
    else:  # few bytes, too many pixels
        buffer = io.BytesIO()
        Image.new("L", (600, 600), 255).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
    stroke(page, circle(0.5, 0.5, 0.3))
    results_after(page, "")
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#error:not([hidden])")
    assert words in page.text_content("#error")
    assert page.evaluate("document.querySelectorAll('#results .hit').length") == 0  # the sketch's are gone
