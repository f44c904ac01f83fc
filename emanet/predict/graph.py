"""An :class:`~emanet.models.segmentor.EMANet` as an ONNX graph: one whole-image forward pass,
EM unrolled, and optionally the EM trace as extra outputs.

The graph computes ``logits = model(images)``: input ``images`` ``(B, 3, H, W)`` float32
(normalised, at the test scale), output ``logits`` ``(B, classes, H, W)``. The EM iterations are
a Python loop, which the exporter (``torch.export``, the dynamo-based ``torch.onnx``) unrolls:
``T`` and ``lambda`` are fixed in the graph. With ``dynamic`` the batch, height and width axes
are symbolic. With ``trace`` the graph also returns what an :class:`~emanet.models.ema.EMTrace`
records, in this order (:func:`trace_output_names`): ``initial_bases`` ``(B, C, K)``,
``features`` ``(B, C, h, w)``, ``responsibilities_t`` ``(B, K, h, w)`` and ``bases_t``
``(B, C, K)`` for ``t = 1..T``. Those tensors are computed for the logits anyway; a run that
asks only for ``logits`` costs the same as a graph without them.

:func:`emanet.deploy.onnx.export_onnx` writes this graph for users; the onnxruntime backend
(:mod:`emanet.predict.ort`) writes it with the trace into its cache.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from emanet.models.ema import EMOptions, EMTrace
from emanet.models.segmentor import EMANet

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_SIDE",
    "OUTPUT_NAME",
    "exportable_copy",
    "onnx_program",
    "trace_output_names",
]

#: ONNX opset of the exported files (onnxruntime >= 1.14 runs it).
DEFAULT_OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
#: The backbone downsamples by 8: smaller inputs give a 1x1 (or empty) feature map.
MIN_SIDE = 16


def trace_output_names(num_iterations: int) -> list[str]:
    """The trace outputs of a graph with ``T = num_iterations``, in the graph's order."""
    steps = range(1, num_iterations + 1)
    return [
        "initial_bases",
        "features",
        *(f"responsibilities_{t}" for t in steps),
        *(f"bases_{t}" for t in steps),
    ]


class _WithTrace(nn.Module):
    """``net`` returning its logits and its EM trace's tensors (see the module docstring)."""

    def __init__(self, net: EMANet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        trace = EMTrace()
        logits = self.net(images, EMOptions(trace=trace))
        return (logits, trace.initial_bases, trace.features, *trace.responsibilities, *trace.bases)


def exportable_copy(
    model: EMANet, num_iterations: int, inverse_temperature: float | None = None
) -> EMANet:
    """An eval-mode float32 CPU copy of ``model`` whose EM unit runs ``num_iterations`` (and
    ``inverse_temperature``, default the model's own); ``model`` is left untouched."""
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    net.em_unit.num_iterations = int(num_iterations)
    if inverse_temperature is not None:
        net.em_unit.inverse_temperature = float(inverse_temperature)
    return net


def onnx_program(
    net: EMANet, example: torch.Tensor, *, dynamic: bool, opset: int = DEFAULT_OPSET,
    trace: bool = False,
):  # fmt: skip
    """``torch.onnx.export`` of ``net`` (an :func:`exportable_copy`) on ``example``
    ``(B, 3, H, W)``: the ONNX program (``program.model`` is the graph, ``program.save`` writes
    it)."""
    dynamic_shapes = None
    if dynamic:
        dim = torch.export.Dim
        # The forward's argument is called ``images``.
        dynamic_shapes = {
            "images": {
                0: dim("batch", min=1, max=4096),
                2: dim("height", min=MIN_SIDE, max=16384),
                3: dim("width", min=MIN_SIDE, max=16384),
            }
        }
    outputs = [OUTPUT_NAME]
    if trace:
        outputs += trace_output_names(net.em_unit.num_iterations)
    with torch.no_grad():
        return torch.onnx.export(
            _WithTrace(net).eval() if trace else net,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=outputs,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
