"""The segmentation loss: cross-entropy of the heads' logits resized to the labels.

mmsegmentation resizes each head's logits (stride 8) bilinearly to the label's size, takes the
cross-entropy of every pixel (zero where the label is ignored) and averages it over *all* label
pixels: its ``CrossEntropyLoss`` with ``avg_non_ignore=False``, the setting of every EMANet
config, so ignored and padded pixels lower the loss's scale. ``avg_non_ignore=True`` averages
over the counted pixels only, as ``F.cross_entropy`` does. A batch with no counted pixel has
loss 0, not NaN.

:func:`segmentation_loss` is that formula. The trainer runs
:func:`emanet.fast.loss.upsampled_cross_entropy`, the same loss and gradient that keeps only the
low-resolution logits for the backward pass (``EMANet.memory_saving_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .heads import resize_logits

__all__ = ["segmentation_loss"]


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    align_corners: bool = False,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """Cross-entropy of ``logits`` ``(B, K, h, w)`` resized to ``labels`` ``(B, H, W)`` (int64
    class indices or ``ignore_index``), summed and divided by ``B * H * W`` (by the counted
    pixels with ``avg_non_ignore``; by at least 1). Returns a float32 scalar."""
    resized = resize_logits(logits, labels.shape[-2:], align_corners)
    resized = resized.to(torch.promote_types(resized.dtype, torch.float32))  # half -> float32
    total = F.cross_entropy(resized, labels, ignore_index=ignore_index, reduction="sum")
    if avg_non_ignore:
        return total / (labels != ignore_index).sum().clamp_min(1)
    return total / max(labels.numel(), 1)
