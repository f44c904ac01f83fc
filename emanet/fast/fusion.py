"""Eval-time speed-ups that leave the labels unchanged: BatchNorm folded into the convolution
before it, channels_last memory layout, half-precision weights for half-precision runs, and 1x1
convolutions as matrix products with their bias (and ReLU) in the product's epilogue.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with rescaled weights and a bias (exact up to float rounding). That removes a full pass over
every feature map; channels_last lets oneDNN/cuDNN pick their fastest convolution kernels, and the
EM unit reads channels_last features without a copy.

The folded bias is not free either: cuDNN adds it in a separate pass, and a broadcast over the
channels of a channels_last tensor takes PyTorch's generic (non-vectorised) elementwise kernel,
~50 us a convolution on an H200 at 2048x1024 -- 61 of them, 3 ms of R-50's 10 ms bf16 forward
pass. A 1x1 convolution of a channels_last tensor *is* a matrix product ``(B*H*W, C_in) @ (C_in,
C_out)``, and ``torch.addmm`` / ``torch._addmm_activation`` with a 1-D bias run it through
cuBLASLt with the bias (and a ReLU) applied as the output tile is written: two thirds of a
ResNet bottleneck's convolutions lose their extra passes (:class:`PointwiseConv`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["PointwiseConv", "fold_batchnorm", "optimize_for_inference", "use_pointwise_products"]


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

    Handles the layouts of this package: mmcv-style conv modules (a ``conv`` and a ``bn`` child,
    as :class:`emanet.models.heads.ConvModule`), torchvision ResNet blocks (``conv{i}`` /
    ``bn{i}``) and ``nn.Sequential`` pairs. Returns ``model``.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BN statistics are frozen)")
    for module in list(model.modules()):
        if isinstance(getattr(module, "conv", None), nn.Conv2d) and isinstance(
            getattr(module, "bn", None), nn.BatchNorm2d
        ):
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


class PointwiseConv(nn.Module):
    """A 1x1 convolution (stride 1, one group, with a bias) computed as one matrix product,
    optionally followed by a ReLU: ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    A channels_last input in the weights' dtype is read as ``(B*H*W, C_in)`` (a view) and
    multiplied with ``addmm`` (or ``_addmm_activation`` for the ReLU), which on CUDA applies the
    bias and the ReLU in cuBLASLt's epilogue; the output is a channels_last view of the product.
    Any other input (contiguous, or of another dtype, as under autocast with float32 weights)
    takes the convolution, then the ReLU: the same function either way, to float rounding.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = False) -> None:
        super().__init__()
        if not is_pointwise(conv):
            raise ValueError(f"not a 1x1, stride-1, one-group convolution with a bias: {conv}")
        self.conv = conv
        self.relu = relu

    def extra_repr(self) -> str:
        return f"relu={self.relu}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.conv.weight, self.conv.bias
        if (
            x.dtype == weight.dtype
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            batch, _, height, width = x.shape
            rows = x.permute(0, 2, 3, 1).reshape(batch * height * width, -1)  # (B*H*W, C_in)
            matrix = weight.view(weight.shape[0], -1).t()  # (C_in, C_out)
            product = torch._addmm_activation if self.relu else torch.addmm
            out = product(bias, rows, matrix)  # (B*H*W, C_out)
            return out.view(batch, height, width, -1).permute(0, 3, 1, 2)
        out = self.conv(x)
        return torch.relu_(out) if self.relu else out


def is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a 1x1, stride-1, unpadded, one-group ``Conv2d`` with a bias."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
        and conv.bias is not None
    )


class _PointwiseBottleneck(nn.Module):
    """torchvision's :class:`~torchvision.models.resnet.Bottleneck` with its BatchNorms folded
    and its two 1x1 convolutions as :class:`PointwiseConv` (the first with its ReLU fused)."""

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        self.conv1 = PointwiseConv(block.conv1, relu=True)
        self.conv2 = block.conv2
        self.conv3 = PointwiseConv(block.conv3)
        self.downsample = block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(torch.relu_(self.conv2(self.conv1(x))))
        return torch.relu_(out.add_(identity))


def _folded(block: Bottleneck) -> bool:
    return all(isinstance(getattr(block, f"bn{i}"), nn.Identity) for i in (1, 2, 3)) and all(
        is_pointwise(getattr(block, f"conv{i}")) for i in (1, 3)
    )


def use_pointwise_products(model: nn.Module) -> nn.Module:
    """Run every BatchNorm-folded 1x1 convolution of ``model`` as a :class:`PointwiseConv`, in
    place (bottlenecks with the ReLU after their first convolution fused). Returns ``model``.

    Meant for a :func:`fold_batchnorm`-ed, channels_last, half-precision copy on CUDA: there the
    bias and ReLU ride on the product. (In float32, cuBLAS would run the product in strict
    float32 where cuDNN's convolutions use TF32, so float32 copies keep their convolutions.)
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Bottleneck) and _folded(child):
                setattr(module, name, _PointwiseBottleneck(child))
    for module in list(model.modules()):
        if isinstance(module, PointwiseConv):
            continue
        for name, child in list(module.named_children()):
            if is_pointwise(child):
                setattr(module, name, PointwiseConv(child))
    return model


def optimize_for_inference(
    model: nn.Module,
    channels_last: bool = True,
    autocast_dtype: torch.dtype | None = None,
    pointwise_products: bool = False,
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

    ``pointwise_products``: 1x1 convolutions become :class:`PointwiseConv` (see
    :func:`use_pointwise_products`; with ``autocast_dtype``, for CUDA).
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
    if pointwise_products:
        use_pointwise_products(fast)
    return fast
