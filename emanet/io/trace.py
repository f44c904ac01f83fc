"""One run's EM trace as a file: :func:`save_trace` writes an ``.npz``, :func:`load_trace` reads
it back (``numpy.load`` alone reads it too: plain arrays, no pickles).

The file holds, for one image and ``T`` iterations of a unit with ``K`` bases and ``C``
channels on an ``h x w`` feature map:

* ``responsibilities`` ``(T, K, h, w)`` float32: the E-step's soft assignment at ``t = 1..T``;
* ``bases`` ``(T, C, K)`` float32: the M-step's unit-norm bases at ``t = 1..T``;
* ``initial_bases`` ``(C, K)`` float32: the bases the iterations started from;
* ``features`` ``(C, h, w)`` float32: the pixels as the E-step compared them with the bases;
* ``labels`` ``(H, W)`` int16: the predicted class of every pixel of the image;
* ``image`` ``(H, W, 3)`` uint8: the image that was segmented;
* ``classes`` ``(num_classes,)`` str: the class names, in label order;
* ``model`` (str), ``num_iterations`` (``T``), ``inverse_temperature`` (the run's lambda).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emanet.models.ema import EMTrace
from emanet.runtime.errors import UserError

from .atomic import atomic_write

__all__ = ["TraceFile", "TraceFileError", "load_trace", "save_trace"]

_ARRAYS = ("responsibilities", "bases", "initial_bases", "features", "labels", "image")


class TraceFileError(UserError, ValueError):
    """A file that is not a trace written by :func:`save_trace`."""


@dataclass(frozen=True)
class TraceFile:
    """What :func:`load_trace` reads: the trace, and the run it came from."""

    trace: EMTrace
    labels: np.ndarray
    image: np.ndarray
    classes: list[str]
    model: str
    inverse_temperature: float

    @property
    def num_iterations(self) -> int:
        return self.trace.num_iterations


def _array(tensor: torch.Tensor | None, sample: int) -> np.ndarray:
    if tensor is None:
        raise ValueError("the trace is incomplete: run the model with trace=True")
    return tensor[sample].detach().float().cpu().numpy()


def save_trace(
    path: str | os.PathLike,
    trace: EMTrace,
    labels: np.ndarray,
    image,
    classes: Sequence[str],
    model: str,
    inverse_temperature: float,
    sample: int = 0,
) -> Path:
    """Write image ``sample`` of ``trace`` and its run to ``path`` (``.npz``, atomically).

    ``labels`` ``(H, W)`` and ``image`` ``(H, W, 3)`` (array or PIL image) are the image's.
    """
    if trace.num_iterations == 0:
        raise ValueError("the trace is empty: run the model with trace=True")
    arrays = {
        "responsibilities": np.stack([_array(r, sample) for r in trace.responsibilities]),
        "bases": np.stack([_array(b, sample) for b in trace.bases]),
        "initial_bases": _array(trace.initial_bases, sample),
        "features": _array(trace.features, sample),
        "labels": np.asarray(labels).astype(np.int16),
        "image": np.asarray(image, dtype=np.uint8)[..., :3],
        "classes": np.asarray(list(classes), dtype=str),
        "model": np.asarray(str(model)),
        "num_iterations": np.asarray(trace.num_iterations, dtype=np.int64),
        "inverse_temperature": np.asarray(float(inverse_temperature)),
    }
    return atomic_write(path, lambda tmp: _savez(tmp, arrays))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # A file object: given a name, numpy would add ".npz" to the temporary file's.
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def load_trace(path: str | os.PathLike) -> TraceFile:
    """Read a file written by :func:`save_trace` (no pickles are loaded)."""
    name = Path(path).name
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise TraceFileError(f"{name}: no such file") from None
    except (OSError, ValueError) as error:
        raise TraceFileError(f"{name} is not an .npz trace file ({error})") from None
    missing = [key for key in (*_ARRAYS, "classes", "model") if key not in arrays]
    if missing:
        raise TraceFileError(f"{name} is not an emanet trace: no {', '.join(missing)}")
    steps = len(arrays["responsibilities"])
    trace = EMTrace(
        responsibilities=[torch.from_numpy(r[None]) for r in arrays["responsibilities"]],
        bases=[torch.from_numpy(b[None]) for b in arrays["bases"]],
        initial_bases=torch.from_numpy(arrays["initial_bases"][None]),
        features=torch.from_numpy(arrays["features"][None]),
    )
    if int(arrays.get("num_iterations", steps)) != steps or len(arrays["bases"]) != steps:
        raise TraceFileError(f"{name}: its iterations do not agree")
    return TraceFile(
        trace=trace,
        labels=arrays["labels"].astype(np.int64),
        image=arrays["image"],
        classes=[str(c) for c in arrays["classes"]],
        model=str(arrays["model"]),
        inverse_temperature=float(arrays.get("inverse_temperature", np.nan)),
    )
