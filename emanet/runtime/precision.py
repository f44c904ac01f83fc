"""Numeric precision of a model run: one place that turns ``"fp32" | "bf16" | "fp16"`` into an
autocast context, and that refuses a precision the device cannot run.

Mixed precision here is PyTorch's autocast: convolutions and matmuls run in the lower
precision, reductions, softmax and losses in float32, and the EM unit always iterates in float32
(see :mod:`emanet.models.ema`). Weights stay float32.

On CUDA, bf16 and fp16 runs also let the float32 matmuls left inside autocast -- in practice the
EM unit's -- use TF32 tensor cores (10-bit mantissa, three bits more than bf16): strict float32
matmuls of the unit's skinny shapes ``(N x C) @ (C x K)`` run on the GPU's scalar units and made
the unit a third of the whole bf16 forward pass. The unit splits its operands so that TF32
products keep float32 accuracy (see :mod:`emanet.models.ema`). fp32 runs stay strict float32
everywhere.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "DEFAULT_PRECISION",
    "PRECISIONS",
    "autocast",
    "autocast_off",
    "check_precision",
    "default_precision",
    "tf32_matmuls",
]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Inference runs in float32 unless asked otherwise: the official checkpoints' numerics.
DEFAULT_PRECISION = "fp32"


def default_precision(device: torch.device | str) -> str:
    """bf16 on CUDA (mmseg's recipe trains in fp32; bf16 is the fast path of current GPUs and
    needs no loss scaling), fp32 on every other device."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def check_precision(precision: str, device: torch.device | str) -> str:
    """Return ``precision`` if ``device`` can run it, else raise ``ValueError`` saying why."""
    if precision not in PRECISIONS:
        known = ", ".join(PRECISIONS)
        raise ValueError(f"unknown precision {precision!r}; choose one of {known}")
    device = torch.device(device)
    if precision == "fp32":
        return precision
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device)
            raise ValueError(f"precision bf16 needs a GPU with bfloat16 support; {name} has none")
        return precision
    if device.type == "cpu":
        # CPU autocast runs bf16 and fp16 on every x86/Arm CPU; without native instructions
        # (AVX512-BF16, AMX) it is emulated and slower than fp32, which is the user's call.
        return precision
    raise ValueError(f"precision {precision} is supported on cpu and cuda devices, not {device}")


def autocast(precision: str, device: torch.device | str):
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32); on CUDA, bf16 and
    fp16 also allow TF32 for the float32 matmuls inside (see the module docstring)."""
    device = torch.device(device)
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=PRECISIONS[precision]))
    if device.type == "cuda":
        stack.enter_context(tf32_matmuls())
    return stack


#: Device types whose autocast can be switched off. A constant, not
#: ``torch.amp.is_autocast_available``: torch.compile cannot trace that builtin, and the graph
#: break it caused left the compiled EM unit running eagerly.
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu")


def autocast_off(device_type: str):
    """A context that disables autocast on ``device_type``, for the float32 parts of a
    mixed-precision model (the EM unit, the loss's softmax); a no-op where autocast does not
    exist (``torch.autocast("meta")`` raises, and FLOPs are counted on the meta device)."""
    if device_type in _AUTOCAST_DEVICE_TYPES:
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def tf32_matmuls():
    """Allow TF32 for CUDA float32 matmuls inside the block, and restore the previous setting.

    PyTorch keeps this switch process-wide (``torch.backends.cuda.matmul.allow_tf32``); scoping
    it here keeps every fp32 run of the package strict, whatever ran before.
    """
    matmul = torch.backends.cuda.matmul
    previous = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32 = previous
