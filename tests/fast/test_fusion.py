"""Eval copies with BatchNorm folded, half weights and 1x1 products: the same network."""

import pytest
import torch
from torch.profiler import profile
from torchvision.models.resnet import Bottleneck

from emanet import build_model
from emanet.fast.fusion import PointwiseConv, _PointwiseBottleneck, optimize_for_inference
from tests.models.test_segmentor import randomise_bn


def test_optimized_copy_same_labels():
    model = randomise_bn(build_model("emanet_r18-d8_toycity")).eval()
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    img = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a = model.inference(img)
        b = fast.inference(img.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.999
    # the original keeps its BatchNorms and mmseg key layout
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_weights_give_autocast_logits_bit_for_bit_without_the_casts(dtype):

    model = randomise_bn(build_model("emanet_r18-d8_toycity")).eval()
    fast = optimize_for_inference(model)
    half = optimize_for_inference(model, autocast_dtype=dtype)
    convs = [m for m in half.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.dtype == dtype for m in convs)
    assert half.em_unit.bases.dtype == torch.float32
    img = torch.randn(1, 3, 96, 128).contiguous(memory_format=torch.channels_last)

    def run(net):
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype), profile() as prof:
            logits = net.inference(img)
        casts = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
        return logits, casts

    (expected, casts_fast), (logits, casts_half) = run(fast), run(half)
    assert torch.equal(logits, expected)
    assert casts_half + len(convs) - 2 <= casts_fast  # (nearly) one cast per convolution less
    with pytest.raises(ValueError, match="autocast_dtype"):
        optimize_for_inference(model, autocast_dtype=torch.float64)


def test_pointwise_products_compute_the_same_network():

    torch.manual_seed(0)
    model = randomise_bn(build_model("emanet_r50-d8_512x1024_80k_cityscapes")).eval()
    convs = optimize_for_inference(model)
    products = optimize_for_inference(model, pointwise_products=True)
    assert not any(isinstance(m, Bottleneck) for m in products.modules())
    assert sum(isinstance(m, _PointwiseBottleneck) for m in products.modules()) == 16
    pointwise = [m for m in products.modules() if isinstance(m, PointwiseConv)]
    # two per bottleneck, the stride-1 downsamples of stages 1, 3 and 4, ema_mid_conv,
    # ema_out_conv and both classifiers; stage 2's stride-2 downsample stays a convolution
    assert len(pointwise) == 2 * 16 + 3 + 4
    assert sum(m.relu for m in pointwise) == 16
    img = torch.randn(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = convs.inference(img)
        # float32 rounding, carried through 50 layers (the BN folding's own test allows 1e-3)
        scale = float(expected.abs().max())
        tolerance = dict(rtol=0, atol=1e-4 * scale)
        torch.testing.assert_close(products.inference(img), expected, **tolerance)
        # a contiguous input takes the convolutions: the same function
        torch.testing.assert_close(products.inference(img.contiguous()), expected, **tolerance)
    # in bf16 (weights stored in bf16, as a CUDA bf16 Segmenter runs them), under autocast
    half = optimize_for_inference(model, autocast_dtype=torch.bfloat16, pointwise_products=True)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = half.inference(img)
    assert logits.dtype == torch.bfloat16
    assert (logits.argmax(1) == expected.argmax(1)).float().mean() > 0.99
    with pytest.raises(ValueError, match="1x1"):
        PointwiseConv(torch.nn.Conv2d(4, 4, 3))
