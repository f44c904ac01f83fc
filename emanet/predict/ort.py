"""The onnxruntime backend of :class:`~emanet.predict.Segmenter`: the network exported once to
ONNX (dynamic batch, height and width; the EM trace as optional outputs), cached on disk, and
run by onnxruntime on the CPU.

:class:`OnnxRuntimeNet` is an :class:`~emanet.models.segmentor.EMANet` whose forward pass is an
onnxruntime session: its ``inference`` (whole, slide -- the windows go through the same session
-- and multi-scale + flip) is the segmentor's own, so both backends share one test pipeline.

The cache (:func:`cache_dir`: ``$EMANET_CACHE``, else ``emanet/`` beside torch.hub's cache, e.g.
``~/.cache/torch/emanet``) holds one file per model and setting, under ``onnx/``, named
``{preset}-T{T}-lambda{lambda}-{precision}-{key}.onnx``; the key hashes the weights' bytes, the
preset, ``T``, ``lambda``, the precision and, for int8, the calibration images and test scale.
A file is exported the first time it is needed (the log says so), written atomically, and
reused by every later process; a changed checkpoint has another key. ``T`` and ``lambda`` are
fixed in a graph, so each new pair a caller asks for is one more export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from emanet.io.atomic import atomic_write
from emanet.models.ema import EMOptions, EMTrace
from emanet.models.segmentor import EMANet
from emanet.runtime.backends import import_onnxruntime

from .graph import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    exportable_copy,
    onnx_program,
    trace_output_names,
)
from .int8 import Calibration, CalibrationError, quantize_int8

__all__ = ["CACHE_ENV", "OnnxRuntimeNet", "cache_dir", "open_session", "weights_digest"]

log = logging.getLogger(__name__)

#: The environment variable that moves the cache.
CACHE_ENV = "EMANET_CACHE"
# Bumped when the cached graphs change meaning (outputs, names), so old files are not reused.
_CACHE_FORMAT = 1
# Sessions kept open per segmenter (one per T and lambda asked for).
_OPEN_SESSIONS = 4
# The exporter's example input: any size works (the axes are dynamic); small is quick.
_EXAMPLE_SIZE = (64, 96)


def cache_dir() -> Path:
    """``$EMANET_CACHE``, else ``emanet/`` beside torch.hub's cache folder."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(torch.hub.get_dir()).parent / "emanet"


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of ``model``'s state dict: every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{values.dtype}:{tuple(values.shape)};".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def open_session(path: str | os.PathLike[str], threads: int | None = None):
    """An onnxruntime CPU session of ``path`` on ``threads`` cores (default: PyTorch's)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: a run is followed by PyTorch's own work (the
    # labels, the explorer's maps) and often by another session's run, and spinning threads
    # would take the cores those need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@contextmanager
def _quiet_exporter():
    """The exporter's passes log every rewrite at INFO; a backend's export says one line."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class OnnxRuntimeNet(EMANet):
    """``model``'s inference with its forward pass run by onnxruntime (see the module
    docstring): ``(B, 3, H, W) -> (B, classes, H, W)`` logits, any size.

    Args:
        model: the network; its weights as they are at the first run are exported.
        precision: ``"fp32"`` or ``"int8"`` (static quantisation, see :mod:`emanet.predict.int8`).
        calibration: the images int8 is calibrated on (needed for int8).
        preprocess: image -> ``(1, 3, h, w)`` input, the segmenter's own (for calibration).
        test_scale: the segmenter's test scale (part of an int8 file's key).
        threads: onnxruntime's threads (default: PyTorch's).
    """

    def __init__(
        self,
        model: EMANet,
        precision: str = "fp32",
        calibration: Calibration | None = None,
        preprocess: Callable | None = None,
        test_scale: tuple[int, int] | None = None,
        threads: int | None = None,
    ) -> None:
        torch.nn.Module.__init__(self)  # the layers live in the ONNX file, not here
        if precision == "int8" and (calibration is None or preprocess is None):
            raise CalibrationError(
                f"int8 needs calibration images from the domain of {model.preset.name}: give a "
                "folder of them (--calibration DIR; Segmenter(..., calibration=DIR))"
            )
        self.preset, self.align_corners = model.preset, model.align_corners
        self.model, self.precision, self.calibration = model, precision, calibration
        self._preprocess, self._test_scale = preprocess, test_scale
        self.threads = threads
        self._weights: str | None = None
        self._sessions: OrderedDict[tuple[int, float], object] = OrderedDict()
        self.eval()

    @property
    def em_unit(self):
        return self.model.em_unit

    def forward(self, images: torch.Tensor, em: EMOptions | None = None) -> torch.Tensor:
        """Logits of ``images`` ``(B, 3, H, W)``; ``em.trace`` is filled from the graph's trace
        outputs (``em.num_iterations`` and ``em.inverse_temperature`` choose the graph)."""
        em = em or EMOptions()
        steps, lam = self._setting(em.num_iterations, em.inverse_temperature)
        session = self.session(steps, lam)
        names = [OUTPUT_NAME] + (trace_output_names(steps) if em.trace is not None else [])
        # numpy's copy, not torch's: a torch copy this size wakes PyTorch's OpenMP workers,
        # which keep spinning on the cores onnxruntime's threads are about to use.
        pixels = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        outputs = [torch.from_numpy(out) for out in session.run(names, {INPUT_NAME: pixels})]
        if em.trace is not None:
            _fill_trace(em.trace, outputs[1:], steps)
        return outputs[0].to(images.device)

    def _setting(self, num_iterations: int | None, lam: float | None) -> tuple[int, float]:
        unit = self.model.em_unit
        steps = unit.num_iterations if num_iterations is None else int(num_iterations)
        if steps < 1:
            raise ValueError(f"num_iterations must be >= 1, got {steps}")
        lam = float(unit.inverse_temperature if lam is None else lam)
        if not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"inverse_temperature must be a positive number, got {lam!r}")
        return steps, lam

    def session(self, num_iterations: int, inverse_temperature: float):
        """The onnxruntime session of the graph with ``T`` and ``lambda`` (exported into the
        cache on first use; the last few sessions stay open)."""
        key = (num_iterations, inverse_temperature)
        if key in self._sessions:
            self._sessions.move_to_end(key)
        else:
            self._sessions[key] = open_session(self.cached_file(*key), self.threads)
            while len(self._sessions) > _OPEN_SESSIONS:
                self._sessions.popitem(last=False)
        return self._sessions[key]

    def cached_file(
        self, num_iterations: int, inverse_temperature: float, precision: str | None = None
    ) -> Path:
        """The cache's file for ``T``, ``lambda`` and ``precision`` (default: this net's),
        exported (and quantised) first if it is not there yet."""
        precision = precision or self.precision
        if self._weights is None:
            self._weights = weights_digest(self.model)
        key = {
            "format": _CACHE_FORMAT,
            "opset": DEFAULT_OPSET,
            "weights": self._weights,
            "preset": dataclasses.asdict(self.preset),
            "T": num_iterations,
            "lambda": repr(inverse_temperature),
            "precision": precision,
        }
        if precision == "int8":
            key.update(calibration=self.calibration.key, test_scale=list(self._test_scale or ()))
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        name = f"{self.preset.name}-T{num_iterations}-lambda{inverse_temperature:g}"
        path = cache_dir() / "onnx" / f"{name}-{precision}-{digest}.onnx"
        if path.is_file():
            return path
        if precision == "int8":
            source = self.cached_file(num_iterations, inverse_temperature, "fp32")
            return atomic_write(
                path, lambda tmp: quantize_int8(source, tmp, self.calibration, self._preprocess)
            )
        return self._export(path, num_iterations, inverse_temperature)

    def _export(self, path: Path, num_iterations: int, inverse_temperature: float) -> Path:
        log.info(
            "exporting %s (T=%d, lambda=%g) to ONNX for the onnxruntime backend, once: %s",
            self.preset.name, num_iterations, inverse_temperature, path,
        )  # fmt: skip
        net = exportable_copy(self.model, num_iterations, inverse_temperature)
        with _quiet_exporter():
            example = torch.zeros(1, 3, *_EXAMPLE_SIZE)
            program = onnx_program(net, example, dynamic=True, trace=True)
        return atomic_write(path, lambda tmp: program.save(tmp, external_data=False))


def _fill_trace(trace: EMTrace, outputs: list[torch.Tensor], num_iterations: int) -> None:
    """``trace`` from the graph's trace outputs (in :func:`trace_output_names`' order)."""
    trace.initial_bases, trace.features = outputs[0], outputs[1]
    trace.responsibilities = list(outputs[2 : 2 + num_iterations])
    trace.bases = list(outputs[2 + num_iterations : 2 + 2 * num_iterations])
