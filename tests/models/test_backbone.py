"""ResNetV1c-D8: mmsegmentation's key layout, output stride 8 and the contracted dilations."""

import pytest
import torch

from emanet import build_model
from tests.models.test_segmentor import read_keys


@pytest.mark.parametrize("depth", [50, 101])
def test_state_dict_matches_mmseg_key_layout(depth):
    expected = read_keys(f"mmseg_emanet_r{depth}-d8_state_dict_keys.txt")
    model = build_model(f"emanet_r{depth}-d8_512x1024_80k_cityscapes")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    # the frozen 1x1 conv of the head, as in mmseg
    assert not model.decode_head.ema_mid_conv.conv.weight.requires_grad


def test_output_stride_8_and_stage_channels():
    model = build_model("emanet_r50-d8_512x1024_80k_cityscapes").eval()
    with torch.no_grad():
        outs = model.backbone(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048]
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 24), (8, 12), (8, 12), (8, 12)]
    layer4 = model.backbone.layer4
    assert layer4[0].conv2.dilation == (2, 2) and layer4[1].conv2.dilation == (4, 4)
    assert model.backbone.layer3[0].conv2.dilation == (1, 1)
    assert model.backbone.layer3[1].conv2.dilation == (2, 2)
