"""Precision and compilation options: emanet.runtime.precision, Segmenter(precision=...,
compile=...)
and the command-line options, all on the CPU (the EM unit under CUDA's dtype mix is in
test_ema.py)."""

import logging

import numpy as np
import pytest
import torch

from emanet import build_model
from emanet.cli import main
from emanet.data.cityscapes import label_ids_to_train_ids
from emanet.data.toycity import render_scene
from emanet.predict import BUNDLED_CHECKPOINT, Segmenter
from emanet.runtime.precision import PRECISIONS, autocast, check_precision, default_precision


def test_precisions_and_defaults():
    assert PRECISIONS == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert default_precision("cpu") == "fp32"
    assert default_precision(torch.device("cuda", 0)) == "bf16"
    for name in PRECISIONS:
        assert check_precision(name, "cpu") == name
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of fp32, bf16, fp16"):
        check_precision("fp8", "cpu")


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(ValueError, match="bf16 needs a GPU with bfloat16 support; Tesla V100"):
        check_precision("bf16", "cuda:0")
    assert check_precision("fp16", "cuda:0") == "fp16"


def test_autocast_contexts():
    x = torch.randn(2, 8)
    w = torch.randn(8, 4)
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert (x @ w).dtype == torch.float32
    for name in ("bf16", "fp16"):
        with autocast(name, "cpu"):
            assert (x @ w).dtype == PRECISIONS[name]
    with pytest.raises(ValueError):
        autocast("half", "cpu")


@pytest.mark.filterwarnings("ignore:.*Disabling autocast")
def test_half_precision_on_cuda_allows_tf32_only_inside(monkeypatch):
    # The switch is PyTorch's process-wide flag; the context sets it and restores what was there.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    matmul = torch.backends.cuda.matmul
    original = matmul.allow_tf32
    try:
        for before in (False, True):
            matmul.allow_tf32 = before
            with autocast("bf16", "cuda"):
                assert matmul.allow_tf32
            assert matmul.allow_tf32 is before
            with autocast("fp32", "cuda"), autocast("bf16", "cpu"):
                assert matmul.allow_tf32 is before  # fp32, and every CPU run, stay strict
        matmul.allow_tf32 = False
        with pytest.raises(RuntimeError, match="inside"), autocast("fp16", "cuda"):
            raise RuntimeError("inside")
        assert matmul.allow_tf32 is False
    finally:
        matmul.allow_tf32 = original


def scenes(count=2, seed=5):
    """Toy-city street scenes (the bundled model's domain) and their trainIds."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image, label_ids, _ = render_scene(256, 512, rng)
        out.append((image, label_ids_to_train_ids(label_ids)))
    return out


@pytest.mark.skipif(not BUNDLED_CHECKPOINT.is_file(), reason="bundled model not installed")
def test_bundled_model_in_bf16_agrees_with_fp32():
    fp32 = Segmenter.from_pretrained(device="cpu")
    bf16 = Segmenter.from_pretrained(device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    agree = total = 0
    for image, _ in scenes():
        a, b = fp32(image).labels, bf16(image).labels
        agree += int((a == b).sum())
        total += a.size
    assert agree / total >= 0.995
    # batches (emanet predict) run in the segmenter's precision too
    assert np.array_equal(bf16.predict_batch([image])[0].labels, b)


def test_fp16_runs_and_bad_options_are_refused(monkeypatch):
    torch.manual_seed(0)
    model = build_model("emanet_r18-d8_toycity")
    seg = Segmenter(model, device="cpu", precision="fp16")
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    result = seg(image, trace=True)
    assert result.labels.shape == (24, 40) and result.labels.max() < 19
    assert result.trace.bases[-1].dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision"):
        Segmenter(model, device="cpu", precision="int8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Segmenter(model, device="cuda")


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the 'eager' backend: Dynamo captures the graphs as for real, without
    generating kernels (inductor's C++ compilation takes minutes on 2 cores)."""
    real = torch.compile
    calls = []

    def compile_eager(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_eager)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_segmenter_says_so_once_and_gives_the_same_labels(eager_compile, caplog):
    torch.manual_seed(0)
    model = build_model("emanet_r18-d8_toycity")
    eager = Segmenter(model, device="cpu")
    compiled = Segmenter(model, device="cpu", compile=True)
    assert len(eager_compile) == 1  # torch.compile was asked for, once
    assert model._compiled_call_impl is None  # on a copy: the caller's model stays eager
    image = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    with caplog.at_level(logging.INFO, logger="emanet.runtime.device"):
        first = compiled(image).labels
        second = compiled(image).labels
    assert caplog.text.count("compiling emanet_r18-d8_toycity") == 1
    assert np.array_equal(first, second)
    assert (first == eager(image).labels).mean() > 0.999


def test_cli_precision_option_and_errors(tmp_path, caplog, monkeypatch):
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.fromarray(scenes(1)[0][0]).save(image)
    assert main(["predict", str(image), "--out", str(tmp_path / "out"), "--precision", "bf16"]) == 0
    assert (tmp_path / "out" / "scene_mask.png").is_file()
    with pytest.raises(SystemExit):
        main(["predict", str(image), "--out", str(tmp_path), "--precision", "fp64"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", str(image), "--out", str(tmp_path), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in caplog.text
