"""The app's layout and event wiring (Gradio Blocks). Logic lives in :mod:`app.handlers`."""

from __future__ import annotations

import functools
import os
import tempfile
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr

from emanet.predict import Segmenter

from . import handlers as h

DESCRIPTION = """\
# EMANet — segmentation and an EM attention explorer

Drop in an image. EMANet segments it into the 19 Cityscapes classes and, inside its decode head,
explains every pixel by a few **bases** found by expectation-maximization. The explorer shows,
for every EM iteration, each base's **responsibility** for each pixel (bright = this base explains
this pixel) — how the bases settle on the parts of *your* image.
"""

#: Inputs of the ``/segment`` endpoint after the image, with their defaults.
DEFAULTS = {"iterations": 3, "max_size": 1024, "opacity": 0.5}


def build_demo(
    segmenter_factory: Callable[[str | None], Segmenter] | None = None,
    toycity_root: str | None = None,
    examples_dir: str | Path | None = None,
    preload: bool = False,
    default_model: str | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> gr.Blocks:
    """The whole app, queued (2 runs of each event at a time, 64 waiting at most).

    Args:
        segmenter_factory: ``factory(name) -> Segmenter``; ``name`` is ``None`` for the bundled
            model, a zoo name, ``default_model`` or an uploaded ``.pth`` path. Default:
            :func:`app.handlers.load_segmenter` (random weights if the bundled file is
            missing, with a notice in the page). Tests pass a random-weights model here.
        toycity_root: a synthetic toy city whose val images become examples (default: the
            ``EMANET_TOYCITY`` environment variable; none if unset).
        examples_dir: where the scikit-image example photographs are written as PNG.
        preload: load the default model now, so the first request is fast and a broken
            model fails at start rather than in a request.
        default_model: the dropdown's initial choice (a zoo name or a path; default: bundled).
        device, precision: where and in which precision the default factory runs every model
            (see :class:`emanet.predict.Segmenter`; default: CUDA if available, fp32).
    """
    options = {k: v for k, v in (("device", device), ("precision", precision)) if v is not None}
    cache = h.ModelCache(segmenter_factory or functools.partial(h.load_segmenter, **options))
    png = h.PngWriter()  # images go out as fast, lossless PNG files
    # Compresses /segment's overlay PNG while the request's thread draws the attention grid;
    # one worker per concurrent run (the queue runs two).
    render = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emanet-render")
    default_key = default_model or None
    if preload:
        cache.get(default_key)
    random_bundled = segmenter_factory is None and h.bundled_missing()
    choices = h.model_choices(default_model)
    examples = h.toycity_examples(toycity_root or os.environ.get("EMANET_TOYCITY"))
    examples_dir = Path(examples_dir or Path(tempfile.gettempdir()) / "emanet-app-examples")
    examples += h.skimage_examples(examples_dir)

    # delete_cache: Gradio keeps a copy of every output file (~0.8 MB a request); copies older
    # than an hour go, hourly, so a long-running server does not fill its disk.
    with gr.Blocks(
        title="EMANet explorer", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        gr.Markdown(DESCRIPTION)
        gr.Markdown(h.RANDOM_WEIGHTS_NOTICE, visible=random_bundled, elem_id="notice")
        # The last h.Session of this browser tab; dropped after an idle hour (API clients
        # never close their tab) so that memory stays bounded.
        state = gr.State(None, time_to_live=3600)
        uploaded_path = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                # A path, never decoded by Gradio: our loader reads every mode (Gradio's PIL
                # conversion would clip 16-bit images to white and fail vaguely on broken
                # files). The segment event also skips preprocessing, see below.
                image = gr.Image(
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard", "webcam"],
                    label="image",
                    height=300,
                    elem_id="input-image",
                )
                model = gr.Dropdown(
                    choices, value=default_model or h.BUNDLED, label="model", elem_id="model"
                )
                with gr.Accordion("use your own checkpoint", open=False):
                    uploaded = gr.File(
                        label="checkpoint (.pth: ours or mmsegmentation's, read with "
                        "weights_only; over the upload limit? start with --model PATH)",
                        file_types=[".pth"],
                        height=110,
                    )
                iterations = gr.Slider(
                    1,
                    h.MAX_ITERATIONS,
                    value=DEFAULTS["iterations"],
                    step=1,
                    label="EM iterations at test time",
                )
                max_size = gr.Slider(
                    64,
                    2048,
                    value=DEFAULTS["max_size"],
                    step=32,
                    label="input size cap (longer side, pixels)",
                )
                opacity = gr.Slider(
                    0.0, 1.0, value=DEFAULTS["opacity"], step=0.05, label="overlay opacity"
                )
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                if examples:
                    gr.Examples(
                        examples=[[path] for path, _ in examples],
                        inputs=[image],
                        example_labels=[caption for _, caption in examples],
                        label="examples (their sources are named)",
                    )
            with gr.Column(scale=2):
                info = gr.Markdown(label="summary", elem_id="info")
                overlay = gr.Image(
                    label="segmentation", format="png", interactive=False, elem_id="overlay"
                )
                legend = gr.HTML(
                    label="classes",
                    show_label=True,
                    container=True,
                    padding=True,
                    js_on_load=None,
                    elem_id="legend",
                )
                table = gr.Dataframe(
                    headers=["class", "area (%)"],
                    label="class areas",
                    interactive=False,
                    elem_id="areas",
                )
        with gr.Tab("EM attention explorer"):
            gr.Markdown(
                "Responsibility of every base at EM iteration *t* (viridis: dark 0, bright the "
                "largest responsibility at *t*), bases ordered by how much of the image they "
                "take (`#base share` on each tile). "
                "Click a tile, or set the base number, to see that base over the image at "
                "every iteration."
            )
            step = gr.Slider(
                1, h.MAX_ITERATIONS, value=DEFAULTS["iterations"], step=1, label="EM iteration t"
            )
            grid = gr.Image(
                label="responsibilities per base",
                format="png",
                interactive=False,
                elem_id="attention-grid",
            )
            base = gr.Slider(0, 63, value=0, step=1, label="base #", elem_id="base")
            base_strip = gr.Image(
                label="one base across iterations",
                format="png",
                interactive=False,
                elem_id="base-strip",
            )
            with gr.Row():
                curves = gr.LinePlot(
                    x="iteration",
                    y="value",
                    color="measure",
                    label="EM convergence: how far the bases move, how decided the pixels are",
                    x_title="EM iteration t",
                    y_title="value",
                    elem_id="convergence",
                )
                heatmap = gr.Image(
                    label="which classes each base covers (share of its responsibility)",
                    format="png",
                    interactive=False,
                    elem_id="base-class",
                )

        def segment(image, model, iterations, max_size, opacity, uploaded):
            session = h.run_model(
                cache, image, model, uploaded, iterations, max_size, allowed=choices
            )
            random_weights = random_bundled and session.model == h.BUNDLED
            # The torch work first: torch's two-thread ops stall while the worker holds a core.
            curves = h.convergence_table(session)
            # The overlay is drawn here (numpy that mostly holds the GIL) and compressed on a
            # worker (zlib holds none of it) while this thread draws the attention grid.
            # PngWriter's level 1 costs no latency over level 0 here (measured on localhost:
            # it runs while the grid is drawn) and sends 1.7-2.5x fewer bytes.
            overlay_png = render.submit(png, h.overlay(session, opacity), "overlay")
            grid_png = png(h.grid(session, session.prediction.trace.num_iterations), "attention")
            areas = session.prediction.class_areas()
            return (
                overlay_png.result(),
                grid_png,
                curves,
                h.class_table(session.prediction, areas),
                h.legend_html(session.prediction, areas),
                h.summary(session, random_weights),
                session,
            )

        def details(session):
            """After a run: fit the sliders to it and draw the slower, secondary views."""
            if session is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            steps = session.prediction.trace.num_iterations
            first = int(session.order[0])
            return (
                gr.update(maximum=steps, value=steps),
                gr.update(maximum=len(session.order) - 1, value=first),
                png(h.single_base(session, first), "base"),
                png(h.base_class_heatmap(session), "bases-classes"),
            )

        def redraw(draw, name):
            """A control's handler: redraw one view from the session (nothing before a run)."""

            def handler(session, value):
                return gr.skip() if session is None else png(draw(session, value), name)

            return handler

        def pick(session, event: gr.SelectData):
            chosen = None if session is None else h.base_at(session, *event.index[:2])
            if chosen is None:
                return gr.skip(), gr.skip()
            return gr.update(value=chosen), png(h.single_base(session, chosen), "base")

        # preprocess=False: the image arrives as Gradio's payload (its upload path, checked to
        # be in the upload folder) and our loader decodes it; every control is validated in
        # h.run_model, which also refuses model names that the dropdown does not offer.
        button.click(
            segment,
            inputs=[image, model, iterations, max_size, opacity, uploaded_path],
            outputs=[overlay, grid, curves, table, legend, info, state],
            api_name="segment",
            preprocess=False,
        ).then(
            details,
            inputs=[state],
            outputs=[step, base, base_strip, heatmap],
            api_visibility="private",
        )
        uploaded.upload(
            lambda f: (f, gr.update(value=h.UPLOADED)),
            inputs=[uploaded],
            outputs=[uploaded_path, model],
            api_visibility="private",
        )
        uploaded.clear(lambda: None, outputs=[uploaded_path], api_visibility="private")
        # .input fires on the person's moves only (not on details()' updates), and
        # always_last drops the intermediate positions of a drag: only what is shown is drawn.
        rerender = {"trigger_mode": "always_last", "api_visibility": "private"}
        step.input(redraw(h.grid, "attention"), [state, step], [grid], **rerender)
        base.input(redraw(h.single_base, "base"), [state, base], [base_strip], **rerender)
        opacity.input(redraw(h.overlay, "overlay"), [state, opacity], [overlay], **rerender)
        grid.select(pick, [state], [base, base_strip], api_visibility="private")
    demo.queue(default_concurrency_limit=2, max_size=64)
    weakref.finalize(demo, render.shutdown, wait=False)
    return demo
