"""Numeric precision of a model run: one place that turns ``"fp32" | "bf16" | "fp16"`` into an
autocast context, and that refuses a precision the device cannot run.

Mixed precision here is PyTorch's autocast: convolutions and matmuls run in the lower
precision, reductions, softmax and losses in float32, and the EM unit always iterates in float32
(see :mod:`emanet.ema`). Weights stay float32.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast", "check_precision", "default_precision"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    device = torch.device(device)
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])
