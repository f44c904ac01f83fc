"""The app's layout and event wiring (Gradio Blocks). Logic lives in :mod:`app.handlers`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from emanet.predict import BUNDLED_CHECKPOINT, Segmenter

from . import handlers as h

DESCRIPTION = """\
# EMANet — segmentation and an EM attention explorer

Drop in an image. EMANet segments it into the 19 Cityscapes classes and, inside its decode head,
explains every pixel by a few **bases** found by expectation-maximization. The explorer shows,
for every EM iteration, each base's **responsibility** for each pixel (bright = this base explains
this pixel) — how the bases settle on the parts of *your* image.
"""


class FileImage(gr.Image):
    """An image input that hands the uploaded file over untouched.

    Gradio's own preprocessing opens the file with PIL and fails with a generic error on a
    broken upload; our loader decodes every mode and names what is wrong, so it gets the file.
    """

    def get_block_name(self) -> str:
        return "image"  # reuse gr.Image's front end

    def preprocess(self, payload):
        if payload is not None and getattr(payload, "path", None):
            return str(payload.path)
        return super().preprocess(payload)


def build_demo(
    segmenter_factory: Callable[[str | None], Segmenter] | None = None,
    toycity_root: str | None = None,
    examples_dir: str | Path | None = None,
    preload: bool = False,
) -> gr.Blocks:
    """The whole app. ``segmenter_factory(name)`` builds a model (``None`` = bundled);
    ``preload`` loads the default model now, so that the first request is fast and a broken
    model fails at start rather than in a request."""
    cache = h.ModelCache(segmenter_factory)
    png = h.PngWriter()
    if preload:
        cache.get(None)
    notice = ""
    if segmenter_factory is None and not BUNDLED_CHECKPOINT.is_file():
        notice = f"**Note:** the bundled model file {BUNDLED_CHECKPOINT} is missing."
    examples_dir = Path(examples_dir or Path(tempfile.gettempdir()) / "emanet-app-examples")
    examples = h.toycity_examples(toycity_root or os.environ.get("EMANET_TOYCITY"))
    examples += h.skimage_examples(examples_dir)

    with gr.Blocks(title="EMANet explorer", analytics_enabled=False) as demo:
        gr.Markdown(DESCRIPTION + ("\n" + notice if notice else ""))
        state = gr.State(None)
        uploaded_path = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = FileImage(
                    type="filepath",
                    sources=["upload", "clipboard", "webcam"],
                    label="image",
                    height=300,
                )
                model = gr.Dropdown(h.MODEL_CHOICES, value=h.BUNDLED, label="model")
                with gr.Accordion("use your own checkpoint", open=False):
                    uploaded = gr.File(
                        label="checkpoint (.pth: ours or mmsegmentation's, read with weights_only)",
                        file_types=[".pth"],
                    )
                iterations = gr.Slider(1, 10, value=3, step=1, label="EM iterations at test time")
                max_size = gr.Slider(
                    64, 2048, value=1024, step=32, label="input size cap (longer side, pixels)"
                )
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="overlay opacity")
                button = gr.Button("Segment", variant="primary")
                if examples:
                    gr.Examples(
                        examples=[[path] for path, _ in examples],
                        inputs=[image],
                        example_labels=[caption for _, caption in examples],
                        label="examples (their sources are named)",
                    )
            with gr.Column(scale=2):
                info = gr.Markdown()
                overlay = gr.Image(
                    label="segmentation", format="png", interactive=False, elem_id="overlay"
                )
                legend = gr.Image(label="classes", format="png", interactive=False, height=90)
                table = gr.Dataframe(
                    label="class areas", headers=["class", "area (%)"], interactive=False
                )
        with gr.Tab("EM attention explorer"):
            gr.Markdown(
                "Responsibility of every base at EM iteration *t*, bases ordered by how much of "
                "the image they take (share in each tile's label)."
            )
            step = gr.Slider(1, 10, value=3, step=1, label="EM iteration t")
            grid = gr.Image(
                label="responsibilities per base",
                format="png",
                interactive=False,
                elem_id="attention-grid",
            )
            rank = gr.Slider(0, 63, value=0, step=1, label="base (0 = largest share)")
            base_strip = gr.Image(
                label="one base across iterations", format="png", interactive=False
            )
            with gr.Row():
                curves = gr.LinePlot(
                    x="iteration",
                    y="value",
                    color="measure",
                    label="convergence: how far the bases move, how decided the pixels are",
                )
                heatmap = gr.Image(
                    label="which classes each base covers", format="png", interactive=False
                )

        def segment(image, model, iterations, max_size, opacity, uploaded):
            session = h.run_model(cache, image, model, uploaded, iterations, max_size)
            return (
                png(h.overlay(session, opacity), "overlay"),
                png(h.legend(session.prediction), "legend"),
                h.class_table(session.prediction),
                png(h.grid(session, int(iterations)), "attention"),
                h.convergence_table(session),
                h.summary(session),
                session,
            )

        def details(session):
            if session is None:
                return gr.update(), gr.update(), gr.update(), gr.update()
            steps = session.prediction.trace.num_iterations
            return (
                gr.update(maximum=steps, value=steps),
                gr.update(maximum=len(session.order) - 1, value=0),
                png(h.single_base(session, 0), "base"),
                png(h.base_class_heatmap(session), "bases-classes"),
            )

        def need(session):
            if session is None:
                raise gr.Error("segment an image first")
            return session

        button.click(
            segment,
            inputs=[image, model, iterations, max_size, opacity, uploaded_path],
            outputs=[overlay, legend, table, grid, curves, info, state],
            api_name="segment",
        ).then(details, inputs=[state], outputs=[step, rank, base_strip, heatmap], api_name=False)
        uploaded.upload(
            lambda f: (f, gr.update(value=h.UPLOADED)),
            inputs=[uploaded],
            outputs=[uploaded_path, model],
            api_name=False,
        )
        step.release(
            lambda s, t: png(h.grid(need(s), t), "attention"),
            inputs=[state, step],
            outputs=[grid],
            api_name=False,
        )
        rank.release(
            lambda s, r: png(h.single_base(need(s), r), "base"),
            inputs=[state, rank],
            outputs=[base_strip],
            api_name=False,
        )
        opacity.release(
            lambda s, o: png(h.overlay(need(s), o), "overlay"),
            inputs=[state, opacity],
            outputs=[overlay],
            api_name=False,
        )
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo
