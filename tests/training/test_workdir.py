"""The work dir: saved state that resumes exactly, and failed saves that lose nothing."""

import errno
import json

import pytest
import torch

from emanet.io import atomic
from emanet.io.atomic import WriteError
from emanet.training.config import TrainConfig
from emanet.training.loop import train
from emanet.training.run import Run
from tests.training.conftest import config


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_interrupted_then_resumed_run_equals_uninterrupted(
    city, tmp_path, train_interrupted, workers
):
    straight, _ = train(config(city, tmp_path / "a", num_workers=workers), progress=False)
    train_interrupted(config(city, tmp_path / "b", num_workers=workers))
    state = torch.load(tmp_path / "b" / "latest.pth", weights_only=True)
    assert state["iteration"] == 2
    resumed, _ = train(
        config(city, tmp_path / "b", resume=True, num_workers=workers), progress=False
    )
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_resuming_keeps_this_devices_optimizer_implementation(tmp_path):
    # A state saved by a CUDA run (fused SGD) resumed on the CPU runs the CPU's update, with the
    # saved momenta.
    from emanet import build_model
    from emanet.training.loop import build_optimizer
    from emanet.training.workdir import restore_state, save_state

    cfg = TrainConfig(preset="emanet_r18-d8_toycity", data_root="", work_dir="")
    run = Run(rank=0, world=1, device=torch.device("cpu"), precision="fp32")
    model = build_model("emanet_r18-d8_toycity")
    saved = build_optimizer(model, cfg, run)
    saved.param_groups[0]["fused"] = True  # as build_optimizer makes it on CUDA
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    saved.step()
    save_state(tmp_path / "latest.pth", model, saved, 7, cfg, run)
    resumed = build_optimizer(model, cfg, run)
    assert restore_state(tmp_path / "latest.pth", model, resumed, run) == 7
    assert not resumed.param_groups[0]["fused"]
    for p in resumed.param_groups[0]["params"]:
        assert torch.equal(resumed.state[p]["momentum_buffer"], saved.state[p]["momentum_buffer"])


def test_a_full_disk_at_a_checkpoint_loses_nothing_and_resume_finishes(tmp_path, monkeypatch):
    # The second save (iteration 4) finds the disk full: the run stops with one line that says
    # latest.pth of iteration 2 is intact and how to go on; --resume then finishes the run.
    city = tmp_path / "city"
    from emanet.data.toycity import generate_toycity

    generate_toycity(city, train=4, val=1, size=(48, 96), seed=3)
    real_replace, saves = atomic.os.replace, []

    def replace_then_fill_the_disk(tmp, path):
        if str(path).endswith("latest.pth"):
            saves.append(path)
            if len(saves) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(tmp, path)

    monkeypatch.setattr(atomic.os, "replace", replace_then_fill_the_disk)
    cfg = config(city, tmp_path / "run")
    with pytest.raises(WriteError) as caught:
        train(cfg, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "latest.pth" in message and "No space left" in message
    assert "previous latest.pth is intact" in message
    assert "--resume: it continues from iteration 2" in message
    assert torch.load(tmp_path / "run" / "latest.pth", weights_only=True)["iteration"] == 2
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(atomic.os, "replace", real_replace)  # space freed
    cfg.resume = True
    resumed, _ = train(cfg, progress=False)
    straight, _ = train(config(city, tmp_path / "straight"), progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_a_work_dir_that_cannot_be_written_stops_before_training(city, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(WriteError, match="cannot write .*config.json"):
        train(config(city, blocker / "run"), progress=False)


def test_model_pth_records_the_scale_it_was_validated_at(tmp_path):
    from emanet.data.toycity import generate_toycity
    from emanet.io.checkpoint import read_checkpoint

    city = generate_toycity(tmp_path / "city", train=2, val=1, size=(48, 96), seed=3)
    train(config(city, tmp_path / "a", iters=1, val_scale=(128, 64)), progress=False)
    train(config(city, tmp_path / "b", iters=1), progress=False)
    assert read_checkpoint(tmp_path / "a" / "model.pth").test_scale == (128, 64)
    assert read_checkpoint(tmp_path / "b" / "model.pth").test_scale == (512, 256)  # the preset's
    assert json.loads((tmp_path / "a" / "config.json").read_text())["val_scale"] == [128, 64]
