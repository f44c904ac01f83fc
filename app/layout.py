"""The page: what it shows, top to bottom, and nothing of what happens (:mod:`app.events`).

:class:`Page` places every component inside an open ``gr.Blocks`` and keeps the ones that
events read or write as its attributes.
"""

from __future__ import annotations

import gradio as gr

from .session import (
    BUNDLED,
    DEFAULTS,
    LAMBDA_SCALE_NAME,
    MAX_ITERATIONS,
    MAX_LAMBDA_SCALE,
    MAX_SIZE,
    MIN_LAMBDA_SCALE,
    MIN_SIZE,
    RANDOM_WEIGHTS_NOTICE,
    SIZE_STEP,
)

DESCRIPTION = """\
# EMANet — segmentation and an EM attention explorer

Drop in an image or pick an example: it is segmented at once. EMANet segments it into the 19
Cityscapes classes and, inside its decode head, explains every pixel by a few **bases** found by
expectation-maximization. The explorer shows, for every EM iteration, each base's
**responsibility** for each pixel (bright = this base explains this pixel) — how the bases settle
on the parts of *your* image — and the summary says how decided they are. The bundled model
knows only a synthetic toy city (the first examples); on photographs it shows what it does.
"""
CONVERGENCE_LABEL = (
    "EM convergence: base shift = mean 1 − cos(μ_t, μ_t−1) (how far the bases move); entropy / "
    "ln K (1 = uniform) and max responsibility (1 = every pixel owned by one base), means over "
    "the pixels"
)
EXPLORER_HELP = (
    "Responsibility of every base at EM iteration *t* (viridis: dark 0, bright the largest "
    "responsibility at *t*), bases ordered by how much of the image they take (`#base share` on "
    "each tile). Click a tile, or set the base number, to see that base over the image at "
    "every iteration."
)
LAMBDA_HELP = (
    f"What-if: the E-step softmax(λ·xᵀμ) with λ times this ({MIN_LAMBDA_SCALE:g}–"
    f"{MAX_LAMBDA_SCALE:g}); above 1 the pixels pick their bases more sharply, below 1 they "
    "spread. The summary gives the λ used; press Segment to re-run."
)


class Page:
    """The page, laid out inside an open ``gr.Blocks``: the description, the inputs beside the
    results, the EM attention explorer below.

    Args:
        choices, default_model: the model dropdown's choices and initial value.
        num_bases: the base slider's range until the first run sets it.
        examples: ``[(path, caption)]`` of the example images.
        random_weights: show the notice that the bundled model has random weights.
    """

    def __init__(
        self,
        choices: list[str],
        default_model: str | None,
        num_bases: int,
        examples: list[tuple[str, str]],
        random_weights: bool,
    ) -> None:
        gr.Markdown(DESCRIPTION)
        gr.Markdown(RANDOM_WEIGHTS_NOTICE, visible=random_weights, elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                self._inputs(choices, default_model, examples)
            with gr.Column(scale=2):
                self._results()
        with gr.Tab("EM attention explorer"):
            self._explorer(num_bases)
        # The last run of this browser tab (an app.session.Session), dropped after an idle
        # hour (API clients never close their tab) so that memory stays bounded.
        self.session = gr.State(None, time_to_live=3600)
        self.checkpoint_path = gr.State(None)  # of the uploaded checkpoint

    def _inputs(self, choices: list[str], default_model: str | None, examples) -> None:
        # A path, never decoded by Gradio: our loader reads every mode (Gradio's PIL conversion
        # would clip 16-bit images to white and fail vaguely on broken files).
        self.image = gr.Image(
            type="filepath",
            image_mode=None,
            sources=["upload", "clipboard", "webcam"],
            label="image",
            height=300,
            elem_id="input-image",
        )
        self.model = gr.Dropdown(
            choices, value=default_model or BUNDLED, label="model", elem_id="model"
        )
        with gr.Accordion("use your own checkpoint", open=False):
            self.checkpoint = gr.File(
                label="checkpoint (.pth: ours or mmsegmentation's, read with weights_only; over "
                "the upload limit? start with --model PATH)",
                file_types=[".pth"],
                height=110,
            )
        self._controls()
        self.button = gr.Button("Segment", variant="primary", elem_id="segment")
        if examples:
            gr.Examples(
                examples=[[path] for path, _ in examples],
                inputs=[self.image],
                example_labels=[caption for _, caption in examples],
                label="examples (their sources are named)",
            )

    def _controls(self) -> None:
        """The run's controls, with the ranges that :func:`app.session.run_model` accepts."""
        self.iterations = gr.Slider(
            1,
            MAX_ITERATIONS,
            value=DEFAULTS["iterations"],
            step=1,
            label="EM iterations at test time",
        )
        self.max_size = gr.Slider(
            MIN_SIZE,
            MAX_SIZE,
            value=DEFAULTS["max_size"],
            step=SIZE_STEP,
            label="input size cap (longer side, pixels)",
            elem_id="max-size",
        )
        self.opacity = gr.Slider(
            0.0, 1.0, value=DEFAULTS["opacity"], step=0.05, label="overlay opacity"
        )
        self.lambda_scale = gr.Number(
            value=DEFAULTS["lambda_scale"],
            minimum=MIN_LAMBDA_SCALE,
            maximum=MAX_LAMBDA_SCALE,
            step=0.1,
            label=f"{LAMBDA_SCALE_NAME}: 1× = the model's own λ",
            info=LAMBDA_HELP,
            elem_id="lambda-scale",
        )

    def _results(self) -> None:
        self.summary = gr.Markdown(label="summary", elem_id="info")
        self.overlay = _picture("segmentation", "overlay")
        self.legend = gr.HTML(
            label="classes",
            show_label=True,
            container=True,
            padding=True,
            js_on_load=None,  # no click events: the legend is text
            elem_id="legend",
        )
        self.areas = gr.Dataframe(
            headers=["class", "area (%)"],
            label="class areas",
            interactive=False,
            elem_id="areas",
        )

    def _explorer(self, num_bases: int) -> None:
        gr.Markdown(EXPLORER_HELP)
        self.iteration = gr.Slider(
            1, MAX_ITERATIONS, value=DEFAULTS["iterations"], step=1, label="EM iteration t"
        )
        self.grid = _picture("responsibilities per base", "attention-grid", caption=True)
        self.base = gr.Slider(0, num_bases - 1, value=0, step=1, label="base #", elem_id="base")
        self.base_strip = _picture("one base across iterations", "base-strip", caption=True)
        with gr.Row():
            self.curves = gr.LinePlot(
                x="iteration",
                y="value",
                color="measure",
                label=CONVERGENCE_LABEL,
                x_title="EM iteration t",
                y_title="value",
                elem_id="convergence",
            )
            with gr.Column():
                self.heatmap = _picture(
                    "which classes each base covers (share of its responsibility)",
                    "base-class",
                    caption=True,
                )


def _picture(label: str, elem_id: str, caption: bool = False) -> gr.Image:
    """An output image, sent as a lossless PNG. With ``caption`` its label is written above it
    rather than on its top-left corner, where it would hide the picture's own labels."""
    if caption:
        gr.Markdown(f"**{label}**")
    return gr.Image(
        label=label, show_label=not caption, format="png", interactive=False, elem_id=elem_id
    )
