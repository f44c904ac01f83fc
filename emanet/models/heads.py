"""Decode heads: the EMA head (EMANet) and the FCN auxiliary head.

Both mirror mmsegmentation's ``EMAHead`` and ``FCNHead`` layer for layer and name for name
(``ema_in_conv.conv``, ``ema_in_conv.bn``, ``conv_seg``, ...), so official checkpoints load
as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ema import EMAttention, EMOptions

__all__ = ["ConvModule", "EMAHead", "FCNHead", "resize_logits"]


def resize_logits(logits: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """The heads' ``(B, K, h, w)`` logits at ``size``: bilinear, as mmseg's decode heads resize
    them (returned as they are when the size is already right)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


class ConvModule(nn.Module):
    """Conv -> optional BatchNorm -> optional ReLU, named ``conv`` and ``bn`` like mmcv's.

    ``(B, in_channels, H, W) -> (B, out_channels, H', W')``. The convolution has a bias only
    when there is no norm layer (mmcv's ``bias='auto'``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        dilation: int = 1,
        norm: bool = True,
        act: bool = True,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            bias=not norm,
        )
        self.bn = norm_layer(out_channels) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None
        # mmcv initialises ConvModule convs with kaiming normal (fan_out, relu).
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm_act(self.conv(x))

    def forward_concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``self(torch.cat(parts, dim=1))`` without building the concatenation.

        A convolution is linear in its input channels, so it is the sum of the convolutions of
        each part with its slice of the weights. The concatenated map is then never stored for
        the backward pass: EMAHead's ``conv_cat`` input is 2304 channels at 1/8 resolution, 151
        MB for a batch of two 512x1024 crops in float32 (75 MB in bf16), and it is not copied
        at inference either. (The same function up to float rounding: the parts are summed.)
        """
        conv = self.conv
        if type(conv) is not nn.Conv2d or conv.groups != 1:
            return self(torch.cat(parts, dim=1))
        weights = torch.split(conv.weight, [part.shape[1] for part in parts], dim=1)
        out = None
        for part, weight in zip(parts, weights, strict=True):
            y = F.conv2d(part, weight, None, conv.stride, conv.padding, conv.dilation)
            out = y if out is None else out.add_(y)
        if conv.bias is not None:  # after BatchNorm folding (emanet.fast.fusion)
            out = out.add_(conv.bias.to(out.dtype).view(1, -1, 1, 1))
        return self._norm_act(out)

    def _norm_act(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x


class _ClassifierMixin(nn.Module):
    """Dropout2d then a 1x1 classifier, initialised like mmseg's ``conv_seg`` (std 0.01)."""

    def _init_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(x)


class EMAHead(_ClassifierMixin):
    """EMANet's decode head on the last backbone stage.

    ``x (B, in_channels, h, w)`` -> 3x3 conv-BN-ReLU to ``ema_channels`` (the identity) ->
    frozen 1x1 conv with bias (maps ReLU's ``[0, inf)`` to all reals, so the inner products of
    the E-step can be negative) -> EM attention -> ReLU -> 1x1 conv-BN -> residual with the
    identity, ReLU -> 3x3 conv-BN-ReLU to ``channels`` -> concat with ``x`` and 3x3 conv-BN-ReLU
    -> Dropout2d -> 1x1 classifier: ``(B, num_classes, h, w)`` logits.

    The 1x1 ``ema_mid_conv`` receives no gradient (nothing differentiable flows through EM),
    so it is frozen, as in mmsegmentation; it keeps its random initialisation.
    """

    def __init__(
        self,
        in_channels: int = 2048,
        channels: int = 256,
        ema_channels: int = 512,
        num_bases: int = 64,
        num_iterations: int = 3,
        momentum: float = 0.1,
        num_classes: int = 19,
        dropout: float = 0.1,
        concat_input: bool = True,
        inverse_temperature: float = 1.0,
        centered_cosine: bool = False,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.concat_input = concat_input
        self.ema_module = EMAttention(
            ema_channels,
            num_bases,
            num_iterations,
            momentum,
            inverse_temperature=inverse_temperature,
            centered_cosine=centered_cosine,
        )
        self.ema_in_conv = ConvModule(
            in_channels, ema_channels, 3, padding=1, norm_layer=norm_layer
        )
        self.ema_mid_conv = ConvModule(ema_channels, ema_channels, 1, norm=False, act=False)
        self.ema_mid_conv.requires_grad_(False)
        self.ema_out_conv = ConvModule(
            ema_channels, ema_channels, 1, act=False, norm_layer=norm_layer
        )
        self.bottleneck = ConvModule(ema_channels, channels, 3, padding=1, norm_layer=norm_layer)
        if concat_input:
            self.conv_cat = ConvModule(
                in_channels + channels, channels, 3, padding=1, norm_layer=norm_layer
            )
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor, em: EMOptions | None = None) -> torch.Tensor:
        """``(B, in_channels, h, w) -> (B, num_classes, h, w)``; ``em``: this pass's choices
        for the EM unit (see :class:`~emanet.models.ema.EMOptions`)."""
        em = em or EMOptions()
        feats = self.ema_in_conv(x)
        identity = feats
        feats = self.ema_mid_conv(feats)
        recon = self.ema_module(feats, em.num_iterations, em.trace, em.inverse_temperature)
        recon = self.ema_out_conv(F.relu(recon))
        out = self.bottleneck(F.relu(identity + recon))
        if self.concat_input:
            out = self.conv_cat.forward_concat([x, out])
        return self.cls_seg(out)


class FCNHead(_ClassifierMixin):
    """FCN auxiliary head: ``num_convs`` 3x3 conv-BN-ReLU then Dropout2d and a 1x1 classifier.

    ``(B, in_channels, h, w) -> (B, num_classes, h, w)``. Used on stage 3 with loss weight 0.4.
    """

    def __init__(
        self,
        in_channels: int = 1024,
        channels: int = 256,
        num_convs: int = 1,
        num_classes: int = 19,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        convs = [ConvModule(in_channels, channels, 3, padding=1, norm_layer=norm_layer)]
        for _ in range(1, num_convs):
            convs.append(ConvModule(channels, channels, 3, padding=1, norm_layer=norm_layer))
        self.convs = nn.Sequential(*convs)
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))
