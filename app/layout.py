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

#: Seconds between two iterations when the parts map plays.
PLAY_SECONDS = 0.8

DESCRIPTION = """\
# EMANet — segmentation and an EM attention explorer

Drop in an image or pick an example: it is segmented at once. Inside its decode head, EMANet
explains every pixel by a few **bases** found by expectation-maximization: each EM iteration
gives every base a **responsibility** for every pixel, then moves the bases to the pixels they
explain. The **parts map** below colours each pixel by its most responsible base (darker = less
decided) at each iteration *t*: press play, or drag *t*, to see the bases converge on *your*
image. Click any pixel for its responsibilities. The bundled model knows only a synthetic toy
city (the first examples); on photographs it shows what it does.
"""
CONVERGENCE_LABEL = (
    "EM convergence: base shift = mean 1 − cos(μ_t, μ_t−1) (how far the bases move); entropy / "
    "ln K (1 = uniform) and max responsibility (1 = every pixel owned by one base), means over "
    "the pixels"
)
PARTS_HELP = (
    "Every pixel in the colour of its most responsible base (a fixed colour per base), dark "
    "where it is undecided (largest responsibility near 1/K), at EM iteration *t* (t = 1 starts "
    "from the bases the model learned). Click a pixel here or on the segmentation."
)
BASES_HELP = (
    "Responsibility of every base at EM iteration *t* over the dimmed image (viridis: the colour "
    "bar below), bases ordered by how much of the image they take (`#base share` on each tile); "
    "a chosen pixel's top bases are framed in red. Click a tile, or set the base number, to "
    "see that base at every iteration."
)
PROJECTION_HELP = (
    "The M-step made visible: a sample of the image's pixels (as unit vectors: the E-step ranks "
    "a pixel's bases by their cosine with it) in the plane of their two principal components, "
    "coloured by their base at the last iteration, and every base's path from the learned bases "
    "(×, t = 0) to its place after each M-step (●, t = T). Grey paths: bases no sampled pixel "
    "chose."
)
COMPARE_HELP = (
    "Run B on the same image with another model, another number of iterations or another λ, "
    "and see both parts maps and what differs, in numbers."
)
EXPORT_HELP = (
    "The run's raw trace as `.npz` — `emanet.load_trace(path)` reads it back: "
    "`responsibilities` (T, K, h, w), `bases` (T, C, K), `initial_bases` (C, K), `features` "
    "(C, h, w), `labels` (H, W), `image` (H, W, 3), with the model's name, T and λ — or every "
    "picture of the run as PNG files in a `.zip`."
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
        self._scrubber()
        with gr.Tabs():
            with gr.Tab("Parts map", elem_id="tab-parts"):
                self._parts()
            with gr.Tab("Bases over the image", elem_id="tab-bases"):
                self._bases(num_bases)
            with gr.Tab("Bases in feature space", elem_id="tab-projection"):
                gr.Markdown(PROJECTION_HELP)
                self.projection = _picture("pixels and bases (PCA)", "projection")
            with gr.Tab("Compare", elem_id="tab-compare"):
                self._compare(choices, default_model)
            with gr.Tab("Convergence", elem_id="tab-convergence"):
                self._convergence()
            with gr.Tab("Export", elem_id="tab-export"):
                self._export()
        # The last run of this browser tab (an app.session.Session), dropped after an idle
        # hour (API clients never close their tab) so that memory stays bounded.
        self.session = gr.State(None, time_to_live=3600)
        self.checkpoint_path = gr.State(None)  # of the uploaded checkpoint
        self.playing = gr.State(False)  # whether the parts map plays

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
        self.overlay = _picture("segmentation (click a pixel)", "overlay")
        self.legend = gr.HTML(
            label="classes",
            show_label=True,
            container=True,
            padding=True,
            js_on_load=None,  # no click events: the legend is text
            elem_id="legend",
        )
        with gr.Accordion("class areas", open=False):
            self.areas = gr.Dataframe(
                headers=["class", "area (%)"],
                label="class areas",
                interactive=False,
                elem_id="areas",
            )

    def _scrubber(self) -> None:
        """The iteration every explorer view shows, its play control and the maps' opacity."""
        with gr.Row(equal_height=True):
            self.iteration = gr.Slider(
                1,
                MAX_ITERATIONS,
                value=DEFAULTS["iterations"],
                step=1,
                label="EM iteration t",
                elem_id="iteration",
                scale=4,
            )
            self.play = gr.Button("▶ play", elem_id="play", scale=1, min_width=90, size="sm")
            self.map_opacity = gr.Slider(
                0.0,
                1.0,
                value=DEFAULTS["map_opacity"],
                step=0.05,
                label="map opacity (0: the image, 1: the maps alone)",
                elem_id="map-opacity",
                scale=3,
            )
        self.timer = gr.Timer(PLAY_SECONDS, active=False)

    def _parts(self) -> None:
        gr.Markdown(PARTS_HELP)
        self.parts = gr.Image(
            label="parts map at t (click a pixel)",
            format="png",
            interactive=False,
            height=520,
            elem_id="parts",
        )
        with gr.Row():
            with gr.Column(scale=3):
                self.pixel_chart = gr.HTML(
                    label="the chosen pixel's responsibilities (K × T)",
                    show_label=True,
                    container=True,
                    padding=True,
                    elem_id="pixel-chart",
                )
            with gr.Column(scale=1, min_width=220):
                with gr.Row():
                    self.pixel_x = gr.Number(label="pixel x", precision=0, elem_id="pixel-x")
                    self.pixel_y = gr.Number(label="pixel y", precision=0, elem_id="pixel-y")
                self.show_pixel = gr.Button("show this pixel", elem_id="show-pixel")
                with gr.Accordion("the numbers", open=False):
                    self.pixel_numbers = gr.JSON(label="responsibilities", elem_id="pixel-json")

    def _bases(self, num_bases: int) -> None:
        gr.Markdown(BASES_HELP)
        self.grid = _picture("responsibilities per base at t", "attention-grid", caption=True)
        self.base = gr.Slider(0, num_bases - 1, value=0, step=1, label="base #", elem_id="base")
        self.base_strip = _picture("one base across iterations", "base-strip", caption=True)

    def _compare(self, choices: list[str], default_model: str | None) -> None:
        gr.Markdown(COMPARE_HELP)
        with gr.Row():
            self.model_b = gr.Dropdown(
                choices, value=default_model or BUNDLED, label="B: model", elem_id="model-b"
            )
            self.iterations_b = gr.Slider(
                1, MAX_ITERATIONS, value=1, step=1, label="B: EM iterations", elem_id="iter-b"
            )
            self.lambda_b = gr.Number(
                value=DEFAULTS["lambda_scale"],
                minimum=MIN_LAMBDA_SCALE,
                maximum=MAX_LAMBDA_SCALE,
                label=f"B: {LAMBDA_SCALE_NAME}",
                elem_id="lambda-b",
            )
            self.compare = gr.Button("Compare", variant="primary", elem_id="compare")
        with gr.Row():
            self.parts_a = _picture("A: the run above", "parts-a")
            self.parts_b = _picture("B", "parts-b")
        self.differences = gr.Markdown(elem_id="differences")

    def _convergence(self) -> None:
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

    def _export(self) -> None:
        gr.Markdown(EXPORT_HELP)
        with gr.Row():
            self.export_trace = gr.Button("trace (.npz)", elem_id="export-trace")
            self.export_figures = gr.Button("figures (PNG, .zip)", elem_id="export-figures")
        self.download = gr.File(label="download", interactive=False, elem_id="download")


def _picture(label: str, elem_id: str, caption: bool = False) -> gr.Image:
    """An output image, sent as a lossless PNG. With ``caption`` its label is written above it
    rather than on its top-left corner, where it would hide the picture's own labels."""
    if caption:
        gr.Markdown(f"**{label}**")
    return gr.Image(
        label=label, show_label=not caption, format="png", interactive=False, elem_id=elem_id
    )
