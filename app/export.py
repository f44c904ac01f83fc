"""A run taken home: its raw trace (``.npz``, read back with :func:`emanet.load_trace`) and its
pictures as a set of PNG files in one ``.zip``."""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from emanet.io.atomic import atomic_write
from emanet.io.trace import save_trace

from . import views
from .png import encode_png
from .session import Session


def _stem(session: Session) -> str:
    """A file-name-safe stem from the image's name (``image`` if nothing is left)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(session.name).stem).strip("._")
    return stem[:60] or "image"


def trace_file(session: Session, folder: Path) -> Path:
    """The run's trace as ``<image>-trace.npz`` in a fresh file under ``folder``."""
    p = session.prediction
    path = _fresh(folder) / f"{_stem(session)}-trace.npz"
    return save_trace(
        path, p.trace, p.labels, p.image, p.classes, session.model, session.inverse_temperature
    )


def figures(session: Session, opacity: float) -> dict[str, np.ndarray]:
    """Every picture of the run, by file name: the segmentation, the parts map at each
    iteration, the grid and the first base across iterations, the bases in feature space and
    the bases against the classes."""
    steps = session.prediction.trace.num_iterations
    pictures = {"segmentation.png": views.overlay(session, 0.5)}
    for t in range(1, steps + 1):
        pictures[f"parts-t{t}.png"] = views.parts(session, t, opacity)
    pictures[f"bases-t{steps}.png"] = views.grid(session, steps, opacity)
    first = int(session.order[0])
    pictures[f"base-{first}-over-iterations.png"] = views.single_base(session, first, opacity)
    pictures["feature-space.png"] = views.projection(session)
    pictures["bases-classes.png"] = views.base_class_heatmap(session)
    return pictures


def figure_set(session: Session, folder: Path, opacity: float) -> Path:
    """:func:`figures` as PNG files in ``<image>-figures.zip`` under ``folder``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, picture in figures(session, opacity).items():
            archive.writestr(name, encode_png(picture, compress_level=6))
    path = _fresh(folder) / f"{_stem(session)}-figures.zip"
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _fresh(folder: Path) -> Path:
    """A new sub-folder of ``folder``: two sessions' downloads never share a file."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=folder))
