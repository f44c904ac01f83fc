"""The app's layout and event wiring (Gradio Blocks). Logic lives in :mod:`app.handlers`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from emanet.predict import Segmenter

from . import handlers as h
from .examples import example_images

DESCRIPTION = """\
# EMANet — segmentation and an EM attention explorer

Drop in an image or pick an example: it is segmented at once. EMANet segments it into the 19
Cityscapes classes and, inside its decode head, explains every pixel by a few **bases** found by
expectation-maximization. The explorer shows, for every EM iteration, each base's
**responsibility** for each pixel (bright = this base explains this pixel) — how the bases settle
on the parts of *your* image — and the summary says how decided they are. The bundled model
knows only a synthetic toy city (the first examples); on photographs it shows what it does.
"""


def build_demo(
    segmenter_factory: Callable[[str | None], Segmenter] | None = None,
    toycity_root: str | None = None,
    examples_dir: str | Path | None = None,
    preload: bool = False,
    default_model: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    explorer: h.Explorer | None = None,
) -> gr.Blocks:
    """The whole app, queued (2 runs of each event at a time, 64 waiting at most).

    Args:
        segmenter_factory, preload, default_model, device, precision: make the app's
            :class:`app.handlers.Explorer` (see there). Tests pass a random-weights model as
            the factory.
        toycity_root: a generated toy city whose val images become examples too (default:
            the ``EMANET_TOYCITY`` environment variable; none if unset).
        examples_dir: where the example toy-city scenes and photographs are written as PNG
            (once; later starts reuse them).
        explorer: an Explorer made already (instead of the arguments above that make one),
            e.g. one whose ``segment`` a benchmark replaced.
    """
    if explorer is None:
        explorer = h.Explorer(segmenter_factory, default_model, preload, device, precision)
    elif (segmenter_factory, default_model, device, precision) != (None,) * 4 or preload:
        raise ValueError("give either an explorer or the arguments to make one, not both")
    png = explorer.png
    examples_dir = Path(examples_dir or Path(tempfile.gettempdir()) / "emanet-app-examples")
    examples = example_images(examples_dir, toycity_root or os.environ.get("EMANET_TOYCITY"))

    # delete_cache: Gradio keeps a copy of every output file (~0.8 MB a request); copies older
    # than an hour go, hourly, so a long-running server does not fill its disk.
    with gr.Blocks(
        title="EMANet explorer", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        gr.Markdown(DESCRIPTION)
        gr.Markdown(h.RANDOM_WEIGHTS_NOTICE, visible=explorer.random_bundled, elem_id="notice")
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
                    explorer.choices,
                    value=explorer.default_model or h.BUNDLED,
                    label="model",
                    elem_id="model",
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
                    value=h.DEFAULTS["iterations"],
                    step=1,
                    label="EM iterations at test time",
                )
                max_size = gr.Slider(
                    h.MIN_SIZE,
                    h.MAX_SIZE,
                    value=h.DEFAULTS["max_size"],
                    step=h.SIZE_STEP,
                    label="input size cap (longer side, pixels)",
                    elem_id="max-size",
                )
                opacity = gr.Slider(
                    0.0, 1.0, value=h.DEFAULTS["opacity"], step=0.05, label="overlay opacity"
                )
                lambda_scale = gr.Number(
                    value=h.DEFAULTS["lambda_scale"],
                    minimum=h.MIN_LAMBDA_SCALE,
                    maximum=h.MAX_LAMBDA_SCALE,
                    step=0.1,
                    label=f"{h.LAMBDA_SCALE_NAME}: 1× = the model's own λ",
                    info=(
                        "What-if: the E-step softmax(λ·xᵀμ) with λ times this "
                        f"({h.MIN_LAMBDA_SCALE:g}–{h.MAX_LAMBDA_SCALE:g}); above 1 the "
                        "pixels pick their bases more sharply, below 1 they spread. The summary "
                        "gives the λ used; press Segment to re-run."
                    ),
                    elem_id="lambda-scale",
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
                1, h.MAX_ITERATIONS, value=h.DEFAULTS["iterations"], step=1, label="EM iteration t"
            )
            grid = gr.Image(
                label="responsibilities per base",
                format="png",
                interactive=False,
                elem_id="attention-grid",
            )
            base = gr.Slider(
                0, explorer.num_bases() - 1, value=0, step=1, label="base #", elem_id="base"
            )
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
                    label=(
                        "EM convergence: base shift = mean 1 − cos(μ_t, μ_t−1) (how far the bases "
                        "move); entropy / ln K (1 = uniform) and max responsibility (1 = every "
                        "pixel owned by one base), means over the pixels"
                    ),
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

        def details(session):
            """After a run: fit the sliders to it and draw the slower, secondary views (none
            after the image was cleared)."""
            if session is None:
                return gr.skip(), gr.skip(), None, None
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

        def auto_segment(image, *controls):
            """A new image (uploaded, pasted, captured or an example): segment it; a cleared
            image clears the views, so they always show the image on the left."""
            if image is None:
                return None, None, None, None, "", "", None
            return explorer.segment(image, *controls)

        # preprocess=False: the image arrives as Gradio's payload (its upload path, checked to
        # be in the upload folder, and its original name) and our loader decodes it; every
        # control is validated in h.run_model, which also refuses model names that the
        # dropdown does not offer.
        run = {
            "inputs": [image, model, iterations, max_size, opacity, lambda_scale, uploaded_path],
            "outputs": [overlay, grid, curves, table, legend, info, state],
            "preprocess": False,
        }
        then_details = {
            "fn": details,
            "inputs": [state],
            "outputs": [step, base, base_strip, heatmap],
            "api_visibility": "private",
        }
        button.click(explorer.segment, api_name="segment", **run).then(**then_details)
        # .change, and only it, fires once for every new image: an upload, a paste, a webcam
        # capture, an example click (which fires no .upload) and a clear.
        image.change(auto_segment, api_visibility="private", **run).then(**then_details)
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
    return demo
