"""What runs a model's forward pass: PyTorch (``"torch"``, any device, autocast precisions) or
onnxruntime (``"onnxruntime"``, the CPU: the model exported to ONNX once and cached, in float32
or statically quantised to int8). One check of a backend, device and precision together, and the
command-line options every command that runs a model shares (``--backend``, ``--calibration``).
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from .errors import UserError
from .precision import PRECISIONS

__all__ = [
    "ALL_PRECISIONS",
    "BACKENDS",
    "BACKEND_PRECISIONS",
    "BackendError",
    "DEFAULT_BACKEND",
    "MissingExtraError",
    "add_backend_arguments",
    "check_backend",
    "import_onnxruntime",
]

BACKENDS = ("torch", "onnxruntime")
#: PyTorch: the reference numerics, every device, ``torch.compile``.
DEFAULT_BACKEND = "torch"
#: The precisions each backend runs: autocast on PyTorch; float32 and static int8 (weights per
#: channel, activations per tensor, calibrated on images of the model's domain) on onnxruntime.
BACKEND_PRECISIONS = {"torch": tuple(PRECISIONS), "onnxruntime": ("fp32", "int8")}
ALL_PRECISIONS = tuple(dict.fromkeys(p for ps in BACKEND_PRECISIONS.values() for p in ps))


class BackendError(UserError, ValueError):
    """A backend that cannot run what was asked of it; the message says why."""


class MissingExtraError(UserError, ImportError):
    """A package of an optional extra is not installed; the message names the extra."""


def check_backend(backend: str, device: torch.device, precision: str, compile: bool = False) -> str:
    """Return ``backend`` if it can run ``precision`` on ``device`` (and ``compile``), else raise
    :class:`BackendError` saying why (the device and the autocast precisions themselves are
    checked by :func:`emanet.runtime.precision.check_precision`)."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    allowed = BACKEND_PRECISIONS[backend]
    if precision not in allowed:
        others = [b for b, ps in BACKEND_PRECISIONS.items() if precision in ps]
        hint = f"; {precision} runs on the {others[0]} backend" if others else ""
        raise BackendError(
            f"unknown precision {precision!r} for the {backend} backend (it runs "
            f"{', '.join(allowed)}){hint}"
        )
    if backend == "onnxruntime" and device.type != "cpu":
        raise BackendError(
            f"the onnxruntime backend runs on the CPU, not {device}: use --device cpu, or the "
            "torch backend on the GPU"
        )
    if backend == "onnxruntime" and compile:
        raise BackendError("--compile is the torch backend's; onnxruntime optimises its own graph")
    return backend


def import_onnxruntime():
    """The ``onnxruntime`` module; :class:`MissingExtraError` naming the extra that installs it
    (with the exporter's packages, which the backend needs to write its file)."""
    missing = [
        name
        for name in ("onnxruntime", "onnx", "onnxscript")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise MissingExtraError(
            f"the onnxruntime backend needs {', '.join(missing)} (export and runtime): "
            "pip install 'emanet[export]'"
        )
    return importlib.import_module("onnxruntime")


def add_backend_arguments(
    parser, default: str | None = DEFAULT_BACKEND, default_text: str = "torch"
) -> None:
    """``--backend`` and ``--calibration``, beside :func:`~emanet.runtime.device.
    add_runtime_arguments`' ``--precision`` (which offers ``int8`` for onnxruntime).
    ``default`` / ``default_text``: the backend when none is given, and how the help says it
    (a command may choose its own, e.g. by device)."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=default,
        help="what runs the network: torch (any device) or onnxruntime (CPU; the model is "
        f"exported to ONNX on first use and cached; 'export' extra); default: {default_text}",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help="a folder of images of the model's domain to calibrate --precision int8 on (the "
        "first 16 by name; default for the bundled model: toy-city scenes; needed for any other)",
    )
