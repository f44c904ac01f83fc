"""The segmentation loss of :mod:`emanet.models.loss`, storing less for the backward pass.

Written as ``F.cross_entropy(F.interpolate(logits), labels)``, autograd keeps the
log-probabilities of every label pixel for the backward pass, in float32 under autocast, all
live at the end of the forward pass, where a training step's memory peaks.
:func:`upsampled_cross_entropy` computes the same loss and the same gradient but keeps only the
low-resolution logits (1/64 of the pixels): the backward pass upsamples them again and forms
``softmax - one_hot`` in place, one image at a time. Its arithmetic is that of autocast's
cross-entropy on every device: upsampling in the logits' dtype, softmax in float32, the gradient
back in the logits' dtype. ``tests/fast/test_loss.py`` holds value and gradient to the plain
loss's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from emanet.runtime.precision import autocast_off

__all__ = ["upsampled_cross_entropy"]


def upsampled_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    align_corners: bool = False,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """Cross-entropy of ``logits`` bilinearly resized to ``labels``, averaged as mmseg does.

    ``logits (B, K, h, w)`` in any float dtype, ``labels (B, H, W)`` int64 class indices (or
    ``ignore_index``). The per-pixel losses of
    ``F.cross_entropy(F.interpolate(logits, (H, W), mode="bilinear",
    align_corners=align_corners).float(), labels, ignore_index=ignore_index, reduction="none")``
    summed and divided by ``B * H * W`` (by the counted pixels with ``avg_non_ignore``; by at
    least 1), value and gradient, while storing only ``logits`` for backward. Returns a float32
    scalar.
    """
    if logits.dim() != 4 or labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected logits (B, K, h, w) and labels (B, H, W), "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return _UpsampledCrossEntropy.apply(logits, labels, ignore_index, align_corners, avg_non_ignore)


def _resize(logits: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """``emanet.models.heads.resize_logits`` (this layer sits below the models)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def _denominator(labels: torch.Tensor, ignore_index: int, avg_non_ignore: bool):
    if avg_non_ignore:
        return (labels != ignore_index).sum().clamp_min(1)  # a tensor: no wait for the GPU
    return max(labels.numel(), 1)


class _UpsampledCrossEntropy(torch.autograd.Function):
    # One image at a time: the full-size temporaries (upsampled logits, float32 probabilities)
    # then exist for one image only, at the moment a training step's memory peaks.

    @staticmethod
    def forward(ctx, logits, labels, ignore_index, align_corners, avg_non_ignore):
        size = labels.shape[-2:]
        total = logits.new_zeros((), dtype=torch.float32)
        # Autocast would cast the upsampled logits to float32 before the softmax (one more
        # full-size copy); the float32 log-softmax of bf16/fp16 input is computed directly.
        with autocast_off(logits.device.type):
            for image, target in zip(logits.split(1), labels.split(1), strict=True):
                log_probs = F.log_softmax(
                    _resize(image, size, align_corners), 1, dtype=torch.float32
                )
                total += F.nll_loss(log_probs, target, ignore_index=ignore_index, reduction="sum")
        ctx.save_for_backward(logits, labels)
        ctx.options = (ignore_index, align_corners, avg_non_ignore)
        return total / _denominator(labels, ignore_index, avg_non_ignore)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        logits, labels = ctx.saved_tensors
        ignore_index, align_corners, avg_non_ignore = ctx.options
        size = labels.shape[-2:]
        scale = grad_loss / _denominator(labels, ignore_index, avg_non_ignore)
        grad_logits = torch.empty_like(logits)
        for image, target, out in zip(
            logits.split(1), labels.split(1), grad_logits.split(1), strict=True
        ):
            # d loss / d upsampled = (softmax - one_hot) * scale, zero where ignored.
            grad = F.softmax(_resize(image, size, align_corners), 1, dtype=torch.float32)
            counted = target != ignore_index
            weight = counted.unsqueeze(1).to(grad.dtype)
            grad.scatter_add_(1, target.masked_fill(~counted, 0).unsqueeze(1), -weight)
            grad = grad.mul_(weight * scale).to(logits.dtype)
            if tuple(image.shape[-2:]) != tuple(size):
                grad = torch.ops.aten.upsample_bilinear2d_backward(
                    grad, list(size), list(image.shape), align_corners, None, None
                )
            out.copy_(grad)
        return grad_logits, None, None, None, None
