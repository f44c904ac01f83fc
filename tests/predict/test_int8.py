"""int8 on the onnxruntime backend: calibrated on toy-city scenes, the bundled model keeps its
labels on scenes it was not calibrated on; other models need calibration images, and the
calibration is part of the cached file's key."""

import numpy as np
import pytest

from emanet import build_model
from emanet.data.toycity import render_scene
from emanet.predict import Segmenter
from emanet.predict.int8 import CalibrationError, folder_calibration, toycity_calibration

pytest.importorskip("onnxruntime", reason="the 'export' extra is not installed")
pytest.importorskip("onnxscript", reason="the 'export' extra is not installed")


def test_bundled_int8_keeps_the_labels_on_unseen_scenes(onnx_cache):
    fp32 = Segmenter.from_pretrained(backend="onnxruntime")
    int8 = Segmenter.from_pretrained(backend="onnxruntime", precision="int8")
    # Unseen: neither the calibration scenes' seed nor the toy city's splits.
    scenes = [render_scene(256, 512, np.random.default_rng([77, i]))[0] for i in range(3)]
    agreement = np.mean([(int8(s).labels == fp32(s).labels).mean() for s in scenes])
    assert agreement >= 0.99
    trace = int8(scenes[0], trace=True).trace  # the EM unit stays float32, with its trace
    assert trace.num_iterations == 3 and trace.features is not None
    names = [path.name for path in (onnx_cache / "onnx").iterdir()]
    assert {"fp32", "int8"} <= {name.split("-")[-2] for name in names if "-T3-" in name}


def test_int8_needs_calibration_images_for_other_models(tmp_path, onnx_cache):
    model = build_model("emanet_r18-d8_toycity")
    with pytest.raises(CalibrationError, match="--calibration DIR"):
        Segmenter(model, backend="onnxruntime", precision="int8")
    with pytest.raises(CalibrationError, match="not a folder"):
        Segmenter(model, backend="onnxruntime", precision="int8", calibration=tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no files"):
        folder_calibration(tmp_path / "empty")


def test_calibration_keys_follow_the_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"one")
    first = folder_calibration(folder).key
    (folder / "a.png").write_bytes(b"two")
    assert folder_calibration(folder).key != first
    assert toycity_calibration(4).key != toycity_calibration(8).key
    assert len(list(toycity_calibration(2, size=(32, 64)).images())) == 2
