"""FLOP counts against hand counts, meta-device counting against a real run, and the CLI table."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from emanet import EMAttention, build_model
from emanet.cli import main
from emanet.deploy.flops import (
    count_flops,
    format_costs,
    model_cost,
    non_local_attention,
    training_flops,
)
from emanet.models.presets import get_preset


def test_one_convolution_by_hand():
    batch, c_in, c_out, height, width, k = 2, 3, 8, 10, 12, 3
    conv = nn.Conv2d(c_in, c_out, k, padding=1)
    counted = count_flops(conv, torch.randn(batch, c_in, height, width))
    # every output value: c_in * k * k multiply-adds, 2 FLOPs each (the bias is not counted)
    assert counted.total == 2 * batch * c_out * height * width * c_in * k * k
    strided = nn.Conv2d(c_in, c_out, k, stride=2, padding=1, bias=False)
    out_h, out_w = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    assert count_flops(strided, torch.randn(batch, c_in, height, width)).total == (
        2 * batch * c_out * out_h * out_w * c_in * k * k
    )


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_em_iterations_by_hand(device):
    batch, channels, bases, height, width = 2, 16, 4, 5, 6
    pixels = height * width
    x = torch.randn(batch, channels, height, width, device=device)
    flops = {}
    for steps in (1, 2, 3):
        unit = EMAttention(channels, num_bases=bases, num_iterations=steps).to(device).eval()
        flops[steps] = count_flops(unit, x).total
    # E-step (N x C) @ (C x K) and M-step (C x N) @ (N x K): 2 * N * C * K multiply-adds
    one_iteration = 2 * (2 * batch * pixels * channels * bases)
    reconstruction = 2 * batch * channels * bases * pixels
    assert flops[2] - flops[1] == flops[3] - flops[2] == one_iteration
    assert flops[1] == one_iteration + reconstruction


def test_non_local_attention_by_hand():
    batch, channels, height, width = 1, 8, 4, 5
    pixels = height * width
    counted = count_flops(non_local_attention, torch.randn(batch, channels, height, width))
    # affinity X^T X and aggregation X A^T: N * N * C multiply-adds each
    assert counted.total == 2 * (2 * batch * pixels * pixels * channels)


def test_model_cost_matches_a_real_run_and_the_unit_formula():
    preset = get_preset("emanet_r18-d8_toycity")
    size = (64, 96)
    cost = model_cost(preset, image_size=size)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    real = count_flops(model.inference, torch.randn(1, 3, *size))
    assert cost.flops == real.total
    assert cost.em_flops == real.by_module["decode_head.ema_module"]
    assert cost.feature_size == (8, 12) and cost.windows == 1 and cost.mode == "whole"
    pixels, channels, bases, steps = 8 * 12, preset.ema_channels, preset.num_bases, 3
    assert cost.em_flops == (4 * steps + 2) * pixels * channels * bases
    assert cost.non_local_flops == 4 * pixels * pixels * channels
    aux = sum(p.numel() for p in model.auxiliary_head.parameters())
    assert cost.parameters == sum(p.numel() for p in model.parameters()) - aux
    # the default image is the test setting: a Cityscapes frame resized to 256x512
    assert model_cost(preset).input_size == (256, 512)


def test_slide_cost_counts_every_window():
    preset = get_preset("emanet_r18-d8_toycity").with_overrides(
        test_mode="slide", crop_size=(64, 64), slide_stride=(48, 48)
    )
    cost = model_cost(preset, image_size=(80, 150))
    with torch.device("meta"):
        model = build_model(preset).eval()
        images = torch.empty(1, 3, 80, 150)
    direct = count_flops(model.inference, images)
    assert cost.windows == 2 * 3 and cost.mode == "slide"
    assert cost.flops == direct.total
    assert cost.em_flops == direct.by_module["decode_head.ema_module"]
    assert cost.non_local_flops == 6 * 4 * (8 * 8) ** 2 * preset.ema_channels


def test_models_flops_cli(capsys):
    assert main(["models", "--flops", "emanet_r18-d8_toycity"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("emanet_r18-d8_toycity ")]
    assert len(rows) == 2 and "(bundled)" in rows[0]  # the listing, then the cost table
    row = rows[1]
    cost = model_cost("emanet_r18-d8_toycity")
    assert format_costs([cost]).splitlines()[2] == row
    fields = row.split()
    assert float(fields[-3]) == pytest.approx(cost.flops / 1e9, abs=0.05)
    assert float(fields[-2]) == pytest.approx(cost.em_flops / 1e9, abs=0.005)
    assert "non-local" in out and "EM unit" in out


def test_training_flops_count_a_real_training_step():
    preset, crop = "emanet_r18-d8_toycity", (64, 128)
    flops = training_flops(preset, batch_size=2, crop_size=crop)
    torch.manual_seed(0)
    model = build_model(preset).train()  # real tensors on the CPU: the same count as meta's
    counter = FlopCounterMode(display=False)
    with counter:
        images = torch.randn(2, 3, *crop)
        model.forward_train(images, torch.randint(0, 19, (2, *crop)))["loss"].backward()
    assert flops == counter.get_total_flops()
    assert training_flops(preset, batch_size=1, crop_size=crop) * 2 == flops
    assert training_flops(preset) == training_flops(preset, crop_size=get_preset(preset).crop_size)
