"""The web app in a real browser: Playwright drives Debian's Chromium (``.ci/run`` and
``make test`` install it where missing) through an upload, a refused text file and a
decompression bomb, and a scenes sample; the page shows the drawing, the JSON and the
messages, the server keeps serving, and no upload is left on the server's disk.

``VISIONLAB_APP_SCREENSHOT=PATH`` keeps the page's screenshot (the README's picture),
``VISIONLAB_APP_CHECKPOINTS=DIR`` serves those models instead of the untrained ones and
``VISIONLAB_APP_MODEL=LABEL`` picks that model for the last prediction."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the flags of a browser on a closed network: no background connections, no sandbox as root
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"
)


def _listed_files(folder: str) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if p.is_file())


def test_the_page_predicts_refuses_and_keeps_serving(
    app_models: Path, uploads: dict, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    from visionlab.app import serve

    models = Path(os.environ.get("VISIONLAB_APP_CHECKPOINTS", app_models))
    with serve([models], port=7870) as url, sync_playwright() as pw:
        temp = os.environ["GRADIO_TEMP_DIR"]
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        status, record = page.locator("#status"), page.locator("#record")
        upload = page.locator("#upload input[type=file]")

        # an image: drawn, with its JSON and the time taken
        upload.set_input_files(uploads["photo"])
        expect(status).to_contain_text("predicted in")
        expect(status).to_contain_text("photo.png")
        expect(record).to_contain_text('"photo.png"')
        drawn = page.locator("#drawing img")
        expect(drawn).to_be_visible()
        assert drawn.evaluate("img => img.naturalWidth") >= 96

        # a text file renamed .png, then a decompression bomb: a message each
        upload.set_input_files(uploads["text"])
        expect(status).to_contain_text("Refused: notes.png: not an image file")
        upload.set_input_files(uploads["bomb"])
        expect(status).to_contain_text("bomb.png: refused as a possible decompression bomb")

        # the server still serves: a scenes sample predicts, and the gallery shows both
        page.locator("#sample input").click()
        page.get_by_role("option", name="scenes val 000003.png").click()
        expect(status).to_contain_text("scenes val 000003.png")
        expect(page.locator("#gallery img")).to_have_count(2)
        chosen = os.environ.get("VISIONLAB_APP_MODEL")  # the README's picture: a real model
        if chosen:
            page.locator("#model input").click()
            page.get_by_role("option", name=chosen).click()
            expect(status).to_contain_text(f"{chosen}")
        page.screenshot(path=tmp_path / "app.png", full_page=True)
        if "VISIONLAB_APP_SCREENSHOT" in os.environ:
            shutil.copy(tmp_path / "app.png", os.environ["VISIONLAB_APP_SCREENSHOT"])
        browser.close()
        names = _listed_files(temp)
    assert not {"photo.png", "notes.png", "bomb.png"} & set(names), names
    assert (tmp_path / "app.png").stat().st_size > 10_000
