"""The segmentation loss: cross-entropy of logits upsampled to the label size.

mmsegmentation upsamples each head's logits (stride 8) bilinearly to the label's size and takes
the mean cross-entropy over the pixels that are not ignored. Written as
``F.cross_entropy(F.interpolate(logits), labels)`` autograd keeps the log-probabilities of every
label pixel for the backward pass, in float32 under autocast: 80 MB per head at R-50's batch of
two 512x1024 crops, 160 MB with the auxiliary head, all live at the end of the forward pass,
where a training step's memory peaks.

:func:`upsampled_cross_entropy` computes the same loss and the same gradient but keeps only the
low-resolution logits (1/64 of the pixels): the backward pass upsamples them again and forms
``softmax - one_hot`` in place. Its arithmetic is that of autocast's cross-entropy on every
device: upsampling in the logits' dtype, softmax in float32, the gradient back in the logits'
dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["upsampled_cross_entropy"]


def upsampled_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    align_corners: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels of ``logits`` bilinearly resized to ``labels``.

    ``logits (B, K, h, w)`` in any float dtype, ``labels (B, H, W)`` int64 class indices (or
    ``ignore_index``). Equals ``F.cross_entropy(F.interpolate(logits, (H, W), mode="bilinear",
    align_corners=align_corners).float(), labels, ignore_index=ignore_index)``, value and
    gradient, while storing only ``logits`` for backward. Returns a float32 scalar.
    """
    if logits.dim() != 4 or labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected logits (B, K, h, w) and labels (B, H, W), "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return _UpsampledCrossEntropy.apply(logits, labels, ignore_index, align_corners)


def _upsample(logits: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


class _UpsampledCrossEntropy(torch.autograd.Function):
    # One image at a time: the full-size temporaries (upsampled logits, float32 probabilities)
    # then exist for one image only, at the moment a training step's memory peaks.

    @staticmethod
    def forward(ctx, logits, labels, ignore_index, align_corners):
        size = labels.shape[-2:]
        total = logits.new_zeros((), dtype=torch.float32)
        # Autocast would cast the upsampled logits to float32 before the softmax (one more
        # full-size copy); the float32 log-softmax of bf16/fp16 input is computed directly.
        with torch.autocast(logits.device.type, enabled=False):
            for image, target in zip(logits.split(1), labels.split(1), strict=True):
                log_probs = F.log_softmax(
                    _upsample(image, size, align_corners), 1, dtype=torch.float32
                )
                total += F.nll_loss(log_probs, target, ignore_index=ignore_index, reduction="sum")
        ctx.save_for_backward(logits, labels)
        ctx.ignore_index = ignore_index
        ctx.align_corners = align_corners
        return total / (labels != ignore_index).sum()  # nan without a counted pixel, as mean

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        logits, labels = ctx.saved_tensors
        size = labels.shape[-2:]
        scale = grad_loss / (labels != ctx.ignore_index).sum()
        grad_logits = torch.empty_like(logits)
        for image, target, out in zip(
            logits.split(1), labels.split(1), grad_logits.split(1), strict=True
        ):
            # d loss / d upsampled = (softmax - one_hot) / counted pixels, zero where ignored.
            grad = F.softmax(_upsample(image, size, ctx.align_corners), 1, dtype=torch.float32)
            valid = target != ctx.ignore_index
            weight = valid.unsqueeze(1).to(grad.dtype)
            grad.scatter_add_(1, target.masked_fill(~valid, 0).unsqueeze(1), -weight)
            grad = grad.mul_(weight * scale).to(logits.dtype)
            if tuple(image.shape[-2:]) != tuple(size):
                grad = torch.ops.aten.upsample_bilinear2d_backward(
                    grad, list(size), list(image.shape), ctx.align_corners, None, None
                )
            out.copy_(grad)
        return grad_logits, None, None, None
