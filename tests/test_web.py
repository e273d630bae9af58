"""The web page in real headless Chromium: upload (and drag) a cxr3 X-ray, see the bars and the Grad-CAM overlay."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
from conftest import require

from test_serve_support import cxr3_images, layouts, make_app, make_ct, png_bytes, served_run, serve_in_thread  # noqa: F401

CHROMIUM = os.environ.get("CXRDX_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    require(Path(CHROMIUM).exists(), f"{CHROMIUM} (apt-get install chromium)")
    from playwright import sync_api
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _check_result(page) -> list[float]:
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 100", timeout=30_000)
    rows = page.locator("#probabilities .prob")
    assert rows.count() == 3
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.class)")) == ["covid", "normal", "pneumonia"]
    values = [float(re.sub("%", "", v)) for v in page.locator("#probabilities .value").all_inner_texts()]
    assert abs(sum(values) - 100) < 0.5 and values == sorted(values, reverse=True)
    widths = page.locator("#probabilities .bar").evaluate_all("bs => bs.map(b => b.getBoundingClientRect().width)")
    assert widths[0] > 0 and widths == sorted(widths, reverse=True)  # bars drawn to scale
    assert page.locator("#original").evaluate("img => img.naturalWidth") > 100  # the upload shown beside the overlay
    assert page.locator("#status").inner_text() == "done"
    return values


def test_upload_and_drag_show_probabilities_and_overlay(browser, served_run, cxr3_root, tmp_path):
    app = make_app(served_run, tmp_path, runtime="onnx")
    first, second = cxr3_images(cxr3_root, 2)
    with serve_in_thread(app) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(url) or r.url.startswith("data:") or r.url.startswith("blob:")
                else outside.append(r.url))
        page.goto(url + "/")
        disclaimer = page.locator("#disclaimer")
        assert disclaimer.is_visible() and "not a diagnosis" in disclaimer.inner_text()
        page.wait_for_function("document.getElementById('model').textContent.includes('sha256:')")

        page.set_input_files("#file-input", str(first))
        _check_result(page)
        assert page.locator("#answered-by").inner_text().startswith("answered by run (chest X-ray; the only model)")
        page.screenshot(path=str(tmp_path / "cxrdx-web.png"), full_page=True)

        # drag and drop a second image onto the drop zone
        payload = base64.b64encode(second.read_bytes()).decode()
        page.evaluate(
            """([b64, name]) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], name, {type: 'image/png'}));
                document.getElementById('status').textContent = '';
                document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""",
            [payload, second.name],
        )
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=60_000)
        _check_result(page)

        # a broken file shows a readable error, not a crash
        page.set_input_files("#file-input", files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"not a png"}])
        page.wait_for_selector("#status.error", timeout=30_000)
        assert "415" in page.locator("#status").inner_text()
        page.close()
    assert not errors, errors
    assert not outside, f"the page reached outside the server: {outside}"
    assert (tmp_path / "cxrdx-web.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'cxrdx-web.png'}")


def test_page_shows_which_model_answered(browser, layouts, tmp_path):
    """Two served models (X-ray, CT): each result names the model the input guard routed it to."""
    from cxrdx.config import ServeConfig
    from cxrdx.serve.app import create_app

    from conftest import make_xray

    app = create_app(ServeConfig(model_dir=",".join(map(str, layouts["joint"])), database_url=f"sqlite:///{tmp_path / 'a.db'}"))
    with serve_in_thread(app) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('2 models')")
        assert "chest-xray" in page.locator("#model").inner_text() and "chest-ct" in page.locator("#model").inner_text()
        assert page.locator("#model-choice option").count() == 3  # automatic + the two models
        assert "chest X-ray or chest CT slice" in page.locator("#drop-what").inner_text()
        for name, data, run, shown in (("chest.png", png_bytes(make_xray(seed=1234)), "chest-xray", "chest X-ray"),
                                       ("slice.png", png_bytes(make_ct((260, 250), seed=987)), "chest-ct", "chest CT slice")):
            page.evaluate("document.getElementById('status').textContent = ''")
            page.set_input_files("#file-input", files=[{"name": name, "mimeType": "image/png", "buffer": data}])
            page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=60_000)
            answered = page.locator("#answered-by")
            assert answered.is_visible() and answered.get_attribute("data-model") == run
            assert answered.inner_text().startswith(f"answered by {run} ({shown}; the input guard read it as a {shown})")
        # naming the model in the page: a CT slice sent to the X-ray model is refused with a readable error
        page.select_option("#model-choice", "chest-xray")
        page.evaluate("document.getElementById('status').textContent = ''")
        page.set_input_files("#file-input", files=[{"name": "s.png", "mimeType": "image/png",
                                                    "buffer": png_bytes(make_ct((260, 250), seed=987))}])
        page.wait_for_selector("#status.error", timeout=60_000)
        assert "422 not_a_chest_image" in page.locator("#status").inner_text()
        page.close()
    assert not errors, errors
