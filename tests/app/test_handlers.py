"""The app's handlers in-process (no server): a run, the follow-up views, the faults a person
meets (a bad checkpoint, too little memory) and the command line."""

import logging
import os
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from emanet import build_model  # noqa: E402
from emanet.app import session as session_module  # noqa: E402
from emanet.app import views  # noqa: E402
from emanet.app.handlers import Explorer  # noqa: E402
from emanet.app.session import BUNDLED, UPLOADED, ModelCache, run_model  # noqa: E402
from emanet.app.ui import build_demo  # noqa: E402
from emanet.io.checkpoint import CheckpointError  # noqa: E402
from emanet.models.presets import get_preset  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402
from emanet.viz import render  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return Segmenter(build_model("emanet_r18-d8_toycity"), device="cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)).save(path)
    return {"path": str(path), "orig_name": "photo.png", "meta": {"_type": "gradio.FileData"}}


def segment(explorer, image, iterations=2, opacity=0.0):
    return explorer.segment(image, BUNDLED, iterations, 1024, opacity, 1.0, None)


def test_segment_answers_every_output_of_one_run(segmenter, photo):
    explorer = Explorer(lambda name: segmenter)
    overlay, grid, curves, table, legend, info, session = segment(explorer, photo)
    # opacity 0: the overlay is the image itself, losslessly
    with Image.open(overlay) as shown, Image.open(photo["path"]) as original:
        np.testing.assert_array_equal(np.asarray(shown), np.asarray(original))
    trace = session.prediction.trace
    assert trace.num_iterations == 2 and "2 EM iterations" in info
    with Image.open(grid) as shown:
        np.testing.assert_array_equal(np.asarray(shown), views.grid(session, 2))
    # the curves are render.convergence's measures, one row per measure and iteration
    measures = render.convergence(trace)
    for key, label in views.CONVERGENCE_MEASURES.items():
        assert curves[curves.measure == label].value.tolist() == pytest.approx(measures[key])
    areas = session.prediction.class_areas()
    assert table["class"].tolist() == list(areas)
    assert legend.count("background:#") == len(areas)
    assert explorer.num_bases() == segmenter.model.em_unit.num_bases


def click(x, y) -> gr.SelectData:
    """What Gradio passes when the attention grid is clicked at pixel ``(x, y)``."""
    return gr.SelectData(None, {"index": [x, y], "value": None})


def test_follow_up_views_fit_the_run_and_need_one(segmenter, photo):
    explorer = Explorer(lambda name: segmenter)
    session = segment(explorer, photo, iterations=3)[-1]
    iteration, base, strip, heatmap = explorer.details(session)
    assert iteration["maximum"] == iteration["value"] == 3
    assert base["value"] == int(session.order[0])
    with Image.open(strip) as shown:
        assert shown.width == 3 * 160 + 2 * 4  # three panels of the image, 4 pixels apart
    assert Image.open(heatmap).format == "PNG"
    # a click on a tile picks its base; a click in the white border picks none
    h, w = session.prediction.trace.responsibilities[-1].shape[-2:]
    tile_h, tile_w = render._tile_size(h, w, views.GRID_TILE)
    x, y = render._tile_corner(5, views.GRID_COLS, tile_h, tile_w)
    chosen, _ = explorer.pick(session, click(x + 3, y + 3))
    assert chosen["value"] == int(session.order[5])
    assert all(isinstance(out, type(gr.skip())) for out in explorer.pick(session, click(0, 0)))
    # before any run (or after a clear) the sliders draw nothing and a cleared image clears
    assert isinstance(explorer.redraw_grid(None, 2), type(gr.skip()))
    assert explorer.details(None)[2:] == (None, None)
    assert explorer.segment_new_image(None, BUNDLED, 3, 1024, 0.5, 1.0, None)[0] is None


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
