"""One run of the app: the model asked for (each loaded once), the controls checked, the image
segmented with its EM trace and measured.

Models come from :mod:`emanet.predict`, the measures from :mod:`emanet.viz.render`'s
``convergence`` (:mod:`emanet.models.attention`'s). Every mistake a person can fix (a broken
image, an offline download, a checkpoint that is not one, a control out of range, an input too
large for the memory) becomes a ``gr.Error`` with one clear line that names files as the person
named them, never by where the server keeps them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from emanet.io.checkpoint import BUNDLED_CHECKPOINT, MODEL_ZOO, CheckpointError
from emanet.io.images import ImageLoadError, load_image
from emanet.models.presets import SMALL_PRESET
from emanet.models.segmentor import build_model
from emanet.predict import Prediction, Segmenter
from emanet.predict.int8 import toycity_calibration
from emanet.runtime.device import is_out_of_memory
from emanet.viz import render

log = logging.getLogger(__name__)

BUNDLED = f"bundled: {SMALL_PRESET.name} (synthetic toy city)"
UPLOADED = "uploaded .pth file"
MAX_ITERATIONS = 10
# The input size cap (longer side, pixels): the slider's range and step, and what /segment takes.
MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 2048, 32
# The lambda what-if control: a multiplier of the model's own inverse temperature (1 = its own).
MIN_LAMBDA_SCALE, MAX_LAMBDA_SCALE = 0.01, 100.0
LAMBDA_SCALE_NAME = "λ multiplier"
#: Inputs of the ``/segment`` endpoint after the image and the model, with their defaults.
DEFAULTS = {
    "iterations": 3,
    "max_size": 1024,
    "opacity": 0.5,
    "lambda_scale": 1.0,
    "map_opacity": 0.7,
}
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

    ``options`` (``device``, ``precision``, ``backend``, ``calibration``) go to
    :class:`~emanet.predict.Segmenter`. A missing
    bundled file is not an error: the app stays usable with a randomly initialised model of
    the same architecture, with a warning here and a notice in the page.
    """
    if name is None and bundled_missing():
        log.warning(
            "bundled model %s is missing: using a randomly initialised %s",
            BUNDLED_CHECKPOINT,
            SMALL_PRESET.name,
        )
        if options.get("precision") == "int8" and not options.get("calibration"):
            options["calibration"] = toycity_calibration()  # the preset's own domain
        return Segmenter(build_model(SMALL_PRESET), **options)
    # progress=True: torch.hub's download bar is a tqdm bar, which the page shows (the
    # handlers' gr.Progress(track_tqdm=True)).
    return Segmenter.from_pretrained(name, progress=True, **options)


def model_choices(default: str | None = None) -> list[str]:
    """The dropdown: bundled, the four zoo configs, a command-line model, an upload."""
    choices = [BUNDLED, *MODEL_ZOO]
    if default and default not in choices:
        choices.append(default)
    return [*choices, UPLOADED]


class ModelCache:
    """Segmenters by name, each loaded once and shared by all sessions.

    Loading is serialised by a lock (two sessions asking for the same zoo model download it
    once); inference is not. Uploaded checkpoints are keyed by their upload path and only the
    most recent one is kept, so repeated uploads cannot fill the memory.
    """

    def __init__(self, factory: Callable[[str | None], Segmenter] | None = None, **options):
        """``factory(name)``; default: :func:`load_segmenter` with ``options`` (``device``,
        ``precision``)."""
        self._factory = factory or functools.partial(load_segmenter, **options)
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
    """The last run of one browser session (``gr.State``): the views re-render from it
    without running the model again."""

    prediction: Prediction
    order: np.ndarray  # bases by share of the image at the last iteration, largest first
    #: :func:`emanet.viz.render.convergence` of the run: a list per measure, one value a step
    measures: dict[str, list[float]]
    model: str
    seconds: float
    own_lambda: float  # the model's own inverse temperature
    lambda_scale: float = 1.0  # the run's lambda = own_lambda * lambda_scale
    #: (width, height) of the image as uploaded (the prediction's may be shrunk to the cap)
    source_size: tuple[int, int] | None = None
    #: the chosen pixel, in the prediction image's pixels, or None
    pixel: tuple[int, int] | None = None
    #: parts maps drawn so far, by iteration (without a marker): a scrubber redraws none twice
    parts: dict[int, np.ndarray] = field(default_factory=dict)
    name: str = "image"  # the image's file name, as the person knows it
    digest: str | None = None  # of the uploaded file (file_digest), to know it again
    request: tuple | None = None  # the model and controls asked for (run_request)

    @property
    def inverse_temperature(self) -> float:
        """The lambda the run used."""
        return self.own_lambda * self.lambda_scale

    def to_prediction(self, x: float, y: float) -> tuple[int, int]:
        """Pixel ``(x, y)`` of the uploaded image in the prediction image's pixels."""
        width, height = self.prediction.image.size
        src_w, src_h = self.source_size or (width, height)
        return (
            int(np.clip(int(x * width / src_w), 0, width - 1)),
            int(np.clip(int(y * height / src_h), 0, height - 1)),
        )


def number(value, name: str, low: float, high: float) -> float:
    """``value`` as a float in ``low..high``, else a ``gr.Error`` naming the control."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}.") from None
    if not low <= result <= high:
        raise gr.Error(f"{name} must be in {low:g}..{high:g}, got {result:g}.")
    return result


def image_file(image) -> tuple[str, str]:
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


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes: the same upload sent again is known to be the same image."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _without_path(message: str, path: str, name: str) -> str:
    """``message`` with the server path ``path`` (and its folder) replaced by ``name``."""
    folder = str(Path(path).parent)
    message = message.replace(path, name)
    return message.replace(folder, "<upload>") if folder not in ("", ".", "/") else message


def _segmenter(cache: ModelCache, model: str | None, uploaded: str | None, allowed) -> Segmenter:
    """The segmenter of a dropdown value. Anything the dropdown does not offer is refused: the
    API must not become a way to read arbitrary server paths or URLs."""
    if model in (None, "", BUNDLED):
        key, shown = None, BUNDLED
    elif model not in allowed:
        raise gr.Error(f"Unknown model {model!r}; choose one of: {', '.join(allowed)}.")
    elif model != UPLOADED:
        key, shown = model, model
    elif uploaded:
        key, shown = str(uploaded), Path(str(uploaded)).name
    else:
        raise gr.Error("Upload a .pth checkpoint first (or choose another model).")
    try:
        return cache.get(key, uploaded=model == UPLOADED)
    except CheckpointError as error:
        message = str(error)
    except Exception as error:  # a checkpoint of the wrong kind can fail in many ways
        log.exception("could not load model %s", key)
        message = f"Could not load model {shown!r}: {error}"
    raise gr.Error(_without_path(message, key, shown) if model == UPLOADED else message)


def _predict(segmenter: Segmenter, source, name: str, **options) -> tuple[Prediction, tuple]:
    """``segmenter(source, trace=True, **options)`` and the image's size as it came; a broken
    image or too little memory becomes a ``gr.Error`` naming the image as the person knows it."""
    path = str(source) if isinstance(source, (str, Path)) else name
    try:
        picture = load_image(source)
        return segmenter(picture, trace=True, **options), picture.size
    except ImageLoadError as error:
        message = f"Cannot load image {name}: {error.reason}"
        raise gr.Error(_without_path(message, path, name)) from None
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        log.warning("out of memory segmenting %s: %s", name, error)
        device = "the GPU" if segmenter.device.type == "cuda" else "the CPU"
        raise gr.Error(
            f"Out of memory on {device} segmenting {name} with the input size cap at "
            f"{options['max_size']} pixels: choose a smaller input size cap and run it again."
        ) from None


def run_request(model, uploaded, iterations, max_size, lambda_scale) -> tuple:
    """The model and the controls of a run, checked, as one comparable value."""
    return (
        model or BUNDLED,
        str(uploaded) if model == UPLOADED else None,
        int(number(iterations, "EM iterations", 1, MAX_ITERATIONS)),
        int(number(max_size, "input size cap", MIN_SIZE, MAX_SIZE)),
        number(lambda_scale, LAMBDA_SCALE_NAME, MIN_LAMBDA_SCALE, MAX_LAMBDA_SCALE),
    )


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
    """Segment ``image`` (Gradio's payload, or a PIL image for a second run on the same
    picture) with its EM trace and measure its attention; every mistake a person can fix
    becomes a ``gr.Error``.

    ``lambda_scale`` multiplies the model's own inverse temperature for this run (a what-if;
    at 1 the model runs exactly as it was trained).
    """
    source, name = (image, "image") if isinstance(image, Image.Image) else image_file(image)
    request = run_request(model, uploaded, iterations, max_size, lambda_scale)
    steps, size, scale = request[2:]
    segmenter = _segmenter(cache, model, uploaded, allowed)
    own_lambda = float(segmenter.model.em_unit.inverse_temperature)
    started = time.perf_counter()
    # None at 1x: the model's own unit, untouched (not a multiplication by 1.0).
    lam = None if scale == 1.0 else own_lambda * scale
    prediction, source_size = _predict(
        segmenter, source, name, num_iterations=steps, max_size=size, inverse_temperature=lam
    )
    seconds = time.perf_counter() - started
    log.info("segmented %s in %.2f s", name, seconds)
    trace = prediction.trace
    order = render.base_order(trace.responsibilities[-1][0])
    measures = render.convergence(trace)
    label = model or BUNDLED
    if model == UPLOADED and uploaded:
        label = Path(str(uploaded)).name
    digest = None if isinstance(source, Image.Image) else file_digest(source)
    return Session(
        prediction,
        order,
        measures,
        label,
        seconds,
        own_lambda,
        scale,
        source_size,
        name=name,
        digest=digest,
        request=request,
    )
