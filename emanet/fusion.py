"""Eval-time speed-ups that leave the labels unchanged: BatchNorm folded into the convolution
before it, and channels_last memory layout.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with rescaled weights and a bias (exact up to float rounding). That removes a full pass over
every feature map; channels_last lets oneDNN/cuDNN pick their fastest convolution kernels, and the
EM unit reads channels_last features without a copy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck

from .heads import ConvModule

__all__ = ["fold_batchnorm", "optimize_for_inference"]


def _fold_sequential(seq: nn.Sequential) -> None:
    # Pairs (Conv2d, BatchNorm2d) next to each other: the ResNet stem and downsample paths.
    names = list(seq._modules)
    for first, second in zip(names, names[1:], strict=False):
        conv, bn = seq._modules[first], seq._modules[second]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            seq._modules[first] = fuse_conv_bn_eval(conv, bn)
            seq._modules[second] = nn.Identity()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that follows a convolution into it, in place.

    Handles the layouts of this package: ``ConvModule`` (``conv``/``bn``), torchvision
    ResNet blocks (``conv{i}``/``bn{i}``) and ``nn.Sequential`` pairs. Returns ``model``.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BN statistics are frozen)")
    for module in list(model.modules()):
        if isinstance(module, ConvModule) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = None
        elif isinstance(module, (BasicBlock, Bottleneck)):
            for index in (1, 2, 3):
                conv, bn = (
                    getattr(module, f"conv{index}", None),
                    getattr(module, f"bn{index}", None),
                )
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(module, f"conv{index}", fuse_conv_bn_eval(conv, bn))
                    setattr(module, f"bn{index}", nn.Identity())
        elif isinstance(module, nn.Sequential):
            _fold_sequential(module)
    return model


def optimize_for_inference(
    model: nn.Module, channels_last: bool = True, autocast_dtype: torch.dtype | None = None
) -> nn.Module:
    """An eval-only copy of ``model``: BatchNorm folded, channels_last weights, no gradients.

    The original is left untouched (it can still be trained or saved with its mmsegmentation
    key layout). Feed the copy channels_last inputs for the full benefit.

    ``autocast_dtype`` (``torch.bfloat16`` or ``torch.float16``): the copy will only run under
    autocast to that dtype, so its convolutions' weights and biases are stored in it. Autocast
    computes with exactly those values anyway (the logits are the same, bit for bit), but for
    weights that need no gradient it casts them again at every call, one extra kernel per
    convolution (on the small preset, 63 casts a forward pass become 7). Other parameters and
    buffers (the EM unit's bases) keep their dtype.
    """
    fast = copy.deepcopy(model).eval()
    fold_batchnorm(fast)
    fast.requires_grad_(False)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    if autocast_dtype is not None:
        if autocast_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be bfloat16 or float16, got {autocast_dtype}")
        for module in fast.modules():
            if isinstance(module, nn.Conv2d):
                module.to(autocast_dtype)
    return fast
