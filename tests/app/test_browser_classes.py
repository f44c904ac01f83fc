"""The app shows a checkpoint's own classes (Debian's chromium driven by Playwright): a 5-class
checkpoint, made from the bundled model by keeping one classifier row per class, names its
five classes in its palette in the legend, and no Cityscapes class."""

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from emanet.data.cityscapes import CLASSES as CITYSCAPES  # noqa: E402
from emanet.io.checkpoint import BUNDLED_CHECKPOINT, read_checkpoint, save_checkpoint  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402
from tests.browser import BROWSER_TESTS  # noqa: E402

pytestmark = [
    # Gradio's queue uses pandas options that pandas 3 deprecates: not ours to fix.
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
    *BROWSER_TESTS,
]

TIMEOUT_MS = 60_000
# name -> (the Cityscapes class whose classifier row it keeps, its colour)
FIVE = {
    "ground": ("road", (200, 0, 200)),
    "house": ("building", (250, 120, 0)),
    "greenery": ("vegetation", (0, 210, 0)),
    "heaven": ("sky", (0, 160, 255)),
    "automobile": ("car", (250, 250, 0)),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    bundled = read_checkpoint(BUNDLED_CHECKPOINT)
    rows = [CITYSCAPES.index(source) for source, _ in FIVE.values()]
    state = dict(bundled.state_dict)
    for head in ("decode_head", "auxiliary_head"):
        for part in ("weight", "bias"):
            key = f"{head}.conv_seg.{part}"
            state[key] = state[key][rows].clone()
    path = tmp_path_factory.mktemp("five") / "five.pth"
    palette = [color for _, color in FIVE.values()]
    return save_checkpoint(path, state, preset=bundled.preset, classes=list(FIVE), palette=palette)


@pytest.fixture(scope="module")
def server(checkpoint, serve, demo_of):
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu")
    assert segmenter.classes == tuple(FIVE)
    return serve(demo_of(segmenter))


@pytest.fixture(scope="module")
def scene(scene_file):
    return scene_file(2024)


def test_the_legend_shows_the_checkpoints_own_classes(browser, server, scene):
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(server)
    page.locator("#input-image input[type=file]").set_input_files(str(scene))
    page.locator("#overlay img").wait_for(state="visible", timeout=TIMEOUT_MS)
    legend = page.locator("#legend .emanet-legend")
    legend.wait_for(timeout=TIMEOUT_MS)
    text = legend.inner_text()
    swatches = legend.evaluate(
        "el => [...el.querySelectorAll('span > span')].map(s => s.style.background)"
    )
    page.close()
    shown = [name for name in FIVE if name in text]
    assert len(shown) == 5, text
    assert not any(name in text.split() for name in CITYSCAPES), text
    expected = {f"rgb({r}, {g}, {b})" for _, (r, g, b) in FIVE.values()}
    assert set(swatches) == expected
