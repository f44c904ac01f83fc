import pytest
import torch

from emanet import EMTrace, build_model
from emanet.models.presets import PRESETS
from emanet.models.segmentor import slide_windows
from tests import mmseg_reference as ref

FIXTURES = __import__("pathlib").Path(__file__).parents[1] / "fixtures"


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
