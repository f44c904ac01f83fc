"""The app on the onnxruntime backend, as a person sees it (Debian's chromium driven by
Playwright): the bundled model exported at start into a fresh cache, an upload segmented with
the labels of the torch backend, its parts map, and one pixel's responsibilities from the
trace the exported graph returns."""

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from emanet.app.handlers import Explorer  # noqa: E402
from emanet.app.ui import build_demo  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402
from tests.browser import BROWSER_TESTS  # noqa: E402

pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"), *BROWSER_TESTS]
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def server(serve, tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("EMANET_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
    explorer = Explorer(preload=True, device="cpu", backend="onnxruntime")
    assert explorer.cache.loaded(None).backend == "onnxruntime"
    demo = build_demo(explorer=explorer, examples_dir=tmp_path_factory.mktemp("examples"))
    yield serve(demo)
    patch.undo()


@pytest.fixture(scope="module")
def scene(scene_file):
    return scene_file(11)


def shown(page, selector: str) -> np.ndarray:
    """The picture an ``<img>`` shows, fetched from the server."""
    from io import BytesIO

    response = page.request.get(page.locator(selector).get_attribute("src"))
    return np.asarray(Image.open(BytesIO(response.body())).convert("RGB"))


def test_the_explorer_runs_on_onnxruntime(browser, server, scene):
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(server)
    page.locator("#input-image input[type=file]").set_input_files(str(scene))
    page.locator("#info").get_by_text("Attention at EM iteration 3 of 3").wait_for(
        timeout=TIMEOUT_MS
    )
    page.locator("#parts img").wait_for(state="visible", timeout=TIMEOUT_MS)
    # the segmentation: the torch backend's labels, drawn the same way
    torch_run = Segmenter.from_pretrained(device="cpu")(str(scene), max_size=1024)
    overlay = shown(page, "#overlay img")
    agreement = (overlay == torch_run.overlay(0.5)).all(axis=2).mean()
    assert agreement > 0.999
    # a pixel of the parts map: its K x T chart, each row summing to 1
    page.locator("#pixel-chart").get_by_text("Click a pixel").wait_for(timeout=TIMEOUT_MS)
    parts = page.locator("#parts img")
    box = parts.bounding_box()
    parts.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.6})
    cells = page.locator("#pixel-chart td[data-value]")
    cells.first.wait_for(timeout=TIMEOUT_MS)
    values = cells.evaluate_all(
        "cells => cells.map(c => [Number(c.dataset.t), Number(c.dataset.value)])"
    )
    rows = {}
    for t, value in values:
        rows[t] = rows.get(t, 0.0) + value
    assert sorted(rows) == [1, 2, 3] and len(values) == 3 * 64
    assert all(abs(total - 1.0) < 1e-3 for total in rows.values())
    page.close()
