"""An official model chosen in the page (Debian's chromium driven by Playwright): the download's
progress is shown in the page, then the model runs on the image shown; offline, the page says
which file to fetch and where to put it.

The "official" entry here is the small toy-city preset, served by a local HTTP server that sends
its checkpoint slowly, so that the download takes seconds and the test stays small.
"""

import http.server
import os
import re
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from emanet import build_model, save_checkpoint  # noqa: E402
from emanet.app.ui import build_demo  # noqa: E402
from emanet.data import CLASSES, PALETTE  # noqa: E402
from emanet.io import hub  # noqa: E402
from emanet.models import presets  # noqa: E402
from tests.browser import BROWSER_TESTS  # noqa: E402

PRESET = "emanet_r18-d8_toycity"
ZOO_NAME = "toycity_from_the_zoo"
TIMEOUT_MS = 90_000

pytestmark = [
    # Gradio's queue uses pandas options that pandas 3 deprecates: not ours to fix.
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
    *BROWSER_TESTS,
]


class SlowFiles(http.server.SimpleHTTPRequestHandler):
    """Serves its folder 256 kB at a time, 0.15 s apart."""

    def copyfile(self, source, destination):
        while chunk := source.read(1 << 18):
            destination.write(chunk)
            time.sleep(0.15)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, free_port):
    """A zoo entry for the small preset on a slow local server, and one on a closed port."""
    folder = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    save_checkpoint(
        folder / "small.pth",
        build_model(PRESET),
        preset=PRESET,
        classes=list(CLASSES),
        palette=[tuple(c) for c in PALETTE],
    )
    handler = lambda *a, **k: SlowFiles(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {
        ZOO_NAME: f"http://127.0.0.1:{server.server_port}/small.pth",
        "emanet_offline_model": f"http://127.0.0.1:{free_port()}/emanet_offline-0123abcd.pth",
    }
    server.shutdown()


@pytest.fixture(scope="module")
def page(browser, zoo, serve, tmp_path_factory):
    patch = pytest.MonkeyPatch()
    for name, url in zoo.items():
        patch.setitem(hub.MODEL_ZOO, name, url)
    # an official name is its preset's name: the small preset under the zoo entry's name
    patch.setitem(presets.PRESETS, ZOO_NAME, presets.get_preset(PRESET))
    patch.setattr(torch.hub, "_hub_dir", str(tmp_path_factory.mktemp("hub")))
    demo = build_demo(examples_dir=tmp_path_factory.mktemp("examples"))
    url = serve(demo)
    image = tmp_path_factory.mktemp("inputs") / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 192, 3), np.uint8)).save(image)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    page.locator("#info").get_by_text("Attention at EM iteration").wait_for(timeout=TIMEOUT_MS)
    yield page
    page.close()
    patch.undo()


def choose(page, name: str) -> None:
    page.locator("#model input").click()
    # an option's text may start with a hidden check mark
    exactly = re.compile(f"(^|\\W){re.escape(name)}\\s*$")
    page.locator("[role=option]").filter(has_text=exactly).first.click()


def test_choosing_an_official_model_shows_its_download_then_its_attention(page):
    choose(page, ZOO_NAME)
    # the download's progress, in the page (Gradio's progress bar fed by torch.hub's tqdm)
    page.get_by_text("%").first.wait_for(timeout=TIMEOUT_MS)
    # then the model runs on the image shown, and the summary names it
    page.locator("#info").get_by_text(f"({ZOO_NAME})").wait_for(timeout=TIMEOUT_MS)
    assert "Attention at EM iteration" in page.locator("#info").inner_text()


def test_offline_the_page_says_which_file_to_fetch_and_where(page):
    choose(page, "emanet_offline_model")
    error = page.get_by_text("Could not download the checkpoint")
    error.first.wait_for(timeout=TIMEOUT_MS)
    text = page.locator("body").inner_text()
    assert "emanet_offline-0123abcd.pth" in text
    # where to put it: torch.hub's cache, where the app looks first
    assert f"put it in {hub._default_cache_dir()}" in text.replace("\n", " ")
