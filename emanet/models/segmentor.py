"""EMANet: backbone + EMA decode head + FCN auxiliary head, with mmsegmentation's inference.

Training returns the two cross-entropy losses; inference returns logits at the input
resolution, computed on the whole image or on overlapping windows ("slide"), optionally
averaged over scales and horizontal flips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emanet.fast.loss import upsampled_cross_entropy

from .backbone import ResNetV1c
from .ema import EMOptions, EMTrace
from .heads import EMAHead, FCNHead, resize_logits
from .loss import segmentation_loss
from .presets import ModelPreset, get_preset

__all__ = ["EMANet", "build_model", "slide_windows", "AUG_TEST_RATIOS"]

# The model card's "ms+flip" column: these ratios of the test scale, each with a flip.
AUG_TEST_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of mmsegmentation's slide inference.

    ``max(size - crop + stride - 1, 0) // stride + 1`` windows per axis; the last window is
    shifted back inside the image, and a window never exceeds the image.
    """
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y2 = min(row * stride_h + crop_h, height)
            x2 = min(col * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


class EMANet(nn.Module):
    """The segmentor. Submodules are named as mmsegmentation's (``backbone``, ``decode_head``,
    ``auxiliary_head``), so official state dicts load as they are.

    Args:
        preset: the configuration (see :mod:`emanet.models.presets`).
        norm_layer: BatchNorm class for every norm (SyncBatchNorm is swapped in for DDP).

    ``memory_saving_loss`` (on): :meth:`forward_train` computes the loss with
    :func:`emanet.fast.loss.upsampled_cross_entropy` instead of
    :func:`emanet.models.loss.segmentation_loss`: the same loss and gradient, storing only the
    low-resolution logits for the backward pass.
    """

    memory_saving_loss = True

    def __init__(self, preset: ModelPreset, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.preset = preset
        self.align_corners = preset.align_corners
        self.backbone = ResNetV1c(
            preset.depth,
            stem_channels=preset.stem_channels,
            base_width=preset.base_width,
            norm_layer=norm_layer,
        )
        c3, c4 = self.backbone.out_channels[2:]
        self.decode_head = EMAHead(
            in_channels=c4,
            channels=preset.head_channels,
            ema_channels=preset.ema_channels,
            num_bases=preset.num_bases,
            num_iterations=preset.num_iterations,
            momentum=preset.momentum,
            num_classes=preset.num_classes,
            dropout=preset.dropout,
            inverse_temperature=preset.inverse_temperature,
            centered_cosine=preset.centered_cosine,
            norm_layer=norm_layer,
        )
        self.auxiliary_head = FCNHead(
            in_channels=c3,
            channels=preset.head_channels,
            num_classes=preset.num_classes,
            dropout=preset.dropout,
            norm_layer=norm_layer,
        )

    @property
    def num_classes(self) -> int:
        return self.preset.num_classes

    @property
    def em_unit(self):
        """The :class:`~emanet.models.ema.EMAttention` inside the decode head."""
        return self.decode_head.ema_module

    def _resize(self, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return resize_logits(logits, size, self.align_corners)

    def forward(self, images: torch.Tensor, em: EMOptions | None = None) -> torch.Tensor:
        """Decode-head logits at the input resolution: ``(B, 3, H, W) -> (B, classes, H, W)``.

        ``images`` are normalised (ImageNet mean/std on 0-255 RGB); ``em``: this pass's choices
        for the EM unit (see :class:`~emanet.models.ema.EMOptions`).
        """
        feats = self.backbone(images)
        return self._resize(self.decode_head(feats[3], em), images.shape[-2:])

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses for a batch: ``images (B, 3, H, W)``, ``labels (B, H, W)`` int64 trainIds.

        Returns ``{"loss_decode", "loss_aux", "loss"}`` with ``loss = decode + aux_weight * aux``,
        each as mmseg computes it (:mod:`emanet.models.loss`; label 255 is ignored).
        """
        feats = self.backbone(images)
        decode = self.decode_head(feats[3])
        aux = self.auxiliary_head(feats[2])
        loss = upsampled_cross_entropy if self.memory_saving_loss else segmentation_loss
        loss_decode = loss(decode, labels, align_corners=self.align_corners)
        loss_aux = loss(aux, labels, align_corners=self.align_corners)
        return {
            "loss_decode": loss_decode,
            "loss_aux": loss_aux,
            "loss": loss_decode + self.preset.aux_weight * loss_aux,
        }

    def slide_inference(self, images: torch.Tensor, em: EMOptions | None = None) -> torch.Tensor:
        """Logits averaged over the preset's overlapping windows (slide mode).

        ``(B, 3, H, W) -> (B, classes, H, W)``
        """
        batch, _, height, width = images.shape
        logits = images.new_zeros(batch, self.num_classes, height, width)
        counts = images.new_zeros(1, 1, height, width)
        windows = slide_windows(height, width, self.preset.crop_size, self.preset.slide_stride)
        for y1, y2, x1, x2 in windows:
            logits[:, :, y1:y2, x1:x2] += self(images[:, :, y1:y2, x1:x2], em)
            counts[:, :, y1:y2, x1:x2] += 1
        return logits / counts

    def inference(
        self,
        images: torch.Tensor,
        mode: str | None = None,
        num_iterations: int | None = None,
        trace: EMTrace | None = None,
        aug_test: bool = False,
        ratios: Sequence[float] = AUG_TEST_RATIOS,
        flip: bool = True,
        inverse_temperature: float | None = None,
    ) -> torch.Tensor:
        """Test-time prediction scores at the input resolution.

        Args:
            images: ``(B, 3, H, W)`` normalised images (already at the test scale).
            mode: ``"whole"`` or ``"slide"``; default: the preset's.
            num_iterations: EM iterations ``T`` at test time (default: the trained ``T``).
            trace: fill an :class:`EMTrace` (whole mode, single scale only).
            aug_test: multi-scale (``ratios`` of the input size) and flip test.
            inverse_temperature: the EM unit's ``lambda`` for this call (default: the model's).

        Returns:
            ``(B, classes, H, W)``: logits, or with ``aug_test`` the log of the softmax
            probabilities averaged over scales and flips (mmsegmentation 0.x's rule, which
            produced the model card's ms+flip numbers); ``argmax`` gives the labels either way.
        """
        mode = mode or self.preset.test_mode
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if trace is not None and (mode != "whole" or aug_test):
            raise ValueError("an EM trace is recorded in whole mode without aug_test only")

        em = EMOptions(num_iterations, inverse_temperature, trace)

        def single(x: torch.Tensor) -> torch.Tensor:
            return self.slide_inference(x, em) if mode == "slide" else self(x, em)

        if not aug_test:
            return single(images)
        return self._scales_and_flips(images, single, ratios, flip)

    def _scales_and_flips(self, images, single, ratios: Sequence[float], flip: bool):
        """The log of ``single``'s softmax probabilities averaged over ``ratios`` of the input
        size, each with its horizontal flip: ``(B, classes, H, W)``."""
        height, width = images.shape[-2:]
        probs = None
        for ratio in ratios:
            size = (
                max(1, math.floor(height * ratio + 0.5)),
                max(1, math.floor(width * ratio + 0.5)),
            )
            scaled = images
            if size != (height, width):
                scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            views = [scaled, scaled.flip(-1)] if flip else [scaled]
            for index, view in enumerate(views):
                out = single(view)
                if index == 1:
                    out = out.flip(-1)
                p = self._resize(out, (height, width)).softmax(dim=1)
                probs = p if probs is None else probs + p
        probs = probs / (len(ratios) * (2 if flip else 1))
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def build_model(
    name: str | ModelPreset = "emanet_r18-d8_toycity", num_classes: int | None = None, **overrides
) -> EMANet:
    """Build an EMANet from a preset name (see :data:`emanet.models.presets.PRESETS`).

    ``num_classes``: the classifiers' outputs (default: the preset's, 19 for Cityscapes), e.g.
    a dataset's ``len(dataset.classes)``. Keyword ``overrides`` replace other preset fields
    (e.g. ``num_iterations=5``). Weights are random; load them with
    :func:`emanet.load_checkpoint`.
    """
    if num_classes is not None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        overrides["num_classes"] = int(num_classes)
    preset = get_preset(name)
    if overrides:
        preset = preset.with_overrides(**overrides)
    return EMANet(preset)
