"""The trainer: what a run writes, diverged losses, DDP ranks, pretrained starts, validation
as `emanet eval` scores it, the optimiser, the memory format."""

import json
import os

import pytest
import torch

from emanet.cli import main as cli_main
from emanet.io.checkpoint import read_checkpoint
from emanet.models.backbone import ResNetV1c
from emanet.models.presets import get_preset
from emanet.models.segmentor import EMANet
from emanet.runtime.errors import OutOfMemory
from emanet.training.config import TrainConfig, build_parser, config_from_args
from emanet.training.data import build_loaders
from emanet.training.loop import TrainingDiverged, poly_lr, train
from emanet.training.run import Run
from tests.training.conftest import config


def test_poly_lr_schedule():
    cfg = TrainConfig(preset="x", data_root="", work_dir="", iters=100)
    assert poly_lr(0, cfg) == pytest.approx(0.01)
    assert poly_lr(100, cfg) == pytest.approx(1e-4)
    assert poly_lr(50, cfg) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)


def test_train_writes_checkpoints_metrics_and_model(city, tmp_path):
    model, metrics = train(config(city, tmp_path, val_interval=2), progress=False)
    assert {"latest.pth", "model.pth", "metrics.jsonl", "config.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["iter"] for r in rows if "mIoU" in r] == [2, 4]
    assert 0.0 <= metrics["mIoU"] <= 100.0
    saved = read_checkpoint(tmp_path / "model.pth")
    assert saved.preset == "emanet_r18-d8_toycity"
    for key, value in model.state_dict().items():
        assert torch.equal(saved.state_dict[key], value), key
    # the EM bases moved away from their initialisation by the momentum updates
    assert not torch.equal(EMANet(model.preset).em_unit.bases, model.em_unit.bases)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(city, tmp_path, monkeypatch):
    real = EMANet.forward_train
    calls = {"n": 0}

    def exploding(self, images, labels):
        calls["n"] += 1
        losses = real(self, images, labels)
        if calls["n"] == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(EMANet, "forward_train", exploding)
    with pytest.raises(TrainingDiverged, match="iteration 3"):
        train(config(city, tmp_path), progress=False)
    state = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("world", [1, 2])
def test_a_nan_loss_updates_nothing(world):
    # One process checks the loss after queuing the backward pass, several before it (a NaN
    # would reach every rank's gradients): either way no weight or momentum changes. (World 2
    # without a process group: the check's position is what differs, not DDP's wrapper.)
    from emanet import build_model
    from emanet.data.transforms import TrainTransform
    from emanet.training.loop import TrainStep, train_step

    torch.manual_seed(0)
    model = build_model("emanet_r18-d8_toycity").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cfg = TrainConfig(preset="emanet_r18-d8_toycity", data_root="", work_dir="", iters=10)
    run = Run(rank=0, world=world, device=torch.device("cpu"), precision="fp32")
    images = torch.full((2, 3, 32, 48), float("nan"))
    batch = (images, torch.zeros(2, 32, 48, dtype=torch.uint8), torch.zeros(2, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="iteration 5"):
        train_step(TrainStep(model), optimizer, TrainTransform(), batch, 4, cfg, run)
    assert not optimizer.state  # no momentum buffer was created
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked", "bases")):
            continue  # the forward pass itself updates these, as in any training step
        assert torch.equal(value, before[key]), key


def _ddp_worker(rank, world, city, work_dir, out_dir):
    model, _ = train(config(city, work_dir, iters=3, batch_size=1, device="cpu"), progress=False)
    torch.save(
        {"bases": model.em_unit.bases, "conv": model.decode_head.conv_seg.weight.detach()},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_ranks_identical(city, tmp_path, run_gloo):
    run_gloo(_ddp_worker, str(city), str(tmp_path / "run"), str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["bases"], r1["bases"])
    assert torch.equal(r0["conv"], r1["conv"])
    assert (tmp_path / "run" / "model.pth").is_file()


def test_pretrained_backbone_is_where_training_starts(city, tmp_path):
    preset = get_preset("emanet_r18-d8_toycity")
    donor = ResNetV1c(18, stem_channels=preset.stem_channels, base_width=preset.base_width)
    for p in donor.parameters():
        torch.nn.init.uniform_(p, 0.5, 1.0)
    fc = {"fc.weight": torch.zeros(1000, donor.out_channels[-1]), "fc.bias": torch.zeros(1000)}
    torch.save({"state_dict": {**donor.state_dict(), **fc}}, tmp_path / "resnet18_v1c.pth")
    # learning rate 0: the weights stay what the run started from
    cfg = config(city, tmp_path / "run", iters=1, lr=0.0, min_lr=0.0)
    cfg.pretrained = str(tmp_path / "resnet18_v1c.pth")
    model, _ = train(cfg, progress=False)
    for key, value in donor.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(model.backbone.state_dict()[key], value), key
    plain = config(city, tmp_path / "plain", iters=1, lr=0.0, min_lr=0.0)
    random_start, _ = train(plain, progress=False)
    assert not torch.equal(random_start.backbone.stem[0].weight, donor.stem[0].weight)


def test_fp16_training_is_refused(city, tmp_path):
    with pytest.raises(ValueError, match="fp16 would need loss scaling"):
        train(config(city, tmp_path, precision="fp16"), progress=False)


def test_build_optimizer_is_mmsegs_sgd_over_trainable_parameters():
    from emanet import build_model
    from emanet.training.loop import build_optimizer

    model = build_model("emanet_r18-d8_toycity")
    cfg = TrainConfig(preset="emanet_r18-d8_toycity", data_root="", work_dir="", lr=0.02)
    run = Run(rank=0, world=1, device=torch.device("cpu"), precision="fp32")
    optimizer = build_optimizer(model, cfg, run)
    (group,) = optimizer.param_groups
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.02, 0.9, 5e-4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) < len(list(model.parameters()))  # the EM bases are not SGD's
    assert [id(p) for p in group["params"]] == [id(p) for p in trainable]
    assert not group["fused"]  # the fused kernel is for CUDA (tests/test_cuda.py trains with it)


def test_channels_last_is_the_default_and_trains_as_nchw_does(city):
    from emanet.training.loop import (
        build_optimizer,
        build_training_model,
        train_step,
        wrap_for_training,
    )

    required = ["--preset", "p", "--data", "d", "--work-dir", "w"]
    assert TrainConfig("p", "d", "w").channels_last
    options = build_parser().parse_args([*required, "--no-channels-last"])
    assert not config_from_args(options).channels_last
    preset = get_preset("emanet_r18-d8_toycity")
    run = Run(rank=0, world=1, device=torch.device("cpu"), precision="fp32")
    batch = None
    results = {}
    for channels_last in (True, False):
        cfg = config(city, "", channels_last=channels_last, pretrained="none", lr=0.05)
        model = build_training_model(cfg, preset, run, resuming=False)
        stem = model.backbone.stem[0]
        assert stem.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        seen = []
        stem.register_forward_pre_hook(
            lambda _, args, seen=seen: seen.append(
                args[0].is_contiguous(memory_format=torch.channels_last)
            )
        )
        if batch is None:
            loader, transform, _ = build_loaders(cfg, preset, run)
            batch = next(iter(loader))
        net, optimizer = wrap_for_training(model, cfg, run), build_optimizer(model, cfg, run)
        losses, _ = train_step(net, optimizer, transform, batch, 0, cfg, run)
        assert seen == [channels_last]  # the images reach the network in the run's layout
        results[channels_last] = (losses["loss"].item(), model.state_dict())
    (loss, state), (loss_nchw, state_nchw) = results[True], results[False]
    assert loss == pytest.approx(loss_nchw, rel=1e-5)
    for key, value in state.items():  # one SGD step: the same weights, to float rounding
        torch.testing.assert_close(value, state_nchw[key], rtol=1e-4, atol=1e-5, msg=key)


def test_running_out_of_memory_is_one_line_saying_what_to_do(city, tmp_path, monkeypatch):
    real, calls = EMANet.forward_train, {"n": 0}

    def too_big(self, images, labels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                "allocate memory: you tried to allocate 99999999999 bytes."
            )
        return real(self, images, labels)

    monkeypatch.setattr(EMANet, "forward_train", too_big)
    with pytest.raises(OutOfMemory) as caught:
        train(config(city, tmp_path), progress=False)
    message = str(caught.value)
    assert "\n" not in message and "iteration 3" in message and "2 crops of 32x48" in message
    assert "latest.pth (iteration 2) is intact" in message and "--batch-size" in message
    assert "--resume" in message


@pytest.mark.slow
@pytest.mark.parametrize("val_scale", [None, (160, 80)])
def test_final_validation_equals_emanet_eval_on_model_pth(city, tmp_path, val_scale):
    # 48x96 scenes: the test scale resizes them, so the pipeline matters; model.pth records the
    # scale the run validated at, and emanet eval uses it.
    cfg = config(city, tmp_path, iters=2, val_interval=2, val_scale=val_scale)
    _, validation = train(cfg, progress=False)
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(tmp_path / "model.pth"), "--data", str(city), "--out", str(out)]
    assert cli_main(args) == 0
    evaluation = json.loads(out.read_text())
    for key in ("aAcc", "mIoU", "mAcc"):
        assert abs(validation[key] - evaluation[key]) <= 1e-9, key
    assert validation["images"] == evaluation["images"] == 2
    if val_scale is not None:  # --scale asks for another one
        assert cli_main([*args, "--scale", "512", "256"]) == 0
        assert json.loads(out.read_text())["mIoU"] != pytest.approx(validation["mIoU"], abs=1e-9)
