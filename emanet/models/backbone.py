"""ResNetV1c-D8: the dilated ResNet that mmsegmentation's EMANet configs use as backbone.

V1c replaces ResNet's 7x7 stem by three 3x3 convolutions (32, 32, 64 channels; the first with
stride 2). "D8" keeps an output stride of 8: stages 3 and 4 trade their stride for dilation
2 and 4, and the first block of a dilated stage uses half the dilation ("contract dilation"),
so the receptive field grows without a gridding jump. The stride sits on the 3x3 convolution
(mmsegmentation's ``style='pytorch'``), as in torchvision's blocks, which we reuse.

Module names follow mmsegmentation (``stem.0``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
...), so its state dicts load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["DILATIONS", "STAGE_BLOCKS", "STRIDES", "DilatedBasicBlock", "ResNetV1c"]

#: Stride and dilation of each stage for an output stride of 8 (the "D8" of the name).
STRIDES, DILATIONS = (1, 2, 1, 1), (1, 1, 2, 4)

STAGE_BLOCKS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class DilatedBasicBlock(BasicBlock):
    """torchvision's BasicBlock refuses ``dilation > 1``; mmsegmentation dilates only conv1.

    Same parameters and names as :class:`torchvision.models.resnet.BasicBlock`.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        norm_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, norm_layer=norm_layer)
        self.conv1 = nn.Conv2d(
            inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )


def _stem(stem_channels: int, norm_layer: type[nn.Module]) -> nn.Sequential:
    half = stem_channels // 2
    return nn.Sequential(
        nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),
        norm_layer(half),
        nn.ReLU(inplace=True),
        nn.Conv2d(half, half, 3, stride=1, padding=1, bias=False),
        norm_layer(half),
        nn.ReLU(inplace=True),
        nn.Conv2d(half, stem_channels, 3, stride=1, padding=1, bias=False),
        norm_layer(stem_channels),
        nn.ReLU(inplace=True),
    )


class ResNetV1c(nn.Module):
    """Dilated ResNetV1c returning the feature maps of all four stages.

    Args:
        depth: 18, 34, 50, 101 or 152.
        stem_channels: output channels of the deep stem (64).
        base_width: channels of the first stage's blocks, doubled at every stage (64, as every
            ImageNet ResNet; the small toy-city preset halves it).
        norm_layer: normalisation (``nn.BatchNorm2d``; the trainer converts to SyncBatchNorm).

    ``forward``: ``(B, 3, H, W) -> [c1, c2, c3, c4]`` with strides 4, 8, 8, 8 for D8 and
    channels ``(1, 2, 4, 8) * base_width * expansion``.
    """

    def __init__(
        self,
        depth: int = 50,
        stem_channels: int = 64,
        base_width: int = 64,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        block, num_blocks = STAGE_BLOCKS[depth]
        if block is BasicBlock:
            block = DilatedBasicBlock
        self.depth = depth
        self.stem = _stem(stem_channels, norm_layer)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        self.out_channels: list[int] = []
        for index, (blocks, stride, dilation) in enumerate(
            zip(num_blocks, STRIDES, DILATIONS, strict=True)
        ):
            planes = base_width * 2**index
            # "Contract dilation": a dilated stage's first block uses half the dilation.
            first_dilation = dilation // 2 if dilation > 1 else dilation
            layer, inplanes = _make_stage(
                block, inplanes, planes, blocks, stride, dilation, first_dilation, norm_layer
            )
            self.add_module(f"layer{index + 1}", layer)
            self.out_channels.append(inplanes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


def _make_stage(
    block: type[nn.Module],
    inplanes: int,
    planes: int,
    num_blocks: int,
    stride: int,
    dilation: int,
    first_dilation: int,
    norm_layer: type[nn.Module],
) -> tuple[nn.Sequential, int]:
    outplanes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), norm_layer(outplanes)
        )
    layers = [
        block(
            inplanes,
            planes,
            stride=stride,
            downsample=downsample,
            dilation=first_dilation,
            norm_layer=norm_layer,
        )
    ]
    for _ in range(1, num_blocks):
        layers.append(block(outplanes, planes, dilation=dilation, norm_layer=norm_layer))
    return nn.Sequential(*layers), outplanes
