import pytest
import torch

from emanet import EMTrace, build_model
from emanet.fast.fusion import optimize_for_inference
from emanet.models.presets import PRESETS
from emanet.models.segmentor import slide_windows
from tests import mmseg_reference as ref

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def read_keys(name):
    out = {}
    for line in (FIXTURES / name).read_text().splitlines():
        key, shape = line.split(" ", 1)
        out[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return out


def randomise_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
    return model


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


# The small preset's EM unit is ours (lambda 50, centred cosine E-step); with mmseg's unit its
# narrow ResNet-18 and heads must still compute exactly what mmseg would.
MMSEG_UNIT = {"inverse_temperature": 1.0, "centered_cosine": False}


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("emanet_r18-d8_toycity", MMSEG_UNIT),
        ("emanet_r50-d8_512x1024_80k_cityscapes", {}),
    ],
)
def test_logits_equal_independent_mmseg_reference(preset, overrides):
    torch.manual_seed(0)
    model = randomise_bn(build_model(preset, **overrides)).double().eval()
    sd = {k: v for k, v in model.state_dict().items()}
    img = torch.randn(1, 3, 48, 80, dtype=torch.float64)
    with torch.no_grad():
        ours = model.inference(img)
        theirs = ref.encode_decode(sd, img, model.align_corners)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_slide_inference_equals_reference():
    small = PRESETS["emanet_r18-d8_toycity"].with_overrides(
        **MMSEG_UNIT,
        crop_size=(40, 48),
        slide_stride=(24, 32),
        align_corners=True,
        test_mode="slide",
    )
    model = randomise_bn(build_model(small)).double().eval()
    img = torch.randn(1, 3, 70, 100, dtype=torch.float64)
    with torch.no_grad():
        ours = model.inference(img)
        theirs = ref.slide(model.state_dict(), img, (40, 48), (24, 32), 19, True)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_slide_windows_cover_and_stay_inside():
    wins = slide_windows(1024, 2048, (769, 769), (513, 513))
    assert len(wins) == 2 * 4
    cover = torch.zeros(1024, 2048)
    for y1, y2, x1, x2 in wins:
        assert 0 <= y1 < y2 <= 1024 and 0 <= x1 < x2 <= 2048
        assert (y2 - y1, x2 - x1) == (769, 769)
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert slide_windows(100, 100, (769, 769), (513, 513)) == [(0, 100, 0, 100)]


def test_aug_test_returns_log_probabilities_and_flip_equivariance():
    model = randomise_bn(build_model("emanet_r18-d8_toycity")).eval()
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model.inference(img, aug_test=True, ratios=(0.75, 1.0))
        torch.testing.assert_close(out.exp().sum(1), torch.ones(1, 64, 64))
        flipped = model.inference(img.flip(-1), aug_test=True, ratios=(0.75, 1.0))
    # with flip averaging, the prediction of a mirrored image is the mirrored prediction
    torch.testing.assert_close(flipped.flip(-1), out, rtol=1e-4, atol=1e-5)


def test_trace_through_model_and_override():
    model = build_model("emanet_r18-d8_toycity").eval()
    img = torch.randn(1, 3, 64, 96)
    trace = EMTrace()
    with torch.no_grad():
        out = model.inference(img, num_iterations=5, trace=trace)
        plain = model.inference(img, num_iterations=5)
    assert trace.num_iterations == 5
    assert trace.responsibilities[0].shape == (1, 64, 8, 12)
    assert trace.bases[0].shape == (1, 128, 64)
    torch.testing.assert_close(out, plain)
    with pytest.raises(ValueError):
        model.inference(img, trace=EMTrace(), aug_test=True)


def test_forward_train_losses_and_grad_flow():
    model = build_model("emanet_r18-d8_toycity").train()
    img = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 19, (2, 64, 64))
    labels[:, :8] = 255
    losses = model.forward_train(img, labels)
    torch.testing.assert_close(losses["loss"], losses["loss_decode"] + 0.4 * losses["loss_aux"])
    losses["loss"].backward()
    assert model.decode_head.ema_in_conv.conv.weight.grad is not None
    assert model.decode_head.ema_mid_conv.conv.weight.grad is None
    assert model.auxiliary_head.conv_seg.weight.grad is not None


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
    from torch.profiler import profile

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
    from torchvision.models.resnet import Bottleneck

    from emanet.fast.fusion import PointwiseConv, _PointwiseBottleneck

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


def test_conv_of_a_concatenation_without_building_it():
    from emanet.models.heads import ConvModule

    torch.manual_seed(0)
    module = randomise_bn(ConvModule(12, 8, 3, padding=1)).double().train()
    parts = [
        torch.randn(2, channels, 6, 7, dtype=torch.float64, requires_grad=True)
        for channels in (10, 2)
    ]
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = module.forward_concat(parts)
    expected = module(torch.cat(parts, dim=1))
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)
    assert (2, 12, 6, 7) not in saved  # the concatenated input is never stored for backward
    # the same gradients for the weights and for each part
    grads = torch.autograd.grad(result.square().sum(), [module.conv.weight, *parts])
    grads_expected = torch.autograd.grad(expected.square().sum(), [module.conv.weight, *parts])
    for a, b in zip(grads, grads_expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # after BatchNorm folding (the eval copies of emanet.fast.fusion) the bias is added once
    from emanet.fast.fusion import fold_batchnorm

    folded = fold_batchnorm(module.eval())
    with torch.no_grad():
        torch.testing.assert_close(
            folded.forward_concat(parts), folded(torch.cat(parts, dim=1)), rtol=1e-10, atol=1e-10
        )
