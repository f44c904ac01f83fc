"""Static int8 quantisation of the onnxruntime backend's graph, and the images it is calibrated
on.

``onnxruntime.quantization.quantize_static`` in QDQ format: every convolution's weights are
int8 per output channel, its input activations uint8 per tensor, with ranges (min/max)
observed while the float32 graph runs on calibration images. The EM unit (its matrix products,
softmax and normalisations) stays float32: the responsibilities are a softmax over small
differences, which 8-bit inputs would blur. Calibration images must come from the model's own
domain, preprocessed as the segmenter preprocesses its inputs: the toy city for the bundled
model (:func:`toycity_calibration`), a folder for any other (:func:`folder_calibration`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emanet.data.toycity import render_scene
from emanet.io.images import ImageLoadError, load_image
from emanet.runtime.errors import UserError

from .graph import INPUT_NAME

__all__ = [
    "Calibration",
    "CalibrationError",
    "folder_calibration",
    "quantize_int8",
    "toycity_calibration",
]

log = logging.getLogger(__name__)

#: Toy-city scenes the bundled model is calibrated on (scenes of their own seed: neither the
#: training nor the validation scenes of ``emanet toycity``).
TOYCITY_CALIBRATION_SCENES = 8
_TOYCITY_SEED = 2025


class CalibrationError(UserError, ValueError):
    """No usable calibration images for int8; the message says what to give."""


@dataclass(frozen=True)
class Calibration:
    """Images to calibrate on: ``key`` names them (it is part of the cached file's key) and
    ``images()`` yields them (anything :func:`emanet.io.images.load_image` reads)."""

    key: str
    images: Callable[[], Iterable]


def toycity_calibration(
    count: int = TOYCITY_CALIBRATION_SCENES,
    size: tuple[int, int] = (256, 512),
    seed: int = _TOYCITY_SEED,
) -> Calibration:
    """``count`` toy-city scenes of ``size`` ``(H, W)``, drawn in memory from ``seed``."""

    def scenes() -> Iterator[np.ndarray]:
        for index in range(count):
            yield render_scene(*size, np.random.default_rng([seed, index]))[0]

    return Calibration(f"toycity:{count}x{size[0]}x{size[1]}:seed{seed}", scenes)


def folder_calibration(folder: str | os.PathLike[str], limit: int = 16) -> Calibration:
    """The files under ``folder`` (recursively, in name order, at most ``limit``; files that are
    not images are skipped when read); the key is a hash of their bytes.
    :class:`CalibrationError` when there are none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CalibrationError(f"calibration folder {folder}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = files[:limit]
    if not files:
        raise CalibrationError(f"calibration folder {folder}: no files in it")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return Calibration(f"folder:{len(files)}:{digest.hexdigest()[:16]}", lambda: iter(files))


class _Reader:
    """onnxruntime's ``CalibrationDataReader``: ``{images: (1, 3, h, w)}`` per image."""

    def __init__(self, calibration: Calibration, preprocess: Callable) -> None:
        self._inputs = (preprocess(picture) for picture in _pictures(calibration.images()))
        self._key, self._count = calibration.key, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._inputs, None)
        if x is None:
            if not self._count:
                raise CalibrationError(f"calibration {self._key}: not one image could be read")
            return None
        self._count += 1
        return {INPUT_NAME: x.detach().cpu().float().contiguous().numpy()}


def _pictures(images: Iterable) -> Iterator:
    """The images that load (upright RGB); a file that is not an image is skipped, logged."""
    for image in images:
        try:
            yield load_image(image)
        except ImageLoadError as error:
            log.warning("calibration: skipped %s", error)


def quantize_int8(
    source: Path, target: Path, calibration: Calibration, preprocess: Callable
) -> Path:
    """Write ``source`` (a float32 graph) statically quantised to int8 as ``target``.

    ``preprocess``: image -> ``(1, 3, h, w)`` model input (the segmenter's own).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    reader = type("CalibrationReader", (_Reader, CalibrationDataReader), {})(
        calibration, preprocess
    )
    log.info("quantising %s to int8, calibrated on %s", source.name, calibration.key)
    with _quiet_root_logger():
        quantize_static(
            str(source),
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            calibrate_method=CalibrationMethod.MinMax,
        )
    return target


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantiser advises pre-processing on the root logger at every call; the
    graph is quantised as exported (pre-processing measured no difference in the labels)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
