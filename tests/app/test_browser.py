"""The app in a real browser (Debian's chromium driven by Playwright): what a person sees.

A new image is segmented as it arrives (upload or example click), exactly once, without the
Segment button, and its parts map is shown; the iteration scrubber shows the parts map of
every iteration and the play button steps through them; a pixel clicked on the parts map or
the segmentation (or typed in) shows its responsibilities (a K x T chart, read from its cells'
data) and is marked; a run of one iteration resets the explorer; the compare
tab states what differs; the export downloads a trace that loads back; clearing the image
clears the views; a broken upload is named by its file name.

One server and one page serve the module (each start costs seconds on a loaded machine): the
tests run on the photo the ``explored`` fixture uploads, and those that change the image come
last.
"""

import io
import os
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from emanet import load_trace  # noqa: E402
from emanet.app.session import DEFAULTS  # noqa: E402
from emanet.viz.explorer import parts_map, pixel_responsibilities  # noqa: E402
from tests.browser import BROWSER_TESTS  # noqa: E402

pytestmark = [
    # Gradio's queue uses pandas options that pandas 3 deprecates: not ours to fix.
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
    *BROWSER_TESTS,
]

# Long enough for a run on a busy 2-core machine; a second run, if the page asked for one,
# starts within this much time after the first one's views are drawn.
TIMEOUT_MS = 60_000
SETTLE_S = 1.5
STEPS, BASES = DEFAULTS["iterations"], 64  # the runs' T and the r18 model's K
SIZE = (160, 96)  # (W, H) of the photo
SHOWN = (614, 1024)  # (H, W) of its parts map: 1024 pixels on the longer side


@pytest.fixture(scope="module")
def server(segmenter, serve, demo_of):
    return serve(demo_of(segmenter))


@pytest.fixture(scope="module")
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1300}, accept_downloads=True)
    page.goto(server)
    page.locator("#input-image").wait_for(timeout=TIMEOUT_MS)
    yield page
    page.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-inputs")
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    Image.fromarray(photo).save(folder / "photo.png")
    (folder / "text_file.jpg").write_text("this is not an image")
    return folder


@pytest.fixture(scope="module")
def explored(page, segmenter, inputs):
    """The photo uploaded (the page runs it by itself): ``(page, runs)``, ``runs`` the number
    of runs that the upload asked for."""
    before = segmenter.runs
    page.locator("#input-image input[type=file]").set_input_files(str(inputs / "photo.png"))
    wait_for_views(page)
    time.sleep(SETTLE_S)
    return page, segmenter.runs - before


@pytest.fixture(scope="module")
def reference(segmenter, inputs):
    """The photo's trace as the app's run records it (same model, image and controls)."""
    picture = Image.open(inputs / "photo.png").convert("RGB")
    prediction = segmenter(picture, trace=True, num_iterations=STEPS, max_size=1024)
    return prediction.trace, picture


def wait_for_views(page) -> None:
    """The segmentation, the parts map and the summary are shown, and the other views drawn
    (on a new page: they also put the pixel chart's invitation)."""
    for view in ("#overlay img", "#parts img"):
        page.locator(view).wait_for(state="visible", timeout=TIMEOUT_MS)
    page.locator("#info").get_by_text("Attention at EM iteration").wait_for(timeout=TIMEOUT_MS)
    page.locator("#pixel-chart .emanet-pixel").wait_for(timeout=TIMEOUT_MS)


def shown(page, selector: str) -> tuple[str, np.ndarray]:
    """``(src, pixels)`` of the picture ``selector`` shows, fetched as the browser does."""
    src = page.locator(selector).get_attribute("src")
    with urllib.request.urlopen(src) as response:
        return src, np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def new_picture(page, selector: str, old_src: str) -> tuple[str, np.ndarray]:
    """The picture ``selector`` shows once its ``src`` is no longer ``old_src``."""
    page.wait_for_function(
        "([s, old]) => { const e = document.querySelector(s); return e && e.src !== old; }",
        arg=[selector, old_src],
        timeout=TIMEOUT_MS,
    )
    return shown(page, selector)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_upload_shows_the_parts_map_and_summary_without_a_click(explored, reference):
    page, runs = explored
    assert runs == 1, "one upload, one run"
    summary = page.locator("#info").inner_text()
    assert "responsibility entropy" in summary and "× ln K" in summary
    assert "λ = 50, the model's own" in summary and "96 image" in summary.replace("×", " ")
    # the parts map of the last iteration over the photo
    _, parts = shown(page, "#parts img")
    trace, picture = reference
    expected = parts_map(trace, STEPS, picture, DEFAULTS["map_opacity"], SHOWN)
    assert parts.shape == expected.shape
    assert (parts != expected).any(axis=-1).mean() < 1e-3


def test_the_scrubber_shows_the_parts_map_of_every_iteration(explored, reference):
    page, _ = explored
    trace, picture = reference
    slider = page.locator("#iteration input[type=range]")
    src, _ = shown(page, "#parts img")
    maps = {}
    slider.focus()
    page.keyboard.press("Home")  # t = 1, then one step right at a time
    for t in range(1, STEPS + 1):
        if t > 1:
            page.keyboard.press("ArrowRight")
        src, maps[t] = new_picture(page, "#parts img", src)
        assert slider.input_value() == str(t)
        expected = parts_map(trace, t, picture, DEFAULTS["map_opacity"], SHOWN)
        assert (maps[t] != expected).any(axis=-1).mean() < 1e-3, f"t = {t}"
    # the bases move: every iteration has its own parts map
    assert all(
        (maps[a] != maps[b]).any(axis=-1).mean() > 0.05
        for a in maps
        for b in maps
        if a < b
    )  # fmt: skip


def chosen_pixel(page) -> tuple[int, int]:
    """The chosen pixel (in the uploaded image's pixels), as the page states it."""
    return tuple(int(page.locator(f"#pixel-{axis} input").input_value()) for axis in "xy")


def chart_values(page) -> np.ndarray:
    """The pixel chart's ``(T, K)`` values, read from its cells' data attributes."""
    found = page.locator("#pixel-chart td[data-value]").evaluate_all(
        "cells => cells.map(c => [+c.dataset.t, +c.dataset.base, +c.dataset.value])"
    )
    values = np.full((STEPS, BASES), np.nan)
    for t, base, value in found:
        values[int(t) - 1, int(base)] = value
    assert len(found) == STEPS * BASES and not np.isnan(values).any()
    return values


def marked_near(marked: np.ndarray, plain: np.ndarray, x: float, y: float) -> bool:
    """Whether ``marked`` differs from ``plain``, and only around ``(x, y)`` (the marker)."""
    changed = np.argwhere((marked != plain).any(axis=-1))
    return len(changed) > 0 and np.hypot(changed[:, 1] - x, changed[:, 0] - y).max() <= 11


def test_a_clicked_pixel_shows_its_responsibilities_and_is_marked(explored, reference):
    page, _ = explored
    open_tab(page, "Parts map")
    overlay_src, overlay = shown(page, "#overlay img")
    parts_src, parts = shown(page, "#parts img")
    box = page.locator("#parts img").bounding_box()
    page.locator("#parts img").click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.6})
    page.locator("#pixel-chart td[data-value]").first.wait_for(timeout=TIMEOUT_MS)
    # the parts map's pixels are the image's, scaled
    x, y = chosen_pixel(page)
    assert abs(x - 0.3 * SIZE[0]) <= 1 and abs(y - 0.6 * SIZE[1]) <= 1
    # the K x T chart's data: a row per iteration, each summing to 1, the pixel's numbers
    values = chart_values(page)
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-3)
    trace, _ = reference
    np.testing.assert_allclose(values, pixel_responsibilities(trace, x, y, SIZE), atol=1e-4)
    # the pixel is marked on the segmentation and on the parts map, and nowhere else
    _, marked = new_picture(page, "#overlay img", overlay_src)
    assert marked_near(marked, overlay, x + 0.5, y + 0.5)
    _, marked = new_picture(page, "#parts img", parts_src)
    scale = SHOWN[1] / SIZE[0]
    assert marked_near(marked, parts, (x + 0.5) * scale, (y + 0.5) * scale)
    # a click on the segmentation chooses its pixel (shown at the image's size)
    box = page.locator("#overlay img").bounding_box()
    page.locator("#overlay img").click(
        position={"x": box["width"] * 0.75, "y": box["height"] * 0.2}
    )
    page.wait_for_function(
        "x => document.querySelector('#pixel-x input').value !== x", arg=str(x), timeout=TIMEOUT_MS
    )
    x, y = chosen_pixel(page)
    assert abs(x - 0.75 * SIZE[0]) <= 1 and abs(y - 0.2 * SIZE[1]) <= 1
    page.wait_for_function(
        "t => document.querySelector('#pixel-chart').innerText.includes(t)",
        arg=f"pixel ({x}, {y})",
        timeout=TIMEOUT_MS,
    )
    np.testing.assert_allclose(
        chart_values(page), pixel_responsibilities(trace, x, y, SIZE), atol=1e-4
    )
    # or typed in, and shown with the button
    page.locator("#pixel-x input").fill("10")
    page.locator("#pixel-y input").fill("90")
    page.locator("#show-pixel").click()
    page.locator("#pixel-chart").get_by_text("pixel (10, 90)").wait_for(timeout=TIMEOUT_MS)
    np.testing.assert_allclose(
        chart_values(page), pixel_responsibilities(trace, 10, 90, SIZE), atol=1e-4
    )


def test_compare_states_what_differs_beside_two_parts_maps(explored):
    page, _ = explored
    open_tab(page, "Compare")
    page.locator("#compare").click()
    differences = page.locator("#differences")
    differences.get_by_text("label agreement").wait_for(timeout=TIMEOUT_MS)
    text = differences.inner_text()
    # A's and B's measures, then B - A
    assert text.count("entropy") == 3 and text.count("bases in use") == 3 and "B − A" in text
    assert f"T = {STEPS}, λ = 50" in text and "T = 1, λ = 50" in text  # A, and B's defaults
    for view in ("#parts-a img", "#parts-b img"):
        page.locator(view).wait_for(state="visible", timeout=TIMEOUT_MS)
        assert shown(page, view)[1].shape == (*SHOWN, 3)


def test_export_downloads_the_trace_that_loads_back(explored, tmp_path):
    page, _ = explored
    open_tab(page, "Export")
    page.locator("#export-trace").click()
    link = page.locator("#download a").first
    link.wait_for(timeout=TIMEOUT_MS)
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        link.click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name == "photo-trace.npz"
    saved = load_trace(path)
    assert saved.num_iterations == STEPS and saved.inverse_temperature == pytest.approx(50.0)
    with np.load(path) as arrays:
        shapes = {key: arrays[key].shape for key in arrays.files}
    (h, w), channels = shapes["features"][1:], shapes["features"][0]
    assert shapes["responsibilities"] == (STEPS, BASES, h, w)
    assert shapes["bases"] == (STEPS, channels, BASES)
    assert shapes["initial_bases"] == (channels, BASES)
    assert shapes["labels"] == (SIZE[1], SIZE[0]) and shapes["image"] == (SIZE[1], SIZE[0], 3)


def test_play_steps_through_the_iterations(explored):
    page, _ = explored
    play, value = page.locator("#play"), page.locator("#iteration input[type=number]")
    start = value.input_value()
    play.click()
    page.locator("#play", has_text="pause").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(
        "old => document.querySelector('#iteration input[type=number]').value !== old",
        arg=start,
        timeout=10_000,
    )
    play.click()
    page.locator("#play", has_text="play").wait_for(timeout=TIMEOUT_MS)


def test_the_segment_button_runs_again_with_the_changed_controls(explored, segmenter):
    page, _ = explored
    open_tab(page, "Parts map")
    before = segmenter.runs
    page.locator("#lambda-scale input").fill("4")
    iterations = page.get_by_label("number input for EM iterations at test time")
    iterations.fill("1")
    iterations.press("Enter")
    page.get_by_role("button", name="Segment").click()
    page.locator("#info").get_by_text("what-if: λ = 200").wait_for(timeout=TIMEOUT_MS)
    assert "1 EM iterations" in page.locator("#info").inner_text()
    assert segmenter.runs == before + 1
    # the explorer follows the new run: its one iteration, no pixel chosen in it yet
    page.locator("#pixel-chart td[data-value]").first.wait_for(state="detached", timeout=10_000)
    assert page.locator("#iteration input[type=number]").input_value() == "1"


def test_example_click_runs_once_and_clearing_the_image_clears_the_views(page, segmenter):
    open_tab(page, "Parts map")
    before = segmenter.runs
    page.get_by_text("synthetic toy city (unseen seed").first.click()
    page.locator("#info").get_by_text("512×256 image").wait_for(timeout=TIMEOUT_MS)
    wait_for_views(page)
    time.sleep(SETTLE_S)
    assert segmenter.runs == before + 1, "one example click, one run"
    page.locator("#input-image").get_by_role("button", name="Remove Image").click()
    page.locator("#overlay img").wait_for(state="detached", timeout=TIMEOUT_MS)
    page.locator("#parts img").wait_for(state="detached", timeout=TIMEOUT_MS)
    assert "Attention" not in page.locator("#info").inner_text()
    assert page.locator(".toast-body").count() == 0, "clearing the image is not an error"
    assert segmenter.runs == before + 1


def test_a_broken_upload_is_named_by_its_file_name(page, inputs):
    page.locator("#input-image input[type=file]").set_input_files(str(inputs / "text_file.jpg"))
    toast = page.locator(".toast-body")
    toast.first.wait_for(timeout=TIMEOUT_MS)
    message = toast.first.inner_text()
    assert "Cannot load image text_file.jpg" in message
    assert "/tmp" not in message and "gradio" not in message.lower()
