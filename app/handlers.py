"""What the app does when asked: load models (once), segment, and render only what is shown.

No Gradio layout here and no model logic: models come from :mod:`emanet.predict`, pictures
from :mod:`emanet.viz`. Errors a person can fix (a broken image, an offline download, a
checkpoint that is not one) become ``gr.Error`` with the library's message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from emanet.checkpoint import MODEL_ZOO, CheckpointError
from emanet.imageio import ImageLoadError
from emanet.predict import BUNDLED_CHECKPOINT, Prediction, Segmenter
from emanet.viz import (
    attention_grid,
    base_across_iterations,
    base_class_matrix,
    base_order,
    convergence,
    legend_image,
)

log = logging.getLogger(__name__)

BUNDLED = "bundled: emanet_r18-d8_toycity (synthetic toy city)"
UPLOADED = "uploaded .pth file"
MODEL_CHOICES = [BUNDLED, *MODEL_ZOO, UPLOADED]


class ModelCache:
    """Segmenters by name, each loaded once; loading is serialised, inference is not."""

    def __init__(self, factory: Callable[[str | None], Segmenter] | None = None) -> None:
        self._factory = factory or _load_segmenter
        self._models: dict[str, Segmenter] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None) -> Segmenter:
        key = name or BUNDLED
        with self._lock:
            if key not in self._models:
                started = time.perf_counter()
                self._models[key] = self._factory(None if key == BUNDLED else key)
                log.info("loaded %s in %.1f s", key, time.perf_counter() - started)
            return self._models[key]


def _load_segmenter(name: str | None) -> Segmenter:
    if name is None and not BUNDLED_CHECKPOINT.is_file():
        raise CheckpointError(f"the bundled model {BUNDLED_CHECKPOINT} is missing")
    return Segmenter.from_pretrained(name)


@dataclass
class Session:
    """The last prediction of a browser session, so sliders re-render without re-running."""

    prediction: Prediction
    order: np.ndarray
    model: str
    seconds: float


def _model_key(model: str | None, uploaded) -> str | None:
    if model == UPLOADED:
        if not uploaded:
            raise gr.Error("choose a .pth file to upload first")
        return str(uploaded if isinstance(uploaded, str) else uploaded.name)
    return None if model in (None, "", BUNDLED) else model


def run_model(cache: ModelCache, image, model, uploaded, iterations, max_size) -> Session:
    """Segment ``image`` (a file path) with EM trace; raise ``gr.Error`` on bad input."""
    if image is None:
        raise gr.Error("upload an image first")
    try:
        segmenter = cache.get(_model_key(model, uploaded))
        started = time.perf_counter()
        prediction = segmenter(
            image, trace=True, num_iterations=int(iterations), max_size=int(max_size)
        )
    except (ImageLoadError, CheckpointError) as error:
        raise gr.Error(str(error)) from None
    seconds = time.perf_counter() - started
    order = base_order(prediction.trace.responsibilities[-1][0].numpy())
    return Session(prediction, order, str(model), seconds)


def class_table(prediction: Prediction) -> pd.DataFrame:
    rows = [
        {"class": name, "area (%)": round(share * 100.0, 2)}
        for name, share in prediction.class_areas().items()
    ]
    return pd.DataFrame(rows, columns=["class", "area (%)"])


def legend(prediction: Prediction) -> np.ndarray:
    present = np.unique(prediction.labels)
    return legend_image(prediction.classes, prediction.palette, present=present)


def grid(session: Session, iteration: int) -> np.ndarray:
    trace = session.prediction.trace
    t = int(np.clip(iteration, 1, trace.num_iterations))
    return attention_grid(trace, iteration=t, order=session.order, tile=72)


def single_base(session: Session, rank: int) -> np.ndarray:
    """The base at position ``rank`` (0 = largest share) over the image at every iteration."""
    rank = int(np.clip(rank, 0, len(session.order) - 1))
    base = int(session.order[rank])
    return base_across_iterations(
        session.prediction.trace, base, session.prediction.image, max_width=1400
    )


def convergence_table(session: Session) -> pd.DataFrame:
    stats = convergence(session.prediction.trace)
    steps = range(1, len(stats["entropy"]) + 1)
    rows = [
        {"iteration": t, "value": v, "measure": "bases moved (1 - cos)"}
        for t, v in zip(steps, stats["base_shift"], strict=True)
    ] + [
        {"iteration": t, "value": v, "measure": "responsibility entropy (nats)"}
        for t, v in zip(steps, stats["entropy"], strict=True)
    ]
    return pd.DataFrame(rows)


def base_class_heatmap(session: Session, max_bases: int = 32) -> np.ndarray:
    """Bases (rows, largest share first) x classes (columns) as a labelled uint8 heat map."""
    from PIL import Image, ImageDraw

    prediction = session.prediction
    matrix = base_class_matrix(prediction.trace, prediction.labels, len(prediction.classes))
    order = session.order[:max_bases]
    present = [c for c in range(len(prediction.classes)) if matrix[order, c].max() > 0.01]
    present = present or [0]
    cell, left, top = 16, 40, 96
    values = matrix[np.ix_(order, present)]
    heat = (np.asarray(_magma(values)) * 255).astype(np.uint8)
    heat = heat.repeat(cell, 0).repeat(cell, 1)
    canvas = Image.new("RGB", (left + heat.shape[1] + 4, top + heat.shape[0] + 4), "white")
    canvas.paste(Image.fromarray(heat), (left, top))
    draw = ImageDraw.Draw(canvas)
    for row, base in enumerate(order):
        draw.text((2, top + row * cell + 2), f"#{base}", fill=(0, 0, 0))
    for col, c in enumerate(present):
        label = Image.new("RGB", (top - 4, cell), "white")
        ImageDraw.Draw(label).text((2, 2), prediction.classes[c], fill=(0, 0, 0))
        canvas.paste(label.rotate(90, expand=True), (left + col * cell, 2))
    return np.asarray(canvas)


def _magma(values: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["magma"](np.clip(values, 0, 1))[..., :3]


def overlay(session: Session, opacity: float) -> np.ndarray:
    return session.prediction.overlay(float(opacity))


def summary(session: Session) -> str:
    p = session.prediction
    return (
        f"{p.image.width}×{p.image.height} image, model input {p.input_size[1]}×"
        f"{p.input_size[0]}, {p.trace.num_iterations} EM iterations, "
        f"{len(session.order)} bases — model time {session.seconds * 1000:.0f} ms"
    )


def skimage_examples(folder: Path) -> list[tuple[str, str]]:
    """Real photographs that ship inside scikit-image, saved as PNG: ``[(path, caption)]``."""
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
                Image.fromarray(getattr(data, name)()).save(path)
        except Exception as error:  # a missing sample must not stop the app
            log.warning("scikit-image sample %s unavailable: %s", name, error)
            continue
        out.append((str(path), f"photo: scikit-image data module, {name}"))
    return out


def toycity_examples(root: str | None, count: int = 3) -> list[tuple[str, str]]:
    if not root or not Path(root).is_dir():
        return []
    images = sorted(Path(root).glob("leftImg8bit/val/*/*_leftImg8bit.png"))[:count]
    return [(str(p), f"synthetic toy city (val): {p.name}") for p in images]
