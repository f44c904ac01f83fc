"""What the app does when asked: load models (once), segment, and render only what is shown.

No Gradio layout here and no model logic: models come from :mod:`emanet.predict`, pictures
from :mod:`emanet.viz`. Errors a person can fix (a broken image, an offline download, a
checkpoint that is not one, a control out of range) become ``gr.Error`` with the message.
"""

from __future__ import annotations

import html
import logging
import shutil
import struct
import tempfile
import threading
import time
import uuid
import weakref
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from emanet.checkpoint import MODEL_ZOO, CheckpointError
from emanet.imageio import ImageLoadError
from emanet.predict import BUNDLED_CHECKPOINT, Prediction, Segmenter
from emanet.presets import SMALL_PRESET
from emanet.segmentor import build_model
from emanet.viz import (
    attention_grid,
    attention_grid_slot,
    base_across_iterations,
    base_class_image,
    base_class_matrix,
    base_order,
    convergence,
)

log = logging.getLogger(__name__)

BUNDLED = f"bundled: {SMALL_PRESET.name} (synthetic toy city)"
UPLOADED = "uploaded .pth file"
ZOO = list(MODEL_ZOO)
MAX_ITERATIONS = 10
MIN_SIZE, MAX_SIZE = 32, 4096
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


_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(tag))
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """A lossless 8-bit PNG of a ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (cast to uint8).

    numpy and zlib rather than PIL: PIL's PNG encoder takes ~2x as long at level 1 (~20x at
    level 0) and takes the GIL back after every 64 KiB it writes, so it crawls next to a busy
    thread; ``zlib.compress`` holds the GIL for none of its work. Rows are filtered with PNG's
    "Up" filter (each row minus the one above) when compressed, stored as they are at level 0.
    """
    pixels = np.ascontiguousarray(array, dtype=np.uint8)
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if height == 0 or width == 0 or pixels.ndim > 3 or channels not in _PNG_COLOUR_TYPES:
        raise ValueError(f"cannot write an array of shape {pixels.shape} as PNG")
    rows = pixels.reshape(height, width * channels)
    scanlines = np.empty((height, width * channels + 1), dtype=np.uint8)
    if compress_level == 0:
        scanlines[:, 0] = 0  # None
        scanlines[:, 1:] = rows
    else:
        scanlines[:, 0] = 2  # Up (modulo 256)
        scanlines[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(scanlines, compress_level)),
            _png_chunk(b"IEND", b""),
        )
    )


class PngWriter:
    """Writes uint8 images (see :func:`encode_png`) as PNG files for ``gr.Image`` outputs;
    returns their paths. Thread-safe.

    Given an array, Gradio encodes it itself at PNG's default level 6: ~300 ms for a
    1024-pixel overlay on 2 cores, a visible share of a request. Level 1 (the default here)
    takes ~13 ms for it, ~15% larger and just as lossless; level 0 stores the pixels (~1 ms,
    1.7-2.5x the bytes of level 1). Gradio copies a returned file into its own
    cache before it answers, so only the ``keep`` most recent files are kept here; the folder
    goes with this object (or at exit).
    """

    def __init__(
        self, folder: str | Path | None = None, keep: int = 64, compress_level: int = 1
    ) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="emanet-app-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.compress_level = compress_level
        self._recent: deque[Path] = deque()
        self._keep = keep
        self._lock = threading.Lock()
        if folder is None:
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)

    def __call__(self, array: np.ndarray, name: str, compress_level: int | None = None) -> str:
        level = self.compress_level if compress_level is None else compress_level
        data = encode_png(array, level)
        path = self.folder / f"{name}-{uuid.uuid4().hex[:12]}.png"
        path.write_bytes(data)
        with self._lock:
            self._recent.append(path)
            while len(self._recent) > self._keep:
                self._recent.popleft().unlink(missing_ok=True)
        return str(path)


@dataclass
class Session:
    """The last prediction of one browser session (``gr.State``): the sliders and the base
    selector re-render from it without running the model again."""

    prediction: Prediction
    order: np.ndarray  # bases by share of the image at the last iteration, largest first
    model: str
    seconds: float


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


def _image_path(image) -> str:
    """The uploaded file's path, from a raw ``gr.Image`` payload (the event skips Gradio's
    preprocessing so that :func:`emanet.imageio.load_image` decodes every file itself)."""
    if image is None:
        raise gr.Error("Upload an image first (or pick an example).")
    if isinstance(image, dict):
        image = image.get("path")
    elif hasattr(image, "path"):
        image = image.path
    if not image:
        raise gr.Error("The image did not arrive as a file; upload it again.")
    return str(image)


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
) -> Session:
    """Segment ``image`` with its EM trace; every user mistake becomes a ``gr.Error``."""
    path = _image_path(image)
    steps = int(_number(iterations, "EM iterations", 1, MAX_ITERATIONS))
    size = int(_number(max_size, "input size cap", MIN_SIZE, MAX_SIZE))
    key = _model_key(model, uploaded, allowed)
    try:
        segmenter = cache.get(key, uploaded=model == UPLOADED)
    except CheckpointError as error:
        raise gr.Error(str(error)) from None
    except Exception as error:  # a checkpoint of the wrong kind can fail in many ways
        log.exception("could not load model %s", key)
        raise gr.Error(f"Could not load model {model!r}: {error}") from None
    started = time.perf_counter()
    try:
        prediction = segmenter(path, trace=True, num_iterations=steps, max_size=size)
    except ImageLoadError as error:
        # The message names Gradio's temporary copy; the person knows the file by its name.
        raise gr.Error(str(error)) from None
    seconds = time.perf_counter() - started
    log.info("segmented %s in %.2f s", Path(path).name, seconds)
    order = base_order(prediction.trace.responsibilities[-1][0])
    return Session(prediction, order, model or BUNDLED, seconds)


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
    return attention_grid(trace, t, order=session.order, cols=GRID_COLS, tile=GRID_TILE)


def base_at(session: Session, x: int, y: int) -> int | None:
    """The base whose tile holds pixel ``(x, y)`` of :func:`grid`'s image, or ``None``."""
    slot = attention_grid_slot(session.prediction.trace, x, y, cols=GRID_COLS, tile=GRID_TILE)
    if slot is None or slot >= len(session.order):
        return None
    return int(session.order[slot])


def single_base(session: Session, base) -> np.ndarray:
    """Base ``#base`` (clipped to 0..K-1) over the image at every iteration, side by side."""
    base = int(np.clip(int(base), 0, len(session.order) - 1))
    return base_across_iterations(
        session.prediction.trace, base, session.prediction.image, max_width=1400
    )


def convergence_table(session: Session) -> pd.DataFrame:
    """:func:`emanet.viz.convergence` in long form for ``gr.LinePlot`` (one line per measure)."""
    stats = convergence(session.prediction.trace)
    measures = {
        "base_shift": "bases moved: mean 1 - cos(mu_t, mu_t-1)",
        "entropy": "responsibility entropy (nats)",
    }
    rows = [
        {"iteration": t, "value": value, "measure": label}
        for key, label in measures.items()
        for t, value in enumerate(stats[key], start=1)
    ]
    return pd.DataFrame(rows, columns=["iteration", "value", "measure"])


def base_class_heatmap(session: Session, max_bases: int = 32) -> np.ndarray:
    """Bases (rows, largest share first) x classes present (columns) as a uint8 heat map."""
    p = session.prediction
    matrix = base_class_matrix(p.trace, p.labels, num_classes=len(p.classes))
    return base_class_image(matrix, p.classes, session.order, max_bases=max_bases)


def summary(session: Session, random_weights: bool = False) -> str:
    """One line about the run (sizes, iterations, model time)."""
    p = session.prediction
    text = (
        f"{p.image.width}×{p.image.height} image, model input {p.input_size[1]}×"
        f"{p.input_size[0]}, {p.trace.num_iterations} EM iterations, "
        f"{len(session.order)} bases — model time {session.seconds * 1000:.0f} ms "
        f"({session.model})"
    )
    if random_weights:
        text += " — **random weights: the segmentation is meaningless**"
    return text


def skimage_examples(folder: Path) -> list[tuple[str, str]]:
    """Real photographs that ship inside scikit-image, saved as PNG: ``[(path, caption)]``.

    They are read from the installed package (no download) once and kept in ``folder``.
    """
    try:
        from PIL import Image
        from skimage import data
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        path = folder / f"skimage_{name}.png"
        try:
            if not path.exists():
                tmp = path.with_suffix(".tmp.png")
                Image.fromarray(getattr(data, name)()).save(tmp)
                tmp.replace(path)  # atomic: two app processes may share the folder
        except Exception as error:  # a missing sample must not stop the app
            log.warning("scikit-image sample %s unavailable: %s", name, error)
            continue
        out.append((str(path), f"photo: scikit-image data module, {name}"))
    return out


def toycity_examples(root: str | None, count: int = 3) -> list[tuple[str, str]]:
    """A few validation images of a synthetic toy city in Cityscapes layout, if there is one."""
    if not root or not Path(root).is_dir():
        return []
    images = sorted(Path(root).glob("leftImg8bit/val/*/*_leftImg8bit.png"))[:count]
    return [(str(p), f"synthetic toy city (val): {p.name}") for p in images]
