"""Our checkpoint format, safe reading of every layout, strict and non-strict loading."""

from __future__ import annotations

import io
import logging
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from emanet.io.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

CLASSES = ["road", "car", "sky"]
PALETTE = [(128, 64, 128), (0, 0, 142), (70, 130, 180)]

# The model card of mmsegmentation's configs/emanet (config name -> checkpoint file).
ZOO_FILES = {
    "emanet_r50-d8_512x1024_80k_cityscapes": (
        "emanet_r50-d8_512x1024_80k_cityscapes_20200901_100301-c43fcef1.pth"
    ),
    "emanet_r101-d8_512x1024_80k_cityscapes": (
        "emanet_r101-d8_512x1024_80k_cityscapes_20200901_100301-2d970745.pth"
    ),
    "emanet_r50-d8_769x769_80k_cityscapes": (
        "emanet_r50-d8_769x769_80k_cityscapes_20200901_100301-16f8de52.pth"
    ),
    "emanet_r101-d8_769x769_80k_cityscapes": (
        "emanet_r101-d8_769x769_80k_cityscapes_20200901_100301-47a324ce.pth"
    ),
}


class Head(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv_seg = nn.Conv2d(4, num_classes, 1)
        self.register_buffer("bases", torch.randn(1, 4, 2))


class TinySegmentor(nn.Module):
    """Key layout like mmsegmentation's (backbone.* with BN, decode_head.* with a buffer)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.decode_head = Head(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head.conv_seg(self.backbone(x))


class NotAWeight:
    """A custom class: unpickling it needs code, so weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.payload = 42


def trained_model(num_classes: int = 3) -> TinySegmentor:
    """A model whose every tensor differs from a fresh one (BN statistics included)."""
    model = TinySegmentor(num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model.train()(torch.randn(2, 3, 8, 8))  # moves running stats, num_batches_tracked = 1
    return model


def assert_same_weights(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------------------------
# Our format and atomic writes
# --------------------------------------------------------------------------------------------


def test_save_read_round_trip_is_bit_exact(tmp_path):
    model = trained_model()
    path = save_checkpoint(
        tmp_path / "m.pth",
        model,
        preset="emanet_r18-d8_toycity",
        classes=CLASSES,
        palette=PALETTE,
        meta={"iter": 7, "note": "hi"},
    )
    info = read_checkpoint(path)
    assert info.format == "emanet" and info.path == path
    assert_same_weights(info.state_dict, model.state_dict())
    assert info.state_dict["backbone.1.num_batches_tracked"].item() == 1
    assert info.preset == "emanet_r18-d8_toycity"
    assert info.classes == tuple(CLASSES)
    assert info.palette == tuple(PALETTE)
    assert info.meta == {"iter": 7, "note": "hi"}  # as stored: nothing added
    # The raw file has the documented layout.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "emanet" and raw["version"] == 1
    assert set(raw) == {"format", "version", "preset", "classes", "palette", "meta", "state_dict"}

    fresh = TinySegmentor()
    loaded = load_checkpoint(fresh, path, progress=False)
    assert_same_weights(fresh.state_dict(), model.state_dict())
    assert loaded.classes == tuple(CLASSES) and loaded.meta["iter"] == 7


def test_half_checkpoint_loads_back_into_float32_within_fp16_rounding(tmp_path):
    model = trained_model()
    full = save_checkpoint(tmp_path / "f.pth", model, preset="p", classes=CLASSES, palette=PALETTE)
    half = save_checkpoint(
        tmp_path / "h.pth", model, preset="p", classes=CLASSES, palette=PALETTE, half=True
    )
    stored = read_checkpoint(half).state_dict
    assert stored["backbone.0.weight"].dtype == torch.float16
    assert stored["backbone.1.num_batches_tracked"].dtype == torch.int64
    assert half.stat().st_size < full.stat().st_size

    fresh = TinySegmentor()
    load_checkpoint(fresh, half, progress=False)
    for key, value in fresh.state_dict().items():
        reference = model.state_dict()[key]
        assert value.dtype == reference.dtype, key  # cast back to the model's dtype
        if value.is_floating_point():
            torch.testing.assert_close(value, reference, rtol=2**-11, atol=1e-7)
        else:
            assert torch.equal(value, reference)


def test_half_keeps_tensors_float16_cannot_hold(tmp_path, caplog):
    state = {"small": torch.tensor([0.5, 1.0]), "huge": torch.tensor([1e6, 1.0])}
    with caplog.at_level(logging.WARNING, logger="emanet.io.checkpoint"):
        path = save_checkpoint(
            tmp_path / "h.pth", state, preset="p", classes=[], palette=[], half=True
        )
    stored = read_checkpoint(path).state_dict
    assert stored["small"].dtype == torch.float16
    assert stored["huge"].dtype == torch.float32 and stored["huge"][0].item() == 1e6
    assert "huge" in caplog.text


def test_failed_save_leaves_old_file_intact_and_no_temp_file(tmp_path, monkeypatch):
    path = save_checkpoint(
        tmp_path / "m.pth", trained_model(), preset="p", classes=CLASSES, palette=PALETTE
    )
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, trained_model(), preset="p", classes=CLASSES, palette=PALETTE)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]


def test_save_checkpoint_validates_its_arguments(tmp_path):
    model = TinySegmentor()
    with pytest.raises(ValueError, match="palette"):
        save_checkpoint(tmp_path / "a.pth", model, preset="p", classes=CLASSES, palette=PALETTE[:2])
    with pytest.raises(TypeError, match="meta"):
        save_checkpoint(
            tmp_path / "a.pth",
            model,
            preset="p",
            classes=CLASSES,
            palette=PALETTE,
            meta={"bad": NotAWeight()},
        )
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# mmsegmentation and plain state dicts
# --------------------------------------------------------------------------------------------


def mmseg_checkpoint(model: nn.Module) -> dict:
    """The layout mmcv's save_checkpoint writes (mmseg 0.x meta: plain Python values only)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    return {
        "meta": {
            "env_info": "sys.platform: linux\nPython: 3.7.7\nPyTorch: 1.5.1",
            "config": "norm_cfg = dict(type='SyncBN', requires_grad=True)\nmodel = dict(...)",
            "seed": 0,
            "exp_name": "emanet_r50-d8_512x1024_80k_cityscapes.py",
            "mmseg_version": "0.5.0+b2724da",
            "mmcv_version": "1.1.1",
            "time": "Tue Sep  1 10:03:01 2020",
            "CLASSES": tuple(CLASSES),
            "PALETTE": [list(c) for c in PALETTE],
            "epoch": 1,
            "iter": 80000,
            "hook_msgs": {"last_ckpt": "work_dirs/x/iter_80000.pth"},
        },
        "state_dict": OrderedDict(model.state_dict()),
        "optimizer": optimizer.state_dict(),
    }


def test_mmseg_checkpoint_loads_strictly(tmp_path):
    model = trained_model()
    path = tmp_path / "mmseg.pth"
    torch.save(mmseg_checkpoint(model), path)

    info = read_checkpoint(path)
    assert info.format == "mmseg"
    assert info.classes == tuple(CLASSES)
    assert info.palette == tuple(PALETTE)
    assert info.preset is None
    assert info.meta["iter"] == 80000 and info.meta["CLASSES"] == tuple(CLASSES)

    fresh = TinySegmentor()
    loaded = load_checkpoint(fresh, str(path), progress=False)
    assert_same_weights(fresh.state_dict(), model.state_dict())
    assert loaded.meta["mmseg_version"] == "0.5.0+b2724da"
    assert loaded.classes == tuple(CLASSES)


def test_ddp_module_prefix_is_stripped(tmp_path):
    model = trained_model()
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"meta": {}, "state_dict": prefixed}, tmp_path / "ddp.pth")
    fresh = TinySegmentor()
    load_checkpoint(fresh, tmp_path / "ddp.pth", progress=False)
    assert_same_weights(fresh.state_dict(), model.state_dict())


def test_plain_state_dict(tmp_path):
    model = trained_model()
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    info = read_checkpoint(tmp_path / "plain.pth")
    assert info.format == "plain" and info.meta == {} and info.classes is None
    fresh = TinySegmentor()
    load_checkpoint(fresh, tmp_path / "plain.pth", progress=False)
    assert_same_weights(fresh.state_dict(), model.state_dict())


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    state = trained_model(num_classes=3).state_dict()
    del state["backbone.1.running_var"]
    state["decode_head.extra.weight"] = torch.zeros(2)
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "m.pth")

    target = TinySegmentor(num_classes=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, tmp_path / "m.pth", progress=False)
    message = str(info.value)
    assert str(tmp_path / "m.pth") in message
    assert "1 missing, 1 unexpected, 2 wrongly shaped" in message
    assert "missing keys (1): backbone.1.running_var" in message
    assert "unexpected keys (1): decode_head.extra.weight" in message
    assert "decode_head.conv_seg.weight: (3, 4, 1, 1) vs (5, 4, 1, 1)" in message
    assert "decode_head.conv_seg.bias: (3,) vs (5,)" in message
    assert "strict=False" in message
    assert_same_weights(target.state_dict(), before)  # nothing was loaded


def test_mismatch_report_is_truncated_with_counts(tmp_path):
    torch.save({f"w{i}": torch.zeros(1) for i in range(25)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(TinySegmentor(), tmp_path / "other.pth", progress=False)
    message = str(info.value)
    assert "unexpected keys (25)" in message and "... and 15 more" in message
    assert "w9" in message and "w10," not in message
    assert "No key matches at all" in message
    assert len(message.splitlines()) < 12


def test_non_strict_loads_only_matching_keys(tmp_path, caplog):
    source = trained_model(num_classes=3)
    torch.save(source.state_dict(), tmp_path / "m.pth")
    target = TinySegmentor(num_classes=5)
    head_before = target.decode_head.conv_seg.weight.clone()
    with caplog.at_level(logging.WARNING, logger="emanet.io.checkpoint"):
        load_checkpoint(target, tmp_path / "m.pth", strict=False, progress=False)
    assert torch.equal(target.backbone[0].weight, source.backbone[0].weight)
    assert torch.equal(target.backbone[1].running_mean, source.backbone[1].running_mean)
    assert torch.equal(target.decode_head.conv_seg.weight, head_before)
    assert "wrongly shaped keys (2)" in caplog.text


# --------------------------------------------------------------------------------------------
# Unsafe and broken files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "culprit"),
    [(NotAWeight(), "NotAWeight"), (np.float64(0.5), "numpy")],
    ids=["custom-class", "numpy-scalar"],
)
def test_file_needing_arbitrary_code_is_refused(tmp_path, monkeypatch, payload, culprit):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": TinySegmentor().state_dict(), "meta": {"x": payload}}, path)

    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(TinySegmentor(), path, progress=False)
    message = str(info.value)
    assert str(path) in message
    assert "weights_only" in message and "arbitrary code" in message
    assert culprit in message
    assert calls == [True]  # never retried with weights_only=False


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated_zip(tmp_path: Path) -> bytes:
    torch.save(trained_model().state_dict(), tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    return data[: len(data) // 2]


def _truncated_legacy(tmp_path: Path) -> bytes:
    path = tmp_path / "legacy.pth"
    torch.save(trained_model().state_dict(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    return data[: len(data) - 40]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: b"", "empty"),
        (lambda tmp: bytes(range(256)) * 8, "not a PyTorch checkpoint"),
        (lambda tmp: b"\x80\x02" + bytes(range(200)), "corrupt"),
        (lambda tmp: b"PK\x03\x04" + bytes(range(200)), "truncated or corrupt"),
        (_truncated_zip, "truncated or corrupt"),
        (_truncated_legacy, "truncated or corrupt"),
        (lambda tmp: _png_bytes(), "not a PyTorch checkpoint"),
        (lambda tmp: b"hello world\n", "not a PyTorch checkpoint"),
    ],
    ids=[
        "empty",
        "random",
        "bad-pickle",
        "bad-zip",
        "truncated-zip",
        "truncated-legacy",
        "png",
        "text",
    ],
)
def test_broken_files_raise_checkpoint_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "broken.pth"
    path.write_bytes(make(tmp_path))
    with pytest.raises(CheckpointError, match=reason) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_file_and_odd_layouts(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a dict"):
        read_checkpoint(tmp_path / "list.pth")
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="unrecognised layout"):
        read_checkpoint(tmp_path / "odd.pth")
    torch.save({"format": "emanet", "version": 99, "state_dict": {}}, tmp_path / "new.pth")
    with pytest.raises(CheckpointError, match="version 99"):
        read_checkpoint(tmp_path / "new.pth")


def test_mmseg_1x_dataset_meta_and_malformed_palette(tmp_path):
    state = trained_model().state_dict()
    meta = {"dataset_meta": {"classes": tuple(CLASSES), "palette": [list(c) for c in PALETTE]}}
    torch.save({"meta": meta, "state_dict": state}, tmp_path / "v1.pth")
    info = read_checkpoint(tmp_path / "v1.pth")
    assert info.classes == tuple(CLASSES) and info.palette == tuple(PALETTE)
    torch.save({"meta": {"PALETTE": [[1, 2]]}, "state_dict": state}, tmp_path / "bad.pth")
    assert read_checkpoint(tmp_path / "bad.pth").palette is None


@pytest.mark.parametrize(
    "palette, reason",
    [
        ([(1, 2)] * 3, "not an .r, g, b. triple"),
        ([(300, 0, 0)] * 3, "not an .r, g, b. triple"),
        ([(0, 0, 0)] * 2, "2 colours for 3 classes"),
        ("red", "not a list of colours"),
    ],
)
def test_malformed_palettes_are_ignored_with_a_warning(tmp_path, caplog, palette, reason):
    meta = {"CLASSES": list(CLASSES), "PALETTE": palette}
    torch.save({"meta": meta, "state_dict": trained_model().state_dict()}, tmp_path / "m.pth")
    with caplog.at_level(logging.WARNING, logger="emanet.io.checkpoint"):
        info = read_checkpoint(tmp_path / "m.pth")
    assert info.palette is None and info.classes == tuple(CLASSES)
    assert re.search(reason, caplog.text) and "m.pth" in caplog.text


def test_the_test_scale_travels_with_our_checkpoints(tmp_path):
    model = trained_model()
    options = dict(preset="p", classes=CLASSES, palette=PALETTE)
    save_checkpoint(tmp_path / "scaled.pth", model, test_scale=[256, 128], **options)
    assert read_checkpoint(tmp_path / "scaled.pth").test_scale == (256, 128)
    save_checkpoint(tmp_path / "plain.pth", model, **options)  # readers use the preset's
    assert read_checkpoint(tmp_path / "plain.pth").test_scale is None
    with pytest.raises(ValueError, match="test scale"):
        save_checkpoint(tmp_path / "bad.pth", model, test_scale=(256, 0), **options)


def test_key_report_of_a_checkpoint_that_does_not_fit(tmp_path):
    save_checkpoint(tmp_path / "m.pth", trained_model(3), preset="p", classes=[], palette=[])
    report = read_checkpoint(tmp_path / "m.pth").load_into(TinySegmentor(5), strict=False)
    assert report.misshaped == (
        ("decode_head.conv_seg.weight", (3, 4, 1, 1), (5, 4, 1, 1)),
        ("decode_head.conv_seg.bias", (3,), (5,)),
    )
    assert not report.missing and not report.unexpected and not report.exact
    assert "decode_head.conv_seg.weight" not in report.loaded
    assert len(report.loaded) == len(TinySegmentor().state_dict()) - 2
