"""The app in a real browser (Debian's chromium driven by Playwright): what a person sees.

A new image is segmented as it arrives (upload or example click), exactly once, without the
Segment button; clearing it clears the views; a broken upload is named by its file name.
"""

import os
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from emanet import build_model  # noqa: E402
from emanet.app.ui import build_demo  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    # Gradio's queue uses pandas options that pandas 3 deprecates: not ours to fix.
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM and os.environ.get("CI") != "true",
        reason="Debian's chromium is not installed (apt-get install chromium)",
    ),
]

# Long enough for a run on a busy 2-core machine; a second run, if the page asked for one,
# starts within this much time after the first one's views are drawn.
TIMEOUT_MS = 60_000
SETTLE_S = 1.5


class CountingSegmenter(Segmenter):
    """A segmenter that records every image it is asked to segment."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.runs: list = []

    def __call__(self, image, *args, **kwargs):
        self.runs.append(image)
        return super().__call__(image, *args, **kwargs)


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return CountingSegmenter(build_model("emanet_r18-d8_toycity"), device="cpu")


@pytest.fixture(scope="module")
def server(segmenter, free_port, tmp_path_factory):
    demo = build_demo(
        segmenter_factory=lambda name: segmenter,
        examples_dir=tmp_path_factory.mktemp("examples"),
        preload=True,
    )
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "CI must have Debian's chromium: .ci/run installs it"
    with sync_playwright() as p:
        # Debian's browser, never a downloaded one; no network or background services.
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(server)
    page.locator("#input-image").wait_for(timeout=TIMEOUT_MS)
    yield page
    page.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)).save(folder / "photo.png")
    (folder / "text_file.jpg").write_text("this is not an image")
    return folder


def wait_for_views(page) -> None:
    """The segmentation, the attention grid, the summary and the secondary views are shown."""
    for view in ("#overlay img", "#attention-grid img", "#base-strip img", "#base-class img"):
        page.locator(view).wait_for(state="visible", timeout=TIMEOUT_MS)
    page.locator("#info").get_by_text("Attention at EM iteration").wait_for(timeout=TIMEOUT_MS)


def test_upload_shows_segmentation_attention_and_summary_without_a_click(page, segmenter, inputs):
    before = len(segmenter.runs)
    page.locator("#input-image input[type=file]").set_input_files(str(inputs / "photo.png"))
    wait_for_views(page)
    summary = page.locator("#info").inner_text()
    assert "responsibility entropy" in summary and "× ln K" in summary
    assert "λ = 50, the model's own" in summary and "96 image" in summary.replace("×", " ")
    time.sleep(SETTLE_S)
    assert len(segmenter.runs) == before + 1, "one upload, one run"
    # the button is still there, for re-runs with changed controls
    page.locator("#lambda-scale input").fill("4")
    page.get_by_role("button", name="Segment").click()
    page.locator("#info").get_by_text("what-if: λ = 200").wait_for(timeout=TIMEOUT_MS)
    assert len(segmenter.runs) == before + 2


def test_example_click_runs_once_and_clearing_the_image_clears_the_views(page, segmenter):
    before = len(segmenter.runs)
    page.get_by_text("synthetic toy city (unseen seed").first.click()
    wait_for_views(page)
    assert "512×256 image" in page.locator("#info").inner_text()
    time.sleep(SETTLE_S)
    assert len(segmenter.runs) == before + 1, "one example click, one run"
    page.locator("#input-image").get_by_role("button", name="Remove Image").click()
    page.locator("#overlay img").wait_for(state="detached", timeout=TIMEOUT_MS)
    page.locator("#base-strip img").wait_for(state="detached", timeout=TIMEOUT_MS)
    assert "Attention" not in page.locator("#info").inner_text()
    assert page.locator(".toast-body").count() == 0, "clearing the image is not an error"
    assert len(segmenter.runs) == before + 1


def test_a_broken_upload_is_named_by_its_file_name(page, inputs):
    page.locator("#input-image input[type=file]").set_input_files(str(inputs / "text_file.jpg"))
    toast = page.locator(".toast-body")
    toast.first.wait_for(timeout=TIMEOUT_MS)
    message = toast.first.inner_text()
    assert "Cannot load image text_file.jpg" in message
    assert "/tmp" not in message and "gradio" not in message.lower()
