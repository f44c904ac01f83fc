"""ONNX export of an :class:`~emanet.models.segmentor.EMANet`: one whole-image forward pass, EM
unrolled.

The file computes ``logits = model(images)``:

* input ``images``: ``(B, 3, H, W)`` float32, RGB on the 0-255 scale normalised with the
  ImageNet mean/std (the ``mean``/``std`` metadata), already resized to the test scale;
* output ``logits``: ``(B, num_classes, H, W)`` float32 at the input resolution (argmax over
  dim 1 gives trainIds).

The EM iterations are a Python loop (:mod:`emanet.models.ema`, or its fast form in
:mod:`emanet.fast.em`); the exporter traces it, so the graph holds ``T`` unrolled E/M steps
(``T`` fixed at export; ``num_iterations`` in the metadata). The unit is exported as it is,
through ``torch.export`` (the dynamo-based ``torch.onnx`` exporter), which turns its
``out=``/in-place calls and its autocast guard into plain graph nodes; the TorchScript exporter
cannot translate ``bmm(..., out=)``. With ``dynamic=True`` the
batch, height and width axes are symbolic (``batch``, ``height``, ``width``); otherwise the
file accepts only the exported shape.

Slide inference (the 769x769 presets' test mode) is not a single forward pass: how many windows
there are and where they sit depends on the image size, and overlapping logits are averaged.
It is refused with that explanation; export ``mode="whole"`` (the network on one window) and
slide the windows in the runtime (:func:`emanet.models.segmentor.slide_windows` gives them).

Metadata (``metadata_props``, strings; onnxruntime shows them as
``session.get_modelmeta().custom_metadata_map``): ``preset``, ``preset_config`` (JSON),
``num_iterations``, ``inverse_temperature``, ``centered_cosine``, ``classes``, ``palette``,
``mean``, ``std`` (JSON), ``test_scale``, ``align_corners``, ``input``, ``output``,
``emanet_version``.

The graph is :mod:`emanet.predict.graph`'s; ``Segmenter(backend="onnxruntime")`` runs the same
graph (with the EM trace as extra outputs) from its cache (:mod:`emanet.predict.ort`).

Needs the ``export`` extra (``pip install 'emanet[export]'``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from emanet.data.cityscapes import CLASSES, PALETTE
from emanet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, test_input_size
from emanet.io.atomic import atomic_write
from emanet.models.ema import EMOptions
from emanet.models.presets import ModelPreset
from emanet.models.segmentor import EMANet
from emanet.predict.graph import (
    DEFAULT_OPSET,
    INPUT_NAME,
    MIN_SIDE,
    OUTPUT_NAME,
    exportable_copy,
    onnx_program,
)
from emanet.runtime.errors import UserError

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "default_export_size",
    "export_onnx",
    "onnxruntime_difference",
]

log = logging.getLogger(__name__)


class ExportError(UserError, ValueError):
    """A model, option or environment that cannot be exported; the message says why."""


def default_export_size(preset: ModelPreset) -> tuple[int, int]:
    """``(H, W)`` one forward pass sees at the preset's test setting.

    Whole-mode presets: a Cityscapes frame after the test resize (1024x2048 for the official
    512x1024 presets, 256x512 for the small one). Slide presets (exported in whole mode): one
    window, the crop size (769x769).
    """
    if preset.test_mode == "slide":
        return tuple(preset.crop_size)
    return test_input_size(preset.test_scale)


def _require_exporter() -> None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs {' and '.join(missing)} (torch.onnx's exporter uses them): "
            "pip install 'emanet[export]'"
        )


def _check_mode(model: EMANet, mode: str | None) -> str:
    mode = mode or model.preset.test_mode
    if mode == "slide":
        crop_h, crop_w = model.preset.crop_size
        stride_h, stride_w = model.preset.slide_stride
        raise ExportError(
            f"{model.preset.name} tests in slide mode, which cannot be exported as one graph: "
            f"the number and placement of its {crop_h}x{crop_w} windows (stride "
            f"{stride_h}x{stride_w}) depend on the image size, and overlapping logits are "
            "averaged. Export the network on one window with mode='whole' (CLI: --mode whole; "
            f"default size {crop_h}x{crop_w}) and slide the windows in your runtime "
            "(emanet.models.segmentor.slide_windows lists them)."
        )
    if mode != "whole":
        raise ExportError(f"mode must be 'whole' or 'slide', got {mode!r}")
    return mode


def _package_version() -> str:
    """emanet's installed version, read from the package metadata (``"unknown"`` when emanet
    runs from a folder without being installed)."""
    try:
        return importlib.metadata.version("emanet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _metadata(
    net: EMANet,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    num_iterations: int,
) -> dict[str, str]:
    preset = net.preset
    unit = net.em_unit
    return {
        "preset": preset.name,
        "preset_config": json.dumps(dataclasses.asdict(preset)),
        "num_iterations": str(num_iterations),
        "inverse_temperature": repr(float(unit.inverse_temperature)),
        "centered_cosine": str(bool(unit.centered_cosine)).lower(),
        "classes": json.dumps(list(classes)),
        "palette": json.dumps([list(map(int, c)) for c in palette]),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "test_scale": json.dumps(list(preset.test_scale)),
        "align_corners": str(bool(preset.align_corners)).lower(),
        "input": f"{INPUT_NAME}: (B, 3, H, W) float32, RGB 0-255 minus mean, divided by std",
        "output": f"{OUTPUT_NAME}: (B, {preset.num_classes}, H, W) float32; argmax(1) = trainIds",
        "emanet_version": _package_version(),
    }


def _check_options(
    model: EMANet,
    height: int | None,
    width: int | None,
    batch_size: int,
    num_iterations: int | None,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
) -> tuple[int, int, int]:
    """``(T, height, width)`` of the export, the defaults filled in; :class:`ExportError` for
    what cannot be exported."""
    steps = model.em_unit.num_iterations if num_iterations is None else int(num_iterations)
    if steps < 1:
        raise ExportError(f"num_iterations must be >= 1, got {steps}")
    default_h, default_w = default_export_size(model.preset)
    height, width = height or default_h, width or default_w
    if min(height, width) < MIN_SIDE or batch_size < 1:
        raise ExportError(
            f"export size must be at least {MIN_SIDE}x{MIN_SIDE} with batch >= 1, got "
            f"{batch_size}x{height}x{width}"
        )
    if len(classes) != model.num_classes or len(palette) != len(classes):
        raise ExportError(
            f"{len(classes)} class names and {len(palette)} colours for a model with "
            f"{model.num_classes} classes"
        )
    return steps, height, width


def export_onnx(
    model: EMANet,
    path: str | os.PathLike[str],
    *,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 1,
    dynamic: bool = False,
    num_iterations: int | None = None,
    mode: str | None = None,
    opset: int = DEFAULT_OPSET,
    classes: Sequence[str] = CLASSES,
    palette: Sequence[Sequence[int]] = PALETTE,
) -> Path:
    """Write ``model``'s whole-image forward pass as an ONNX file (atomically).

    Args:
        model: the network (left untouched: an eval-mode float32 CPU copy is exported).
        path: the ``.onnx`` file to write.
        height, width: input size of the example (and, without ``dynamic``, the only size the
            file accepts); default :func:`default_export_size`.
        batch_size: batch of the example (the only batch without ``dynamic``).
        dynamic: symbolic batch, height and width axes.
        num_iterations: EM iterations ``T`` unrolled into the graph (default: the model's).
        mode: ``"whole"``; ``"slide"`` (a slide preset's default) raises :class:`ExportError`.
        opset: ONNX opset version.
        classes, palette: class names and colours recorded in the metadata.

    Returns:
        ``path``.

    Raises:
        ExportError: slide mode, bad sizes or iterations, or the exporter's packages missing.
    """
    _check_mode(model, mode)
    steps, height, width = _check_options(
        model, height, width, batch_size, num_iterations, classes, palette
    )
    _require_exporter()
    net = exportable_copy(model, steps)
    shape = f"{'dynamic, example' if dynamic else 'static'} {batch_size}x{height}x{width}"
    log.info("exporting %s (T=%d, %s) to ONNX opset %d", model.preset.name, steps, shape, opset)
    program = onnx_program(
        net, torch.zeros(batch_size, 3, height, width), dynamic=dynamic, opset=opset
    )
    program.model.metadata_props.update(_metadata(net, classes, palette, steps))
    program.model.doc_string = (
        f"EMANet {model.preset.name}, EM attention with T={steps} unrolled iterations. "
        f"{INPUT_NAME} (B, 3, H, W) normalised float32 -> {OUTPUT_NAME} "
        f"(B, {model.num_classes}, H, W)."
    )
    return atomic_write(path, lambda tmp: program.save(tmp, external_data=False))


def onnxruntime_difference(
    model: EMANet,
    path: str | os.PathLike[str],
    images: torch.Tensor,
    num_iterations: int | None = None,
) -> float:
    """``max |ONNX - PyTorch| / max |PyTorch|`` of the logits on ``images`` ``(B, 3, H, W)``.

    Runs the file with onnxruntime on the CPU and ``model`` (an eval copy, float32, CPU) with
    the same ``num_iterations``.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        raise ExportError("checking an ONNX file needs onnxruntime: pip install 'emanet[export]'")
    import onnxruntime

    net = exportable_copy(model, model.em_unit.num_iterations)
    images = images.detach().to("cpu", torch.float32).contiguous()
    with torch.no_grad():
        reference = net(images, EMOptions(num_iterations))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    difference = (torch.from_numpy(logits) - reference).abs().max()
    return float(difference / reference.abs().max().clamp_min(torch.finfo(torch.float32).tiny))
