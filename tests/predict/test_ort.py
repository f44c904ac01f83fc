"""The onnxruntime backend: the labels, logits and EM trace of the torch backend in every test
mode, from a graph exported once into a cache that is reused, keyed by the weights, and written
atomically."""

import importlib.util
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from emanet import build_model
from emanet.cli import main
from emanet.predict import Segmenter, ort
from emanet.runtime.backends import BackendError, MissingExtraError

pytest.importorskip("onnxruntime", reason="the 'export' extra is not installed")
pytest.importorskip("onnxscript", reason="the 'export' extra is not installed")

TOLERANCE = 1e-4  # max |ONNX - PyTorch| / max |PyTorch|, as for the export


@pytest.fixture(scope="module")
def bundled(onnx_cache):
    """The bundled model on both backends; the onnxruntime one has run once."""
    torch_backend = Segmenter.from_pretrained(device="cpu")
    onnx_backend = Segmenter.from_pretrained(backend="onnxruntime")
    onnx_backend(photo(40, 64))
    return torch_backend, onnx_backend


def photo(height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    # smooth, so that the model sees regions rather than noise
    return np.cumsum(image, axis=1, dtype=np.uint32).astype(np.uint8) // 2 + image // 2


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_bundled_model_same_logits_and_labels_at_two_sizes(bundled):
    torch_backend, onnx_backend = bundled
    assert onnx_backend.device.type == "cpu" and onnx_backend.backend == "onnxruntime"
    for size in [(256, 512), (90, 70)]:  # the test size, and another aspect
        image = photo(*size, seed=size[0])
        x = torch_backend.preprocess(Image.fromarray(image))
        difference = relative_difference(onnx_backend.infer(x), torch_backend.infer(x))
        assert difference <= TOLERANCE, (size, difference)
        assert (onnx_backend(image).labels == torch_backend(image).labels).all(), size


def test_slide_aug_test_and_batches_run_through_the_session(bundled):
    model = bundled[0].model
    image = photo(120, 240, seed=3)
    # Small test scales (the same weights: the same cached graph): slide at (320, 160) has
    # four windows of the preset's 128x256 crop.
    for scale, options in (((320, 160), {"mode": "slide"}), ((192, 96), {"aug_test": True})):
        torch_backend = Segmenter(model, device="cpu", test_scale=scale)
        onnx_backend = Segmenter(model, backend="onnxruntime", test_scale=scale)
        expected = torch_backend(image, **options).labels
        assert (onnx_backend(image, **options).labels == expected).mean() > 0.999, options
    torch_backend, onnx_backend = bundled
    images = [photo(60, 80, seed=s) for s in (4, 5)]
    for ours, theirs in zip(
        onnx_backend.predict_batch(images), torch_backend.predict_batch(images), strict=True
    ):
        assert (ours.labels == theirs.labels).mean() > 0.999


def test_trace_outputs_are_the_torch_trace(bundled):
    torch_backend, onnx_backend = bundled
    image = photo(100, 150, seed=6)
    expected = torch_backend(image, trace=True).trace
    got = onnx_backend(image, trace=True).trace
    assert got.num_iterations == expected.num_iterations == 3
    close = dict(rtol=0, atol=1e-4)
    torch.testing.assert_close(got.initial_bases, expected.initial_bases, **close)
    torch.testing.assert_close(got.features, expected.features, **close)
    for ours, theirs in zip(got.responsibilities, expected.responsibilities, strict=True):
        torch.testing.assert_close(ours, theirs, **close)
    for ours, theirs in zip(got.bases, expected.bases, strict=True):
        torch.testing.assert_close(ours, theirs, **close)


def test_sessions_run_on_the_torch_threads_and_sleep_when_idle(bundled):
    # Idle threads that spin would take the cores PyTorch's work after a run needs (the
    # labels, the explorer's maps) and those of the other open sessions.
    _, onnx_backend = bundled
    session = onnx_backend._net.session(3, float(onnx_backend.model.em_unit.inverse_temperature))
    options = session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_iterations_and_lambda_choose_their_own_cached_graph(bundled, onnx_cache, caplog):
    torch_backend, onnx_backend = bundled
    image = photo(64, 96, seed=7)
    options = dict(num_iterations=1, inverse_temperature=20.0, trace=True)
    expected = torch_backend(image, **options)
    with caplog.at_level(logging.INFO, logger="emanet.predict.ort"):
        got = onnx_backend(image, **options)
    assert "exporting emanet_r18-d8_toycity (T=1, lambda=20)" in caplog.text  # the first use
    assert got.trace.num_iterations == 1
    assert (got.labels == expected.labels).mean() > 0.999
    names = sorted(path.name for path in (onnx_cache / "onnx").iterdir())
    assert any("-T1-lambda20-fp32-" in name for name in names)
    assert not [name for name in names if name.startswith(".")]  # no temporary left over


def test_the_cache_is_reused_and_keyed_by_the_weights(bundled, onnx_cache, monkeypatch):
    _, onnx_backend = bundled
    files = sorted((onnx_cache / "onnx").iterdir())
    stamps = [path.stat().st_mtime_ns for path in files]
    exports = []
    monkeypatch.setattr(
        ort.OnnxRuntimeNet, "_export", lambda self, path, *a: exports.append(path) or path
    )
    again = Segmenter.from_pretrained(backend="onnxruntime")  # another segmenter, as a process
    again(photo(32, 48))
    assert exports == [] and [path.stat().st_mtime_ns for path in files] == stamps
    # One weight changed: another file.
    model = onnx_backend.model
    changed = build_model(model.preset)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.decode_head.conv_seg.bias[0] += 1e-3
    other = Segmenter(changed, backend="onnxruntime")
    path = other._net.cached_file(3, float(model.em_unit.inverse_temperature))
    assert exports == [path] and path not in files
    (original,) = [file for file in files if "-T3-" in file.name and "-fp32-" in file.name]
    assert path.name.split("-")[:-1] == original.name.split("-")[:-1]  # same preset, T, lambda


def test_an_interrupted_export_leaves_no_file(onnx_cache, monkeypatch):
    class Program:
        def save(self, path, external_data):
            with open(path, "wb") as f:
                f.write(b"half a graph")
            raise KeyboardInterrupt

    monkeypatch.setattr(ort, "onnx_program", lambda *a, **k: Program())
    before = sorted((onnx_cache / "onnx").iterdir())
    segmenter = Segmenter(build_model("emanet_r18-d8_toycity"), backend="onnxruntime")
    with pytest.raises(KeyboardInterrupt):
        segmenter(photo(32, 32))
    assert sorted((onnx_cache / "onnx").iterdir()) == before


@pytest.mark.slow
def test_random_r50_same_labels_at_two_sizes(onnx_cache):
    model = build_model("emanet_r50-d8_512x1024_80k_cityscapes").eval()
    torch_backend = Segmenter(model, device="cpu", fast=False)
    onnx_backend = Segmenter(model, backend="onnxruntime")
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 64, 128), (2, 3, 72, 56)]:
        x = torch.randn(shape, generator=generator)
        expected = torch_backend.infer(x)
        got = onnx_backend.infer(x)
        assert relative_difference(got, expected) <= TOLERANCE, shape
        assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.999, shape


def test_what_the_backend_cannot_do_is_refused(monkeypatch):
    model = build_model("emanet_r18-d8_toycity")
    with pytest.raises(BackendError, match="onnxruntime backend"):
        Segmenter(model, device="cpu", precision="int8")  # int8 is onnxruntime's
    with pytest.raises(BackendError, match="for the onnxruntime backend"):
        Segmenter(model, backend="onnxruntime", precision="bf16")
    with pytest.raises(BackendError, match="--compile"):
        Segmenter(model, backend="onnxruntime", compile=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    with pytest.raises(MissingExtraError, match=r"onnxruntime.*emanet\[export\]"):
        Segmenter(model, backend="onnxruntime")


def test_cli_predict_on_the_onnxruntime_backend(bundled, tmp_path, caplog):
    torch_backend, _ = bundled
    image = tmp_path / "in" / "street.png"
    image.parent.mkdir()
    Image.fromarray(photo(64, 128, seed=9)).save(image)
    args = ["predict", str(image), "--out", str(tmp_path / "out")]
    assert main([*args, "--backend", "onnxruntime"]) == 0
    written = np.asarray(Image.open(tmp_path / "out" / "street_trainIds.png"))
    assert (written == torch_backend(image).labels).all()
    assert main([*args, "--precision", "int8"]) == 2  # int8 without --backend onnxruntime
    assert "onnxruntime backend" in caplog.text
