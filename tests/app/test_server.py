"""The app end to end: launched on 127.0.0.1, driven with gradio_client (slow: each module
starts a server), as a script uses its API (/segment, /pixel, /export). A real browser drives it
in test_browser.py; its handlers in-process are tested in test_handlers.py."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file  # noqa: E402

from emanet import load_trace  # noqa: E402
from emanet.app.examples import toycity_examples  # noqa: E402
from emanet.app.handlers import Explorer  # noqa: E402
from emanet.app.session import BUNDLED, DEFAULTS, MAX_SIZE, MIN_SIZE, UPLOADED  # noqa: E402
from emanet.app.ui import build_demo  # noqa: E402
from emanet.app.views import CONVERGENCE_MEASURES  # noqa: E402
from emanet.data import CLASSES, PALETTE  # noqa: E402
from emanet.models.attention import measure_attention  # noqa: E402
from emanet.viz.explorer import parts_map, pixel_responsibilities  # noqa: E402

pytestmark = [
    # Gradio's queue uses pandas options that pandas 3 deprecates: not ours to fix.
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def demo(segmenter, demo_of):
    return demo_of(segmenter)


@pytest.fixture(scope="module")
def server(demo, serve):
    return serve(demo, max_file_size="20mb")


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
    (d / "text_file.jpg").write_text("this is not an image either")
    out["text_file.jpg"] = d / "text_file.jpg"
    return out


def segment(client, path, **kw):
    return client.predict(handle_file(str(path)), api_name="/segment", **kw)


def test_api_documented_and_page_served(server, client):
    api = client.view_api(return_format="dict", print_info=False)
    endpoints = api["named_endpoints"]
    # UI-only events are not part of the API
    assert sorted(endpoints) == ["/export", "/pixel", "/segment"]
    params = endpoints["/segment"]["parameters"]
    assert [p["parameter_name"] for p in params] == [
        "image",
        "model",
        "iterations",
        "max_size",
        "opacity",
        "lambda_scale",
        "map_opacity",
    ]
    assert not params[0]["parameter_has_default"]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in params[1:]}
    assert defaults == {"model": BUNDLED, **DEFAULTS}
    assert defaults["lambda_scale"] == 1  # the default view is the model's own attention
    assert defaults["map_opacity"] == 0.7
    assert len(endpoints["/segment"]["returns"]) == 6
    params = endpoints["/pixel"]["parameters"]
    assert [p["parameter_name"] for p in params] == [
        "x",
        "y",
        "image",
        "model",
        "iterations",
        "max_size",
        "lambda_scale",
    ]
    assert [p["parameter_has_default"] for p in params[:3]] == [False, False, True]
    assert len(endpoints["/pixel"]["returns"]) == 2
    assert endpoints["/export"]["parameters"] == [] and len(endpoints["/export"]["returns"]) == 1
    with urllib.request.urlopen(server) as response:
        assert response.status == 200 and b"<html" in response.read(2000).lower()


def test_segment_returns_lossless_overlay_parts_curves_table_and_legend(client, files):
    # today's scripts keep working: the inputs before map_opacity, by position
    photo = handle_file(str(files["photo.png"]))
    outputs = client.predict(photo, BUNDLED, 4, 1024, 0.5, 1.0, api_name="/segment")
    overlay, parts, curves, table, legend, info = outputs
    with Image.open(overlay) as im:
        assert im.format == "PNG" and im.size == (160, 96)
    # the parts map of the last iteration, as the package draws it from the run's trace
    # (exported from the same client's session)
    saved = load_trace(client.predict(api_name="/export"))
    assert saved.num_iterations == 4
    with Image.open(parts) as im:
        assert im.format == "PNG" and im.size == (1024, 614)  # shown 1024 pixels wide
        expected = parts_map(saved.trace, 4, saved.image, DEFAULTS["map_opacity"], (614, 1024))
        np.testing.assert_array_equal(np.asarray(im), expected)
    assert table["headers"] == ["class", "area (%)"]
    present = [row[0] for row in table["data"]]
    assert set(present) <= set(CLASSES) and present
    assert abs(sum(row[1] for row in table["data"]) - 100.0) < 0.5
    # the legend is HTML (no file to fetch): a swatch in its Cityscapes colour and the name of
    # every class present, largest first like the table, and no other class
    assert isinstance(legend, str) and legend.lstrip().startswith("<div")
    swatches = re.findall(r"background:(#[0-9a-f]{6})[^>]*></span>([^<]+)</span>", legend)
    colours = {
        name: "#{:02x}{:02x}{:02x}".format(*c) for name, c in zip(CLASSES, PALETTE, strict=True)
    }
    assert swatches == [(colours[name], name) for name in present]
    # the convergence plot arrives as its data: (iteration, value, measure) rows, one line a
    # measure, entropy / ln K and the largest responsibility in [1/K, 1]
    assert curves["columns"] == ["iteration", "value", "measure"]
    measures = set(CONVERGENCE_MEASURES.values())
    assert sorted(row[0] for row in curves["data"]) == sorted([1, 2, 3, 4] * len(measures))
    assert {row[2] for row in curves["data"]} == measures
    shift = CONVERGENCE_MEASURES["base_shift"]
    assert all(0 <= value <= 1 + 1e-9 for _, value, measure in curves["data"] if measure != shift)
    assert all(_curve(curves, "max_responsibility", t) >= 1 / 64 - 1e-9 for t in range(1, 5))
    assert "4 EM iterations" in info
    # the summary states the measured attention of the last iteration and the lambda used
    assert f"entropy **{_curve(curves, 'entropy', 4):.3f} × ln K**" in info
    assert "λ = 50, the model's own" in info and "what-if" not in info
    # a map opacity of 1: the parts map alone
    parts = segment(client, files["photo.png"], iterations=4, map_opacity=1.0)[1]
    expected = parts_map(saved.trace, 4, saved.image, 1.0, (614, 1024))
    with Image.open(parts) as im:
        np.testing.assert_array_equal(np.asarray(im), expected)


def _curve(curves, key, iteration):
    """One value of the convergence table that /segment returned."""
    label = CONVERGENCE_MEASURES[key]
    (value,) = [v for t, v, m in curves["data"] if m == label and t == iteration]
    return value


def test_controls_are_validated(client, files):
    with pytest.raises(Exception, match="Unknown model"):
        segment(client, files["photo.png"], model="/etc/passwd")
    with pytest.raises(Exception, match="EM iterations must be in 1..10"):
        segment(client, files["photo.png"], iterations=50)
    with pytest.raises(Exception, match=r"λ multiplier must be in 0.01..100, got 0\."):
        segment(client, files["photo.png"], lambda_scale=0)
    with pytest.raises(Exception, match="λ multiplier must be a number, got None"):
        segment(client, files["photo.png"], lambda_scale=None)
    with pytest.raises(Exception, match="Upload a .pth"):
        segment(client, files["photo.png"], model=UPLOADED)
    # the overlay opacity is used: 0 gives back the image itself
    overlay = segment(client, files["photo.png"], opacity=0.0)[0]
    np.testing.assert_array_equal(
        np.asarray(Image.open(overlay)), np.asarray(Image.open(files["photo.png"]))
    )


@pytest.mark.parametrize(
    "name", ["cmyk.jpg", "grey.png", "rgba.png", "grey16.png", "anim.gif", "one.png"]
)
def test_odd_images_are_segmented(client, files, name):
    overlay = segment(client, files[name], opacity=0.0)[0]
    with Image.open(files[name]) as original, Image.open(overlay) as result:
        assert result.size == original.size
        if name == "grey16.png":  # scaled to 8 bits, not clipped to white
            assert np.asarray(result).mean() < 200


def test_huge_image_is_capped(client, files):
    overlay = segment(client, files["huge.png"], max_size=512)[0]
    assert Image.open(overlay).size == (512, 512)


def _slider(demo, elem_id):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_size_slider_and_handler_take_the_same_range(demo, client, files):
    slider = _slider(demo, "max-size")
    assert (slider.minimum, slider.maximum) == (MIN_SIZE, MAX_SIZE)
    assert slider.value == DEFAULTS["max_size"]
    # the slider's ends are accepted, and nothing beyond them
    for end in (slider.minimum, slider.maximum):
        assert segment(client, files["photo.png"], max_size=end)[0]
    for outside in (slider.minimum - 1, slider.maximum + 1):
        with pytest.raises(Exception, match="input size cap must be in"):
            segment(client, files["photo.png"], max_size=outside)


@pytest.mark.parametrize("name", ["empty.png", "truncated.png", "text.png", "text_file.jpg"])
def test_bad_files_give_clear_errors_and_server_keeps_serving(client, files, name):
    with pytest.raises(Exception, match=r"Cannot load image " + re.escape(name) + ": ") as info:
        segment(client, files[name])
    # the upload is named as the person named it, never by the server's copy
    message = str(info.value)
    assert tempfile.gettempdir() not in message and "gradio" not in message
    assert str(files[name].parent) not in message
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
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 8
    assert all(Image.open(path).size == (160, 96) for path in results)
    # still serving
    assert segment(Client(server, verbose=False), files["one.png"])[0]


def test_pixel_after_segment_reads_the_clients_own_run(server, client, files):
    segment(client, files["photo.png"], iterations=3, max_size=128)
    answered, chart = client.predict(100, 50, api_name="/pixel")
    values = np.asarray(answered["responsibilities"])
    assert answered["iterations"] == 3 and values.shape == (3, 64)
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-5)
    # (100, 50) of the 160x96 upload is pixel (80, 40) of the 128x77 image the model saw; the
    # answer names the upload's pixel at the centre of that one
    saved = load_trace(client.predict(api_name="/export"))
    assert saved.image.shape == (77, 128, 3)
    expected = pixel_responsibilities(saved.trace, 80, 40, (128, 77))
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert (answered["x"], answered["y"]) == (100, 50)
    assert answered["class"] == saved.classes[saved.labels[40, 80]]
    top = [entry["base"] for entry in answered["top_bases"]]
    assert top == np.argsort(-expected[-1], kind="stable")[:3].tolist()
    assert chart.count("data-value=") == 3 * 64


def test_pixel_without_a_run_needs_the_image_and_runs_it_once(server, client, segmenter, files):
    fresh = Client(server, verbose=False)  # a session of its own: no run yet
    with pytest.raises(Exception, match=r"Segment an image first \(or give the image to /pixel\)"):
        fresh.predict(100, 50, api_name="/pixel")
    with pytest.raises(Exception, match="Segment an image first: there is nothing to export"):
        fresh.predict(api_name="/export")
    before = segmenter.runs
    photo = handle_file(str(files["photo.png"]))
    answered = fresh.predict(100, 50, photo, max_size=128, api_name="/pixel")[0]
    assert segmenter.runs == before + 1
    # the same answer as after a /segment of the same image and controls
    segment(client, files["photo.png"], iterations=3, max_size=128)
    assert client.predict(100, 50, api_name="/pixel")[0] == answered
    # the same file again is known by its bytes: no new run; another file runs
    before = segmenter.runs
    assert fresh.predict(0, 0, photo, max_size=128, api_name="/pixel")[0]["x"] == 0
    assert segmenter.runs == before
    other = fresh.predict(0, 0, handle_file(str(files["grey.png"])), api_name="/pixel")[0]
    assert segmenter.runs == before + 1 and (other["x"], other["y"]) == (0, 0)
    with pytest.raises(Exception, match=r"y must be in 0..95, got 96"):
        fresh.predict(0, 96, api_name="/pixel")


def test_export_is_the_runs_trace_read_back_with_one_call(client, files):
    segment(client, files["photo.png"], iterations=2, lambda_scale=2)
    path = client.predict(api_name="/export")
    assert path.endswith("photo-trace.npz")
    saved = load_trace(path)
    assert saved.num_iterations == 2 and saved.model == BUNDLED
    assert saved.inverse_temperature == pytest.approx(100.0)  # 2x the model's own 50
    with np.load(path) as arrays:
        shapes = {key: arrays[key].shape for key in arrays.files}
        responsibilities = arrays["responsibilities"]
    # the model saw the 160x96 photo as 427x256: an 8x smaller feature map of C channels
    (h, w), channels = (32, 54), shapes["features"][0]
    assert shapes["responsibilities"] == (2, 64, h, w) and shapes["features"] == (channels, h, w)
    assert shapes["bases"] == (2, channels, 64) and shapes["initial_bases"] == (channels, 64)
    assert shapes["labels"] == (96, 160) and shapes["image"] == (96, 160, 3)
    np.testing.assert_allclose(responsibilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(saved.image, np.asarray(Image.open(files["photo.png"])))
    assert set(np.unique(saved.labels)) <= set(range(len(CLASSES)))
    assert saved.classes == list(CLASSES)


@pytest.fixture(scope="module")
def bundled(serve, tmp_path_factory):
    """The app on the bundled model, as `make demo` serves it: ``(client, explorer)``."""
    explorer = Explorer(preload=True, device="cpu")
    demo = build_demo(explorer=explorer, examples_dir=tmp_path_factory.mktemp("examples"))
    return Client(serve(demo), verbose=False), explorer


def test_lambda_multiplier_is_a_what_if_on_the_bundled_models_own_lambda(bundled, tmp_path):
    client, explorer = bundled
    scene = toycity_examples(tmp_path, count=1)[0][0]
    segmenter = explorer.cache.get(None)
    own = segmenter.model.em_unit.inverse_temperature
    runs = {scale: segment(client, scene, lambda_scale=scale) for scale in (0.1, 1, 4)}
    default = segment(client, scene)
    entropy = {scale: _curve(run[2], "entropy", 3) for scale, run in runs.items()}
    # 1x is the default and the model's own responsibilities, as emanet.models.attention measures
    # them
    # on the model itself (no lambda given)
    assert _curve(default[2], "entropy", 3) == entropy[1]
    reference = measure_attention(segmenter, [scene], num_iterations=3)
    assert entropy[1] == pytest.approx(reference["entropy"], rel=1e-6)
    assert f"λ = {own:g}, the model's own" in runs[1][5]
    # a bigger lambda sharpens the E-step: lower entropy; a smaller one spreads it
    assert entropy[4] < entropy[1] < entropy[0.1]
    assert f"what-if: λ = {own * 4:g} = 4× the model's own λ = {own:g}" in runs[4][5]
    assert f"entropy **{entropy[4]:.3f} × ln K**" in runs[4][5]


# "starting": Gradio's check of its own URL, the last step of launch(), held for a minute so
# that SIGTERM lands inside launch(); "serving": after launch() has handed over to its loop.
_LAUNCH = {
    "serving": "from app.__main__ import main; main()",
    "starting": "import time, gradio.networking as n; check = n.url_ok; "
    "n.url_ok = lambda url: time.sleep(60) or check(url); "
    "from app.__main__ import main; main()",
}


@pytest.mark.parametrize("when", ["starting", "serving"])
def test_the_command_stops_on_sigterm_and_removes_its_image_folder(tmp_path, free_port, when):
    # kill, docker stop and systemd send SIGTERM: the server must end as it does on Ctrl-C.
    port, log_file = free_port(), tmp_path / "log.txt"
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    command = [sys.executable, "-c", _LAUNCH[when], "--port", str(port)]
    root = Path(__file__).resolve().parents[2]
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=log)
    try:
        _wait_until_served(f"http://127.0.0.1:{port}/", process)
        if when == "serving":  # Gradio prints this after its start-up check
            _wait_until(lambda: "share=True" in log_file.read_text(), process)
        assert len(_image_folders(tmp_path)) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_file.read_text()
    finally:
        process.kill()
    assert "Traceback" not in log_file.read_text()
    assert _image_folders(tmp_path) == []


def _image_folders(folder: Path) -> list[Path]:
    """The app's temporary PNG folders (``emanet-app-examples`` is a cache meant to stay)."""
    return [p for p in folder.glob("emanet-app-*") if p.name != "emanet-app-examples"]


def _wait_until_served(url: str, process: subprocess.Popen) -> None:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    _wait_until(answers, process)


def _wait_until(condition, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, "the app exited before it served"
        assert time.monotonic() < deadline, f"the app was not ready within {timeout_s} s"
        time.sleep(0.2)
