"""What the app does when asked: load models (once), segment, and render only what is shown.

No Gradio layout here and no model logic: models come from :mod:`emanet.predict`, pictures
from :mod:`emanet.viz.render`, PNG files from :mod:`app.png`. :class:`Explorer` holds what all
sessions share and answers ``/segment``. Errors a person can fix (a broken image, an offline
download, a checkpoint that is not one, a control out of range) become ``gr.Error`` with the
message.
"""

from __future__ import annotations

import functools
import html
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from emanet.io.checkpoint import BUNDLED_CHECKPOINT, MODEL_ZOO, CheckpointError
from emanet.io.images import ImageLoadError
from emanet.models.attention import AttentionStats, trace_stats
from emanet.models.presets import SMALL_PRESET, get_preset
from emanet.models.segmentor import build_model
from emanet.predict import Prediction, Segmenter
from emanet.viz import render

from .png import PngWriter

log = logging.getLogger(__name__)

BUNDLED = f"bundled: {SMALL_PRESET.name} (synthetic toy city)"
UPLOADED = "uploaded .pth file"
ZOO = list(MODEL_ZOO)
MAX_ITERATIONS = 10
# The input size cap (longer side, pixels): the slider's range and step, and what /segment takes.
MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 2048, 32
# The lambda what-if control: a multiplier of the model's own inverse temperature (1 = its own).
MIN_LAMBDA_SCALE, MAX_LAMBDA_SCALE = 0.01, 100.0
LAMBDA_SCALE_NAME = "λ multiplier"
#: Inputs of the ``/segment`` endpoint after the image and the model, with their defaults.
DEFAULTS = {"iterations": 3, "max_size": 1024, "opacity": 0.5, "lambda_scale": 1.0}
# What the summary calls a run's attention, by its mean responsibility entropy / ln K.
DECIDED_ENTROPY, UNIFORM_ENTROPY = 0.5, 0.9
# The attention grid's layout; the click handler must use the same numbers.
GRID_COLS, GRID_TILE = 8, 72
RANDOM_WEIGHTS_NOTICE = (
    f"**Notice: random weights.** The bundled model file `{BUNDLED_CHECKPOINT.name}` is missing "
    "from this installation, so the bundled choice is a *randomly initialised* network: its "
    "segmentations are meaningless (the EM attention explorer still shows real EM on its "
    "features). Choose a model-zoo entry or upload a checkpoint for real results."
)


def bundled_missing() -> bool:
    return not BUNDLED_CHECKPOINT.is_file()


def load_segmenter(name: str | None, **options) -> Segmenter:
    """The default factory: ``None`` = the bundled model, else a zoo name or a ``.pth`` path.

    ``options`` (``device``, ``precision``) go to :class:`~emanet.predict.Segmenter`. A missing
    bundled file is not an error: the app stays usable with a randomly initialised model of
    the same architecture, with a warning here and a notice in the page.
    """
    if name is None and bundled_missing():
        log.warning(
            "bundled model %s is missing: using a randomly initialised %s",
            BUNDLED_CHECKPOINT,
            SMALL_PRESET.name,
        )
        return Segmenter(build_model(SMALL_PRESET), **options)
    # progress=False: no download progress bar in a server's log.
    return Segmenter.from_pretrained(name, progress=False, **options)


class ModelCache:
    """Segmenters by name, each loaded once and shared by all sessions.

    Loading is serialised by a lock (two sessions asking for the same zoo model download it
    once); inference is not. Uploaded checkpoints are keyed by their upload path and only the
    most recent one is kept, so repeated uploads cannot fill the memory.
    """

    def __init__(self, factory: Callable[[str | None], Segmenter] | None = None) -> None:
        self._factory = factory or load_segmenter
        self._models: dict[str | None, Segmenter] = {}
        self._uploaded: str | None = None
        self._lock = threading.Lock()

    def get(self, key: str | None, uploaded: bool = False) -> Segmenter:
        """``key``: ``None`` (bundled), a zoo name or, with ``uploaded``, a checkpoint path."""
        with self._lock:
            if key not in self._models:
                started = time.perf_counter()
                model = self._factory(key)
                if uploaded:
                    self._models.pop(self._uploaded, None)
                    self._uploaded = key
                self._models[key] = model
                log.info("loaded %s in %.1f s", key or BUNDLED, time.perf_counter() - started)
            return self._models[key]

    def loaded(self, key: str | None) -> Segmenter | None:
        """The segmenter of ``key`` if it is loaded already (nothing is loaded here)."""
        with self._lock:
            return self._models.get(key)


@dataclass
class Session:
    """The last prediction of one browser session (``gr.State``): the sliders and the base
    selector re-render from it without running the model again."""

    prediction: Prediction
    order: np.ndarray  # bases by share of the image at the last iteration, largest first
    model: str
    seconds: float
    own_lambda: float  # the model's own inverse temperature
    lambda_scale: float = 1.0  # the run's lambda = own_lambda * lambda_scale
    attention: list[AttentionStats] | None = (
        None  # emanet.models.attention's measures, per iteration
    )

    @property
    def inverse_temperature(self) -> float:
        """The lambda the run used."""
        return self.own_lambda * self.lambda_scale


def model_choices(default: str | None = None) -> list[str]:
    """The dropdown: bundled, the four zoo configs, a command-line model, an upload."""
    choices = [BUNDLED, *ZOO]
    if default and default not in choices:
        choices.append(default)
    return [*choices, UPLOADED]


def _model_key(model: str | None, uploaded: str | None, allowed: list[str]) -> str | None:
    """Dropdown value -> the factory's name. Anything not offered is refused: the API must
    not become a way to read arbitrary server paths or URLs."""
    if model in (None, "", BUNDLED):
        return None
    if model == UPLOADED:
        if not uploaded:
            raise gr.Error("Upload a .pth checkpoint first (or choose another model).")
        return str(uploaded)
    if model not in allowed:
        raise gr.Error(f"Unknown model {model!r}; choose one of: {', '.join(allowed)}.")
    return model


def _image_file(image) -> tuple[str, str]:
    """``(path, name)`` of the uploaded file, from a raw ``gr.Image`` payload (the event skips
    Gradio's preprocessing so that :func:`emanet.io.images.load_image` decodes every file
    itself). ``path`` is Gradio's copy on the server; ``name`` is what the person calls the
    file (the payload's ``orig_name``, else the copy's file name), for messages."""
    if image is None:
        raise gr.Error("Upload an image first (or pick an example).")
    name = None
    if isinstance(image, dict):
        image, name = image.get("path"), image.get("orig_name")
    elif hasattr(image, "path"):
        image, name = image.path, getattr(image, "orig_name", None)
    if not image:
        raise gr.Error("The image did not arrive as a file; upload it again.")
    path = str(image)
    # Only the last component: a client chooses orig_name and may send a path.
    return path, Path(str(name or path).replace("\\", "/")).name or Path(path).name


def _without_path(message: str, path: str, name: str) -> str:
    """``message`` with the server path ``path`` (and its folder) replaced by ``name``: error
    messages name the file a person uploaded, never where the server keeps it."""
    folder = str(Path(path).parent)
    message = message.replace(path, name)
    return message.replace(folder, "<upload>") if folder not in ("", ".", "/") else message


def _number(value, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}.") from None
    if not low <= number <= high:
        raise gr.Error(f"{name} must be in {low:g}..{high:g}, got {number:g}.")
    return number


def run_model(
    cache: ModelCache,
    image,
    model: str | None,
    uploaded: str | None,
    iterations,
    max_size,
    allowed: list[str],
    lambda_scale=1.0,
) -> Session:
    """Segment ``image`` with its EM trace and measure its attention; every user mistake
    becomes a ``gr.Error``.

    ``lambda_scale`` multiplies the model's own inverse temperature for this run (a what-if;
    at 1 the model runs exactly as it was trained).
    """
    path, name = _image_file(image)
    steps = int(_number(iterations, "EM iterations", 1, MAX_ITERATIONS))
    size = int(_number(max_size, "input size cap", MIN_SIZE, MAX_SIZE))
    scale = _number(lambda_scale, LAMBDA_SCALE_NAME, MIN_LAMBDA_SCALE, MAX_LAMBDA_SCALE)
    key = _model_key(model, uploaded, allowed)
    is_upload = model == UPLOADED
    checkpoint_name = Path(str(key)).name if is_upload else str(model)
    try:
        segmenter = cache.get(key, uploaded=is_upload)
    except CheckpointError as error:
        message = str(error)
        raise gr.Error(
            _without_path(message, key, checkpoint_name) if is_upload else message
        ) from None
    except Exception as error:  # a checkpoint of the wrong kind can fail in many ways
        log.exception("could not load model %s", key)
        message = f"Could not load model {checkpoint_name!r}: {error}"
        raise gr.Error(
            _without_path(message, key, checkpoint_name) if is_upload else message
        ) from None
    own_lambda = float(segmenter.model.em_unit.inverse_temperature)
    started = time.perf_counter()
    try:
        prediction = segmenter(
            path,
            trace=True,
            num_iterations=steps,
            max_size=size,
            # None at 1x: the model's own unit, untouched (not a multiplication by 1.0).
            inverse_temperature=None if scale == 1.0 else own_lambda * scale,
        )
    except ImageLoadError as error:
        # The error names Gradio's temporary copy; the person knows the file by its name.
        message = f"Cannot load image {name}: {error.reason}"
        raise gr.Error(_without_path(message, path, name)) from None
    seconds = time.perf_counter() - started
    log.info("segmented %s in %.2f s", name, seconds)
    trace = prediction.trace
    order = render.base_order(trace.responsibilities[-1][0])
    attention = [trace_stats(trace, t)[0] for t in range(trace.num_iterations)]
    return Session(prediction, order, model or BUNDLED, seconds, own_lambda, scale, attention)


def class_table(prediction: Prediction, areas: dict[str, float] | None = None) -> pd.DataFrame:
    """Classes present and their share of the image (%), largest first.

    ``areas``: :meth:`Prediction.class_areas`, if the caller has it already.
    """
    areas = prediction.class_areas() if areas is None else areas
    rows = [[name, round(share * 100.0, 2)] for name, share in areas.items()]
    return pd.DataFrame(rows, columns=["class", "area (%)"])


def legend_html(prediction: Prediction, areas: dict[str, float] | None = None) -> str:
    """HTML colour legend of the classes present (largest first): a swatch and a name each.

    ``areas``: :meth:`Prediction.class_areas`, if the caller has it already. Colours are the
    prediction's palette as ``#rrggbb``; names are escaped.
    """
    areas = prediction.class_areas() if areas is None else areas
    index = {name: i for i, name in enumerate(prediction.classes)}
    items = []
    for name in areas:
        r, g, b = (int(v) for v in prediction.palette[index[name]])
        items.append(
            '<span style="display:inline-flex;align-items:center;gap:6px;margin:2px 14px 2px 0">'
            f'<span style="display:inline-block;width:14px;height:12px;'
            f'background:#{r:02x}{g:02x}{b:02x};border:1px solid #000"></span>'
            f"{html.escape(name)}</span>"
        )
    body = "".join(items) or "no class"
    return f'<div class="emanet-legend" style="display:flex;flex-wrap:wrap">{body}</div>'


def overlay(session: Session, opacity) -> np.ndarray:
    """``(H, W, 3)`` uint8 segmentation over the image, at the image's own size."""
    return session.prediction.overlay(_number(opacity, "overlay opacity", 0.0, 1.0))


def grid(session: Session, iteration) -> np.ndarray:
    """All bases' responsibilities at iteration ``t`` (clipped to 1..T), largest share first."""
    trace = session.prediction.trace
    t = int(np.clip(int(iteration), 1, trace.num_iterations))
    return render.attention_grid(trace, t, order=session.order, cols=GRID_COLS, tile=GRID_TILE)


def base_at(session: Session, x: int, y: int) -> int | None:
    """The base whose tile holds pixel ``(x, y)`` of :func:`grid`'s image, or ``None``."""
    slot = render.attention_grid_slot(
        session.prediction.trace, x, y, cols=GRID_COLS, tile=GRID_TILE
    )
    if slot is None or slot >= len(session.order):
        return None
    return int(session.order[slot])


def single_base(session: Session, base) -> np.ndarray:
    """Base ``#base`` (clipped to 0..K-1) over the image at every iteration, side by side."""
    base = int(np.clip(int(base), 0, len(session.order) - 1))
    return render.base_across_iterations(
        session.prediction.trace, base, session.prediction.image, max_width=1400
    )


#: The convergence plot's lines and their legends (short: the plot's label explains them).
CONVERGENCE_MEASURES = {
    "base_shift": "base shift",
    "entropy": "entropy / ln K",
    "max_responsibility": "max responsibility",
}


def convergence_table(session: Session) -> pd.DataFrame:
    """Per EM iteration, in long form for ``gr.LinePlot`` (a line a measure): how far the bases
    moved (:func:`emanet.viz.render.convergence`) and how decided the pixels are
    (:mod:`emanet.models.attention`'s entropy / ln K and mean largest responsibility)."""
    series = {
        "base_shift": render.convergence(session.prediction.trace)["base_shift"],
        "entropy": [stats.entropy for stats in session.attention],
        "max_responsibility": [stats.max_responsibility for stats in session.attention],
    }
    rows = [
        {"iteration": t, "value": value, "measure": CONVERGENCE_MEASURES[key]}
        for key, values in series.items()
        for t, value in enumerate(values, start=1)
    ]
    return pd.DataFrame(rows, columns=["iteration", "value", "measure"])


def base_class_heatmap(session: Session, max_bases: int = 32) -> np.ndarray:
    """Bases (rows, largest share first) x classes present (columns) as a uint8 heat map."""
    p = session.prediction
    matrix = render.base_class_matrix(p.trace, p.labels, num_classes=len(p.classes))
    return render.base_class_image(matrix, p.classes, session.order, max_bases=max_bases)


def attention_summary(session: Session) -> str:
    """What the attention of this run measured (its last iteration) and with which lambda."""
    stats = session.attention[-1]
    steps = len(session.attention)
    bases = len(session.order)
    if stats.entropy >= UNIFORM_ENTROPY:
        verdict = "nearly uniform: every pixel is shared by many bases, the maps show little"
    elif stats.entropy <= DECIDED_ENTROPY:
        verdict = "decided: most pixels belong to one base"
    else:
        verdict = "partly decided"
    own = f"{session.own_lambda:g}"
    if session.lambda_scale == 1.0:
        lam = f"λ = {own}, the model's own"
    else:
        lam = (
            f"**what-if: λ = {session.inverse_temperature:g} = {session.lambda_scale:g}× the "
            f"model's own λ = {own}**, not the responsibilities the model was trained with "
            "(set the λ multiplier to 1 for those)"
        )
    return (
        f"**Attention at EM iteration {steps} of {steps}** ({lam}): mean responsibility "
        f"entropy **{stats.entropy:.3f} × ln K** (1 = uniform over the {bases} bases) — "
        f"{verdict}; mean largest responsibility {stats.max_responsibility:.3f} "
        f"(uniform: {1 / bases:.3f}); {stats.active_bases} of {bases} bases are the most "
        "responsible base of ≥ 2 % of the pixels."
    )


def summary(session: Session, random_weights: bool = False) -> str:
    """Markdown about the run: its measured attention, then sizes, iterations, model time."""
    p = session.prediction
    text = (
        f"{p.image.width}×{p.image.height} image, model input {p.input_size[1]}×"
        f"{p.input_size[0]}, {p.trace.num_iterations} EM iterations, "
        f"{len(session.order)} bases — model time {session.seconds * 1000:.0f} ms "
        f"({session.model})"
    )
    if random_weights:
        text += " — **random weights: the segmentation is meaningless**"
    return f"{attention_summary(session)}\n\n{text}"


class Explorer:
    """The app without its layout: the models (each loaded once, shared by all sessions), the
    PNG writer, and the ``/segment`` handler. :func:`app.ui.build_demo` lays it out; tests and
    benchmarks call :meth:`segment` in-process.

    Args:
        segmenter_factory: ``factory(name) -> Segmenter``; ``name`` is ``None`` for the bundled
            model, a zoo name, ``default_model`` or an uploaded ``.pth`` path. Default:
            :func:`load_segmenter` (random weights if the bundled file is missing).
        default_model: the dropdown's initial choice (a zoo name or a path; default: bundled).
        preload: load the default model now, so the first request is fast and a broken model
            fails at start rather than in a request.
        device, precision: where and in which precision the default factory runs every model
            (see :class:`emanet.predict.Segmenter`; default: CUDA if available, fp32).
    """

    def __init__(
        self,
        segmenter_factory: Callable[[str | None], Segmenter] | None = None,
        default_model: str | None = None,
        preload: bool = False,
        device: str | None = None,
        precision: str | None = None,
    ) -> None:
        options = {k: v for k, v in (("device", device), ("precision", precision)) if v is not None}
        self.cache = ModelCache(segmenter_factory or functools.partial(load_segmenter, **options))
        self.png = PngWriter()  # images go out as fast, lossless PNG files
        # Compresses /segment's overlay PNG while the request's thread draws the attention grid;
        # one worker per concurrent run (the queue runs two).
        self._png_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emanet-render")
        weakref.finalize(self, self._png_pool.shutdown, wait=False)
        self.default_model = default_model or None
        self.choices = model_choices(default_model)
        self.random_bundled = segmenter_factory is None and bundled_missing()
        if preload:
            self.cache.get(self.default_model)

    def num_bases(self) -> int:
        """``K`` of the default model, the base slider's range before the first run (each run
        sets it to the ``K`` of the model that ran): the loaded model's, else its preset's (the
        bundled preset's for a file that is not loaded yet)."""
        loaded = self.cache.loaded(self.default_model)
        if loaded is not None:
            return loaded.model.em_unit.num_bases
        preset = self.default_model if self.default_model in MODEL_ZOO else SMALL_PRESET
        return get_preset(preset).num_bases

    def segment(
        self, image, model, iterations, max_size, opacity, lambda_scale=1.0, uploaded=None
    ) -> tuple:
        """The ``/segment`` endpoint: image and controls in; overlay PNG path, attention grid
        PNG path, convergence table, class-area table, legend HTML, summary and the new
        :class:`Session` out. ``lambda_scale`` multiplies the model's own lambda (a what-if)."""
        session = run_model(
            self.cache,
            image,
            model,
            uploaded,
            iterations,
            max_size,
            allowed=self.choices,
            lambda_scale=lambda_scale,
        )
        random_weights = self.random_bundled and session.model == BUNDLED
        # The torch work first: torch's two-thread ops stall while the worker holds a core.
        curves = convergence_table(session)
        # The overlay is drawn here (numpy that mostly holds the GIL) and compressed on a
        # worker (zlib holds none of it) while this thread draws the attention grid.
        # PngWriter's level 1 costs no latency over level 0 here (measured on localhost: it
        # runs while the grid is drawn) and sends 1.7-2.5x fewer bytes.
        overlay_png = self._png_pool.submit(self.png, overlay(session, opacity), "overlay")
        grid_png = self.png(grid(session, session.prediction.trace.num_iterations), "attention")
        areas = session.prediction.class_areas()
        return (
            overlay_png.result(),
            grid_png,
            curves,
            class_table(session.prediction, areas),
            legend_html(session.prediction, areas),
            summary(session, random_weights),
            session,
        )
