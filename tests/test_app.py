"""The app end to end: launched on 127.0.0.1, driven with gradio_client (and a real browser)."""

import os
import shutil
import socket
import threading
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file  # noqa: E402

from app.ui import build_demo  # noqa: E402
from emanet import build_model  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    segmenter = Segmenter(build_model("emanet_r18-d8_toycity"), device="cpu")
    demo = build_demo(
        segmenter_factory=lambda name: segmenter,
        examples_dir=tmp_path_factory.mktemp("examples"),
        preload=True,
    )
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        max_file_size="20mb",
    )
    url = f"http://127.0.0.1:{port}/"
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8))
    out = {}

    def save(name, image, **kw):
        path = d / name
        image.save(path, **kw)
        out[name] = path

    save("photo.png", rgb)
    save("cmyk.jpg", rgb.convert("CMYK"))
    save("grey.png", rgb.convert("L"))
    save("rgba.png", rgb.convert("RGBA"))
    save("grey16.png", Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257))
    save("anim.gif", rgb, save_all=True, append_images=[rgb.rotate(90)])
    save("one.png", Image.new("RGB", (1, 1), (10, 200, 30)))
    save("huge.png", Image.new("RGB", (10000, 10000), (90, 90, 90)))
    (d / "empty.png").write_bytes(b"")
    out["empty.png"] = d / "empty.png"
    raw = (d / "photo.png").read_bytes()
    (d / "truncated.png").write_bytes(raw[: len(raw) // 3])
    out["truncated.png"] = d / "truncated.png"
    (d / "text.png").write_text("this is not an image")
    out["text.png"] = d / "text.png"
    return out


def segment(client, path, **kw):
    return client.predict(handle_file(str(path)), api_name="/segment", **kw)


def test_api_documented_and_page_served(server, client):
    api = client.view_api(return_format="dict")
    params = [p["parameter_name"] for p in api["named_endpoints"]["/segment"]["parameters"]]
    assert params[0] == "image" and {"iterations", "max_size", "opacity", "model"} <= set(params)
    with urllib.request.urlopen(server) as response:
        assert response.status == 200 and b"<html" in response.read(2000).lower()


def test_segment_returns_lossless_overlay_table_and_grid(client, files):
    overlay, legend, table, grid, curves, info = segment(client, files["photo.png"], iterations=4)
    with Image.open(overlay) as im:
        assert im.format == "PNG" and im.size == (160, 96)
    with Image.open(grid) as im:
        assert im.format == "PNG"
    assert Image.open(legend).format == "PNG"
    assert table["headers"] == ["class", "area (%)"]
    assert abs(sum(row[1] for row in table["data"]) - 100.0) < 0.5
    assert "4 EM iterations" in info


@pytest.mark.parametrize(
    "name", ["cmyk.jpg", "grey.png", "rgba.png", "grey16.png", "anim.gif", "one.png"]
)
def test_odd_images_are_segmented(client, files, name):
    overlay = segment(client, files[name])[0]
    size = Image.open(files[name]).size
    assert Image.open(overlay).size == size


def test_huge_image_is_capped(client, files):
    overlay = segment(client, files["huge.png"], max_size=512)[0]
    assert max(Image.open(overlay).size) == 512


@pytest.mark.parametrize("name", ["empty.png", "truncated.png", "text.png"])
def test_bad_files_give_clear_errors_and_server_keeps_serving(client, files, name):
    with pytest.raises(Exception, match=name.replace(".", r"\.")):
        segment(client, files[name])
    assert segment(client, files["one.png"])[0]


def test_eight_concurrent_clients_all_answered(server, files):
    results, errors = [], []

    def work():
        try:
            c = Client(server, verbose=False)
            results.append(segment(c, files["photo.png"], iterations=2)[0])
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors and len(results) == 8


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    not _chromium() and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed (apt-get install chromium)",
)
def test_browser_upload_shows_segmentation_and_attention_grid(server, files, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    assert executable, "CI must have Debian's chromium: .ci/run installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(str(files["photo.png"]))
        page.get_by_role("button", name="Segment").click()
        overlay = page.locator("#overlay img")
        overlay.wait_for(state="visible", timeout=60_000)
        grid = page.locator("#attention-grid img")
        grid.wait_for(state="visible", timeout=60_000)
        assert overlay.is_visible() and grid.is_visible()
        shot = os.environ.get("EMANET_SCREENSHOT") or str(tmp_path / "app.png")
        page.screenshot(path=shot, full_page=True)
        browser.close()
    assert Image.open(shot).size[0] >= 1000
