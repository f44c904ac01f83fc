"""The app's handlers in-process (no server): a run and its views, the explorer's controls (the
iteration scrubber, a pixel clicked or asked for, the comparison, the export), the faults a
person meets (a bad checkpoint, too little memory) and the command line."""

import logging
import os
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from emanet import build_model, load_trace  # noqa: E402
from emanet.app import session as session_module  # noqa: E402
from emanet.app import views  # noqa: E402
from emanet.app.examples import toycity_examples  # noqa: E402
from emanet.app.handlers import Explorer, toggle_play  # noqa: E402
from emanet.app.session import BUNDLED, UPLOADED, ModelCache, run_model  # noqa: E402
from emanet.app.ui import build_demo  # noqa: E402
from emanet.io.checkpoint import CheckpointError  # noqa: E402
from emanet.models.presets import get_preset  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402
from emanet.viz import explorer as explorer_views  # noqa: E402
from emanet.viz import render  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


def payload(path: Path) -> dict:
    """What the page sends for an uploaded file (the events skip Gradio's preprocessing)."""
    return {"path": str(path), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)).save(path)
    return payload(path)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A toy-city example scene (512x256): the bundled model's kind of picture."""
    return payload(Path(toycity_examples(tmp_path_factory.mktemp("examples"), count=1)[0][0]))


@pytest.fixture(scope="module")
def explorer(segmenter):
    return Explorer(lambda name: segmenter)


@pytest.fixture(scope="module")
def run(explorer, scene):
    """One run of three EM iterations on the scene: its :class:`app.session.Session`."""
    return segment(explorer, scene, iterations=3)[-1]


def segment(explorer, image, iterations=2, opacity=0.0, map_opacity=0.7):
    return explorer.segment(image, BUNDLED, iterations, 1024, opacity, 1.0, map_opacity)


def picture(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def select(x, y, elem_id=None) -> gr.SelectData:
    """What Gradio passes when the picture ``elem_id`` is clicked at its pixel ``(x, y)``."""
    target = None if elem_id is None else SimpleNamespace(elem_id=elem_id)
    return gr.SelectData(target, {"index": [x, y], "value": None})


def is_skip(value) -> bool:
    return isinstance(value, type(gr.skip()))


def test_segment_answers_every_output_of_one_run(explorer, segmenter, photo):
    overlay, parts, curves, table, legend, info, session = segment(explorer, photo, map_opacity=0.6)
    # opacity 0: the overlay is the image itself, losslessly
    with Image.open(photo["path"]) as original:
        np.testing.assert_array_equal(picture(overlay), np.asarray(original))
    trace = session.prediction.trace
    assert trace.num_iterations == 2 and "2 EM iterations" in info
    # the parts map of the last iteration at the map opacity asked for, the image's shape
    # shown 1024 pixels wide
    shown = picture(parts)
    assert shown.shape == (614, 1024, 3) and views.display_size(session) == (614, 1024)
    np.testing.assert_array_equal(shown, views.parts(session, 2, 0.6))
    expected = explorer_views.parts_map(trace, 2, session.prediction.image, 0.6, (614, 1024))
    np.testing.assert_array_equal(shown, expected)
    # the curves are render.convergence's measures, one row per measure and iteration
    measures = render.convergence(trace)
    for key, label in views.CONVERGENCE_MEASURES.items():
        assert curves[curves.measure == label].value.tolist() == pytest.approx(measures[key])
    areas = session.prediction.class_areas()
    assert table["class"].tolist() == list(areas)
    assert legend.count("background:#") == len(areas)
    assert explorer.num_bases() == segmenter.model.em_unit.num_bases
    assert session.digest == session_module.file_digest(photo["path"])


def test_details_fit_the_run_and_a_grid_click_picks_a_base(explorer, run):
    iteration, base, grid, strip, projection, heatmap, chart = explorer.details(run, 0.7)
    assert iteration["maximum"] == iteration["value"] == 3
    assert base["maximum"] == 63 and base["value"] == int(run.order[0])
    np.testing.assert_array_equal(picture(grid), views.grid(run, 3, 0.7))
    first = int(run.order[0])
    np.testing.assert_array_equal(picture(strip), views.single_base(run, first, 0.7))
    # three panels of the image's shape (shrunk), 4 white pixels apart, over the colour bar
    panels = picture(strip)[:-24]
    height, width = panels.shape[0], (panels.shape[1] - 2 * 4) / 3
    assert width == int(width) and abs(width - 2 * height) <= 1 and width < 512
    width = int(width)
    assert (panels[:, width : width + 4] == 255).all()
    assert (panels[:, 2 * width + 4 : 2 * width + 8] == 255).all()
    assert picture(projection).ndim == picture(heatmap).ndim == 3
    assert "data-value" not in chart  # no pixel chosen yet
    # a click on a tile picks its base; a click in the white border picks none
    h, w = run.prediction.trace.responsibilities[-1].shape[-2:]
    tile_h, tile_w = render._tile_size(h, w, views.GRID_TILE)
    x, y = render._tile_corner(5, views.GRID_COLS, tile_h, tile_w)
    chosen, shown = explorer.pick_base(run, 0.7, select(x + 3, y + 3, "attention-grid"))
    assert chosen == int(run.order[5])
    np.testing.assert_array_equal(picture(shown), views.single_base(run, chosen, 0.7))
    assert all(map(is_skip, explorer.pick_base(run, 0.7, select(0, 0, "attention-grid"))))


def test_a_run_of_one_iteration_gets_sliders_gradio_accepts(explorer, photo):
    session = segment(explorer, photo, iterations=1)[-1]
    iteration, base = explorer.details(session, 0.7)[:2]
    assert iteration["value"] == 1
    # the page's sliders (iteration from 1, base from 0) take the updates
    for update, minimum in ((iteration, 1), (base, 0)):
        gr.Slider(minimum=minimum, **{k: v for k, v in update.items() if k != "__type__"})
    # any t the scrubber offers shows the one iteration there is
    for t in range(1, iteration["maximum"] + 1):
        parts = picture(explorer.redraw_iteration(session, t, 0.7)[0])
        np.testing.assert_array_equal(parts, views.parts(session, 1, 0.7))


def test_without_a_run_the_controls_draw_nothing(explorer):
    assert explorer.segment_new_image(None, BUNDLED, 3, 1024, 0.5, 1.0, 0.7) == (
        (None,) * 4 + ("", "", None)
    )
    details = explorer.details(None, 0.7)
    assert all(map(is_skip, details[:2])) and details[2:] == (None,) * 4 + ("",)
    for outputs in (
        explorer.redraw_iteration(None, 2, 0.7),
        explorer.play(None, 2, 0.7),
        explorer.redraw_maps(None, 2, 0, 0.7),
        explorer.click(None, 2, 0, 0.5, 0.7, select(3, 3, "parts")),
        explorer.mark(None, 2, 0, 0.5, 0.7),
        (explorer.redraw_base(None, 0, 0.7), explorer.redraw_overlay(None, 0.5)),
    ):
        assert all(map(is_skip, outputs))
    for action in (
        lambda: explorer.compare(None, BUNDLED, 1, 1.0, 0.7),
        lambda: explorer.export_trace(None),
        lambda: explorer.export_figures(None, 0.7),
    ):
        with pytest.raises(gr.Error, match="Segment an image first"):
            action()


def test_scrubbing_redraws_the_parts_map_of_each_iteration_once(explorer, run, monkeypatch):
    drawn = []
    real = explorer_views.parts_map
    monkeypatch.setattr(
        explorer_views, "parts_map", lambda trace, t, *a: drawn.append(t) or real(trace, t, *a)
    )
    run.parts.clear()
    maps = {}
    for t in (1, 2, 3):
        parts, grid = explorer.redraw_iteration(run, t, 0.7)
        maps[t] = picture(parts)
        np.testing.assert_array_equal(picture(grid), views.grid(run, t, 0.7))
    trace, image = run.prediction.trace, run.prediction.image
    for t, shown in maps.items():
        np.testing.assert_array_equal(shown, real(trace, t, image, 0.7, (512, 1024)))
    # the bases move: the first E-step's parts are not the last one's
    assert (maps[1] != maps[3]).any(axis=-1).mean() > 0.05
    assert drawn == [1, 2, 3]
    # scrubbing back draws nothing again: the cached map itself is shown
    cached = run.parts[(1, 0.7)]
    np.testing.assert_array_equal(picture(explorer.redraw_iteration(run, 1, 0.7)[0]), maps[1])
    assert views.parts(run, 1, 0.7) is cached and drawn == [1, 2, 3]
    # a new map opacity is a new picture; the iteration is clipped to 1..T
    assert not np.array_equal(picture(explorer.redraw_maps(run, 1, 0, 1.0)[0]), maps[1])
    np.testing.assert_array_equal(picture(explorer.redraw_iteration(run, 9, 0.7)[0]), maps[3])
    assert drawn == [1, 2, 3, 1]


def test_play_steps_through_the_iterations_and_wraps(explorer, run):
    assert [explorer.play(run, t, 0.7)[0] for t in (1, 2, 3)] == [2, 3, 1]
    t, parts, grid = explorer.play(run, 1, 0.7)
    assert t == 2
    np.testing.assert_array_equal(picture(grid), views.grid(run, 2, 0.7))
    np.testing.assert_array_equal(picture(parts), views.parts(run, 2, 0.7))
    timer, button, playing = toggle_play(False)
    assert timer.active and button["value"] == "⏸ pause" and playing
    timer, button, playing = toggle_play(True)
    assert not timer.active and button["value"] == "▶ play" and not playing


def reference_responsibilities(trace, x, y, size) -> np.ndarray:
    """``(T, K)``: every iteration's responsibilities brought to the image as the logits are
    (bilinear, corners not aligned), read at pixel ``(x, y)`` of ``size = (W, H)``."""
    return np.stack(
        [
            F.interpolate(r.double(), size=size[::-1], mode="bilinear", align_corners=False)[
                0, :, y, x
            ].numpy()
            for r in trace.responsibilities
        ]
    )


def cells(chart: str) -> np.ndarray:
    """The chart's ``(T, K)`` values, read from its cells' data attributes."""
    found = re.findall(r'data-t="(\d+)" data-base="(\d+)" data-value="([0-9.]+)"', chart)
    steps, bases = max(int(t) for t, _, _ in found), max(int(b) for _, b, _ in found) + 1
    values = np.full((steps, bases), np.nan)
    for t, base, value in found:
        values[int(t) - 1, int(base)] = float(value)
    return values


def marked_only_near(marked: np.ndarray, plain: np.ndarray, x: float, y: float) -> bool:
    """Whether ``marked`` differs from ``plain``, and only in the marker's ring at ``(x, y)``."""
    changed = np.argwhere((marked != plain).any(axis=-1))
    if not len(changed):
        return False
    return np.hypot(changed[:, 1] - x, changed[:, 0] - y).max() <= 10


def test_a_click_on_the_parts_map_is_scaled_to_the_image(explorer, photo, monkeypatch):
    # a parts map shown at half the image's size (80x48 for the 160x96 photo)
    monkeypatch.setattr(views, "DISPLAY_MAX_SIDE", 80)
    session = segment(explorer, photo, iterations=3)[-1]
    plain_overlay, plain_parts = views.overlay(session, 0.5), views.parts(session, 3, 0.7)
    plain_grid = views.grid(session, 3, 0.7)
    assert plain_parts.shape == (48, 80, 3)
    x, y, answered, chart, overlay, parts, grid, strip = explorer.click(
        session, 3, 0, 0.5, 0.7, select(40, 24, "parts")
    )
    assert session.pixel == (80, 48) and (x, y) == (80, 48)
    expected = reference_responsibilities(session.prediction.trace, 80, 48, (160, 96))
    np.testing.assert_allclose(answered["responsibilities"], expected, atol=2e-6)
    np.testing.assert_allclose(np.sum(answered["responsibilities"], axis=1), 1.0, atol=1e-5)
    assert answered["iterations"] == 3 and len(answered["responsibilities"][0]) == 64
    assert answered["class"] == session.prediction.classes[session.prediction.labels[48, 80]]
    top = [entry["base"] for entry in answered["top_bases"]]
    assert top == list(np.argsort(-expected[-1], kind="stable")[:3])
    # the chart holds the same numbers: a row per iteration, a column per base
    np.testing.assert_allclose(cells(chart), expected, atol=2e-6)
    # every view marks the pixel, and changes nowhere else
    assert marked_only_near(picture(overlay), plain_overlay, 80.5, 48.5)
    assert marked_only_near(picture(parts), plain_parts, 40.25, 24.25)
    # the grid frames the pixel's top bases and marks it
    np.testing.assert_array_equal(picture(grid), views.grid(session, 3, 0.7))
    assert not np.array_equal(picture(grid), plain_grid)
    np.testing.assert_array_equal(picture(strip), views.single_base(session, 0, 0.7))
    # a click on the segmentation (shown at the image's size) is not scaled
    assert explorer.click(session, 3, 0, 0.5, 0.7, select(40, 24, "overlay"))[:2] == (40, 24)
    assert explorer.click(session, 3, 0, 0.5, 0.7, select(500, -3))[:2] == (159, 0)


def test_pixel_reads_the_last_run_or_runs_the_image_given(explorer, segmenter, photo, tmp_path):
    with pytest.raises(gr.Error, match=r"Segment an image first \(or give the image to /pixel\)"):
        explorer.pixel(10, 20, None)
    before = segmenter.runs
    # x, y in the uploaded image's pixels: here the model ran on it shrunk to 64x38
    answered, chart, session = explorer.pixel(159, 95, None, photo, BUNDLED, 2, 64)
    assert segmenter.runs == before + 1
    assert session.prediction.image.size == (64, 38) and session.source_size == (160, 96)
    assert session.pixel == (63, 37) and (answered["x"], answered["y"]) == (158, 94)
    expected = reference_responsibilities(session.prediction.trace, 63, 37, (64, 38))
    np.testing.assert_allclose(answered["responsibilities"], expected, atol=2e-6)
    np.testing.assert_allclose(cells(chart), expected, atol=2e-6)
    # then the page marks the pixel in every view
    overlay, parts, grid, strip = explorer.mark(session, 2, 0, 0.0, 1.0)
    assert marked_only_near(picture(overlay), np.asarray(session.prediction.image), 63.5, 37.5)
    np.testing.assert_array_equal(picture(parts), views.parts(session, 2, 1.0))
    # the same file again with the same controls: the session's run is read, not run again
    again, _, same = explorer.pixel(
        0, 0, session, dict(photo, orig_name="other.png"), BUNDLED, 2, 64
    )
    assert same is session and segmenter.runs == before + 1
    assert (again["x"], again["y"]) == (1, 1) and session.pixel == (0, 0)
    # the same file with other controls is run with them
    answered, _, rerun = explorer.pixel(0, 0, session, photo, BUNDLED, 3, 64)
    assert rerun is not session and segmenter.runs == before + 2
    assert answered["iterations"] == 3 and len(answered["responsibilities"]) == 3
    before += 1
    # another file runs the model on it
    other = tmp_path / "flipped.png"
    with Image.open(photo["path"]) as image:
        image.transpose(Image.FLIP_LEFT_RIGHT).save(other)
    _, _, new = explorer.pixel(0, 0, session, payload(other), BUNDLED, 2, 64)
    assert new is not session and segmenter.runs == before + 2
    with pytest.raises(gr.Error, match=r"x must be in 0..159, got 160"):
        explorer.pixel(160, 0, session)


def test_compare_puts_two_runs_side_by_side(explorer, run):
    parts_a, parts_b, differences = explorer.compare(run, BUNDLED, 3, 1.0, 0.7)
    # B = A: the same parts map, every label the same
    np.testing.assert_array_equal(picture(parts_a), views.parts(run, 3, 0.7))
    np.testing.assert_array_equal(picture(parts_b), picture(parts_a))
    assert "label agreement **100.0 %**" in differences
    assert "entropy +0.000 × ln K" in differences and "+0 bases in use" in differences
    # B with one iteration: its own parts map, and what differs in numbers
    parts_a, parts_b, differences = explorer.compare(run, BUNDLED, 1, 2.0, 0.7)
    expected = explorer_views.parts_map(
        run.prediction.trace, 3, run.prediction.image, 0.7, views.display_size(run)
    )
    np.testing.assert_array_equal(picture(parts_a), expected)
    assert not np.array_equal(picture(parts_b), expected)
    assert f"**B** — {BUNDLED}, T = 1, λ = 100" in differences
    assert "label agreement **" in differences and " bases in use" in differences
    # B may be the uploaded checkpoint, named by its file name
    _, _, differences = explorer.compare(run, UPLOADED, 3, 1.0, 0.7, "/uploads/mine.pth")
    assert "**B** — mine.pth, T = 3" in differences
    with pytest.raises(gr.Error, match="Upload a .pth checkpoint first"):
        explorer.compare(run, UPLOADED, 3, 1.0, 0.7, None)


def test_export_trace_loads_back_with_the_runs_arrays(explorer, run):
    path = explorer.export_trace(run)
    assert path.endswith("-trace.npz")
    loaded = load_trace(path)
    trace, p = run.prediction.trace, run.prediction
    (h, w), channels = trace.responsibilities[0].shape[-2:], trace.bases[0].shape[1]
    with np.load(path) as arrays:
        shapes = {key: arrays[key].shape for key in arrays.files}
    assert shapes["responsibilities"] == (3, 64, h, w) and shapes["bases"] == (3, channels, 64)
    assert shapes["initial_bases"] == (channels, 64) and shapes["features"] == (channels, h, w)
    assert shapes["labels"] == (256, 512) and shapes["image"] == (256, 512, 3)
    assert loaded.num_iterations == 3 and loaded.model == BUNDLED
    assert loaded.inverse_temperature == pytest.approx(run.inverse_temperature)
    for saved, recorded in zip(loaded.trace.responsibilities, trace.responsibilities, strict=True):
        torch.testing.assert_close(saved, recorded.float(), rtol=0, atol=0)
    torch.testing.assert_close(loaded.trace.bases[-1], trace.bases[-1].float(), rtol=0, atol=0)
    np.testing.assert_array_equal(loaded.labels, p.labels)
    np.testing.assert_array_equal(loaded.image, np.asarray(p.image))
    assert loaded.classes == list(p.classes)


def test_export_figures_zips_every_picture_of_the_run(explorer, run):
    path = explorer.export_figures(run, 0.7)
    assert path.endswith("-figures.zip")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert {"parts-t1.png", "parts-t2.png", "parts-t3.png"} <= set(names)
        assert "parts-t4.png" not in names and "segmentation.png" in names
        for t in (1, 2, 3):
            with archive.open(f"parts-t{t}.png") as file:
                np.testing.assert_array_equal(picture(file), views.parts(run, t, 0.7))
        assert all(archive.read(name).startswith(b"\x89PNG") for name in names)
    with pytest.raises(gr.Error, match="map opacity must be in 0..1"):
        explorer.export_figures(run, 2)


def test_legend_names_are_escaped():
    class Named:
        classes = ("road", "<b>car</b>")
        palette = ((128, 64, 128), (0, 0, 142))

    legend = views.legend_html(Named, {"<b>car</b>": 0.7, "road": 0.3})
    assert "&lt;b&gt;car&lt;/b&gt;" in legend and "<b>" not in legend
    assert legend.index("#00008e") < legend.index("#804080")  # largest area first
    assert "no class" in views.legend_html(Named, {})


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                     "memory: you tried to allocate 34359738368 bytes."),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 32.00 GiB"),
    ],
)  # fmt: skip
def test_out_of_memory_is_one_line_and_the_app_keeps_serving(segmenter, photo, error, caplog):
    explorer = Explorer(lambda name: segmenter)
    real = Segmenter.__call__

    def out_of_memory(self, *args, **kwargs):
        raise error

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(Segmenter, "__call__", out_of_memory)
        with pytest.raises(gr.Error) as info:
            segment(explorer, photo)
    message = info.value.message
    assert message.startswith("Out of memory on the CPU segmenting photo.png")
    assert "input size cap at 1024 pixels: choose a smaller input size cap" in message
    assert "\n" not in message and str(Path(photo["path"]).parent) not in message
    assert Segmenter.__call__ is real
    assert segment(explorer, photo)[0]  # still serving


def test_other_model_errors_keep_their_traceback(segmenter, photo, monkeypatch):
    def bug(self, *args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Segmenter, "__call__", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        segment(Explorer(lambda name: segmenter), photo)


def test_checkpoint_errors_name_the_upload_not_the_server_path(photo):
    server_copy = "/tmp/gradio/0123abcd/my model.pth"

    def factory(name):
        raise CheckpointError(f"Checkpoint file {name!r} holds no state_dict.")

    with pytest.raises(gr.Error) as info:
        run_model(ModelCache(factory), photo, UPLOADED, server_copy, 3, 1024, [UPLOADED])
    assert "my model.pth" in info.value.message and "/tmp/gradio" not in info.value.message


def test_base_slider_spans_the_loaded_models_bases(tmp_path):
    torch.manual_seed(0)
    preset = get_preset("emanet_r18-d8_toycity").with_overrides(num_bases=16)
    segmenter = Segmenter(build_model(preset), device="cpu")
    demo = build_demo(lambda name: segmenter, examples_dir=tmp_path, preload=True)
    (base,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "base"]
    assert base.maximum == 15


def test_missing_bundled_model_falls_back_to_random_weights(monkeypatch, caplog):
    monkeypatch.setattr(session_module, "BUNDLED_CHECKPOINT", Path("/nonexistent/model.pth"))
    with caplog.at_level(logging.WARNING, logger=session_module.__name__):
        segmenter = session_module.load_segmenter(None)
    assert isinstance(segmenter, Segmenter) and "randomly initialised" in caplog.text
    assert session_module.bundled_missing()
    assert Explorer().random_bundled


def test_model_cache_loads_once_and_keeps_one_upload():
    calls = []

    def factory(name):
        calls.append(name)
        return object()

    cache = ModelCache(factory)
    assert cache.get(None) is cache.get(None) and calls == [None]
    first = cache.get("/tmp/a.pth", uploaded=True)
    cache.get("/tmp/b.pth", uploaded=True)
    assert cache.get("/tmp/a.pth", uploaded=True) is not first  # evicted, loaded again
    assert calls == [None, "/tmp/a.pth", "/tmp/b.pth", "/tmp/a.pth"]


def test_command_line_refuses_a_device_or_precision_it_cannot_run(monkeypatch, capsys):
    from emanet.app.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        main(["--device", "cuda"])
    assert info.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--precision", "fp64"])
    assert info.value.code == 2 and "invalid choice: 'fp64'" in capsys.readouterr().err


def test_default_factory_runs_models_in_the_precision_asked_for(monkeypatch):
    made = []
    real = session_module.load_segmenter

    def spy(name, **options):
        made.append(options)
        return real(name, **options)

    monkeypatch.setattr(session_module, "load_segmenter", spy)
    build_demo(preload=True, device="cpu", precision="bf16")
    assert made == [{"device": "cpu", "precision": "bf16"}]
