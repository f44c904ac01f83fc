"""ONNX export: onnxruntime gives the PyTorch logits, the file says what it holds, and what
cannot be exported says why."""

import importlib.metadata
import importlib.util
import json
from collections import Counter

import numpy as np
import pytest
import torch

from emanet import build_model
from emanet.cli import main
from emanet.deploy import onnx as onnx_export
from emanet.deploy.onnx import ExportError, export_onnx
from emanet.models.ema import EMOptions
from emanet.predict import Segmenter

ort = pytest.importorskip("onnxruntime", reason="the 'export' extra is not installed")
onnx = pytest.importorskip("onnx", reason="the 'export' extra is not installed")

TOLERANCE = 1e-4  # max |ONNX - PyTorch| / max |PyTorch|


def relative_difference(session, model, images, num_iterations=None):
    with torch.no_grad():
        reference = model.eval()(images, EMOptions(num_iterations)).numpy()
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    assert logits.shape == reference.shape
    return float(np.abs(logits - reference).max() / np.abs(reference).max())


def op_counts(path):
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def bundled_dynamic(tmp_path_factory):
    """The bundled model exported with dynamic axes through the CLI, T = 2."""
    path = tmp_path_factory.mktemp("onnx") / "bundled.onnx"
    args = ["export", "bundled", "--out", str(path), "--dynamic", "--iterations", "2"]
    assert main([*args, "--height", "64", "--width", "128", "--no-check"]) == 0
    return path


def test_bundled_model_dynamic_matches_pytorch_at_two_sizes(bundled_dynamic):
    model = Segmenter.from_pretrained(device="cpu", fast=False).model
    session = ort.InferenceSession(str(bundled_dynamic), providers=["CPUExecutionProvider"])
    (images_in,) = session.get_inputs()
    assert images_in.name == "images" and images_in.shape == ["batch", 3, "height", "width"]
    assert session.get_outputs()[0].shape == ["batch", 19, "height", "width"]
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 64, 128), (2, 3, 96, 72)]:  # neither is the export example's batch+size
        images = torch.randn(shape, generator=generator)
        difference = relative_difference(session, model, images, num_iterations=2)
        assert difference <= TOLERANCE, (shape, difference)
    # T is fixed at export: the file is not the model run with its trained T = 3.
    images = torch.randn(1, 3, 64, 128, generator=generator)
    assert relative_difference(session, model, images, num_iterations=3) > TOLERANCE


def test_metadata_records_iterations_preset_and_pipeline(bundled_dynamic):
    meta = ort.InferenceSession(str(bundled_dynamic)).get_modelmeta().custom_metadata_map
    preset = Segmenter.from_pretrained(device="cpu", fast=False).preset
    assert meta["preset"] == preset.name == "emanet_r18-d8_toycity"
    assert meta["num_iterations"] == "2"
    assert meta["centered_cosine"] == str(preset.centered_cosine).lower()
    assert float(meta["inverse_temperature"]) == preset.inverse_temperature
    assert json.loads(meta["preset_config"])["ema_channels"] == preset.ema_channels
    assert json.loads(meta["classes"])[:2] == ["road", "sidewalk"]
    assert json.loads(meta["mean"]) == [123.675, 116.28, 103.53]
    assert meta["emanet_version"] == importlib.metadata.version("emanet")
    # EM unrolled: one softmax per E-step; two matmuls per iteration plus the reconstruction.
    ops = op_counts(bundled_dynamic)
    assert ops["Softmax"] == 2 and ops["MatMul"] == 2 * 2 + 1


@pytest.mark.parametrize(
    "unit",
    [
        {"inverse_temperature": 1.0, "centered_cosine": False},  # mmsegmentation's unit
        {"inverse_temperature": 10.0, "centered_cosine": True},
    ],
    ids=["default-unit", "cosine-unit"],
)
def test_unit_options_are_exported(tmp_path, unit):
    """Static 64x96 export at the default T of a small model with each kind of EM unit."""
    torch.manual_seed(3)
    model = build_model("emanet_r18-d8_toycity", **unit).eval()
    path = export_onnx(model, tmp_path / "unit.onnx", height=64, width=96)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 64, 96]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["centered_cosine"] == str(unit["centered_cosine"]).lower()
    assert float(meta["inverse_temperature"]) == unit["inverse_temperature"]
    assert meta["num_iterations"] == "3"
    images = torch.randn(1, 3, 64, 96)
    assert relative_difference(session, model, images) <= TOLERANCE
    # The unit's options change the logits: the check above tells the two units apart.
    other = build_model(
        "emanet_r18-d8_toycity",
        inverse_temperature=11.0 - unit["inverse_temperature"],
        centered_cosine=not unit["centered_cosine"],
    ).eval()
    other.load_state_dict(model.state_dict())
    assert relative_difference(session, other, images) > TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == ["unit.onnx"]  # no temporary left over


@pytest.mark.slow
def test_random_r50_at_512x1024(tmp_path):
    torch.manual_seed(0)
    model = build_model("emanet_r50-d8_512x1024_80k_cityscapes").eval()
    path = export_onnx(model, tmp_path / "r50.onnx", height=512, width=1024)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 512, 1024)
    assert relative_difference(session, model, images) <= TOLERANCE
    assert session.get_modelmeta().custom_metadata_map["preset"] == model.preset.name


def test_slide_mode_is_refused_with_the_reason(tmp_path):
    with torch.device("meta"):
        model = build_model("emanet_r50-d8_769x769_80k_cityscapes")
    with pytest.raises(ExportError, match="slide") as info:
        export_onnx(model, tmp_path / "slide.onnx")
    message = str(info.value)
    assert "window" in message and "mode='whole'" in message and "769x769" in message
    assert not (tmp_path / "slide.onnx").exists()


def test_bad_options_are_refused(tmp_path):
    model = build_model("emanet_r18-d8_toycity")
    with pytest.raises(ExportError, match="num_iterations"):
        export_onnx(model, tmp_path / "m.onnx", num_iterations=0)
    with pytest.raises(ExportError, match="at least 16x16"):
        export_onnx(model, tmp_path / "m.onnx", height=8, width=64)
    with pytest.raises(ExportError, match="3 class names"):
        export_onnx(model, tmp_path / "m.onnx", classes=["a", "b", "c"], palette=[(0, 0, 0)] * 3)


def test_missing_exporter_packages_name_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name)
    )
    with pytest.raises(ExportError, match=r"onnxscript.*emanet\[export\]"):
        export_onnx(build_model("emanet_r18-d8_toycity"), tmp_path / "m.onnx")


def test_version_without_an_installed_package(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert onnx_export._package_version() == "unknown"
