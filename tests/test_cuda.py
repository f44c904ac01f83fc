"""The GPU path: autocast precisions, training and resuming on CUDA, CUDA vs CPU labels.

Skipped where CUDA is absent (the CPU guards of the same options are in test_precision.py,
test_runtime.py and test_pretrained.py). Imports no app or notebook dependency.
"""

import json

import numpy as np
import pytest
import torch

from emanet import build_model
from emanet.cli import main
from emanet.data.toycity import generate_toycity, render_scene
from emanet.predict import BUNDLED_CHECKPOINT, Segmenter
from emanet.runtime.device import resolve_device
from emanet.training.config import TrainConfig
from emanet.training.loop import train

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
needs_bundled = pytest.mark.skipif(not BUNDLED_CHECKPOINT.is_file(), reason="no bundled model")
HALF = ["bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return generate_toycity(tmp_path_factory.mktemp("city"), train=8, val=2, size=(96, 192))


def scenes(count=3, seed=11):
    rng = np.random.default_rng(seed)
    return [render_scene(256, 512, rng)[0] for _ in range(count)]


def agreement(a: Segmenter, b: Segmenter) -> float:
    same = total = 0
    for image in scenes():
        x, y = a(image).labels, b(image).labels
        same += int((x == y).sum())
        total += x.size
    return same / total


@pytest.mark.parametrize("precision", HALF)
def test_forward_train_and_inference_under_autocast(precision):
    torch.manual_seed(0)
    model = build_model("emanet_r50-d8_769x769_80k_cityscapes").cuda()
    images = torch.randn(2, 3, 193, 257, device="cuda")
    labels = torch.randint(0, 19, (2, 193, 257), device="cuda")
    labels[:, :8] = 255
    with torch.autocast("cuda", dtype=DTYPES[precision]):
        losses = model.train().forward_train(images, labels)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grad = model.decode_head.conv_seg.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert model.em_unit.bases.dtype == torch.float32
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=DTYPES[precision]):
        for mode in ("whole", "slide"):
            logits = model.inference(images[:1], mode=mode)
            assert logits.shape == (1, 19, 193, 257) and torch.isfinite(logits).all()


@needs_bundled
@pytest.mark.parametrize("precision", HALF)
def test_each_precision_agrees_with_fp32_on_the_bundled_model(precision):
    fp32 = Segmenter.from_pretrained(device="cuda")
    half = Segmenter.from_pretrained(device="cuda", precision=precision)
    assert agreement(fp32, half) >= 0.995


@needs_bundled
def test_cuda_and_cpu_labels_agree_in_fp32():
    cuda = Segmenter.from_pretrained(device="cuda")
    cpu = Segmenter.from_pretrained(device="cpu")
    assert agreement(cuda, cpu) >= 0.999


def test_cuda_without_index_is_the_current_device():
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    seg = Segmenter(build_model("emanet_r18-d8_toycity"), device="cuda")
    assert seg.device.index == torch.cuda.current_device()
    assert next(seg.model.parameters()).is_cuda


def test_train_20_iterations_with_default_arguments(city, tmp_path):
    work = tmp_path / "run"
    args = ["train", "--preset", "emanet_r18-d8_toycity", "--data", str(city)]
    assert main([*args, "--work-dir", str(work), "--iters", "20"]) == 0
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))  # iterations 10 and 20
    config = json.loads((work / "config.json").read_text())
    assert config["device"] is None and config["precision"] is None  # defaults: cuda, bf16
    assert (work / "model.pth").is_file()
    # and with --device cuda spelled out
    assert main([*args, "--work-dir", str(tmp_path / "b"), "--iters", "2", "--device", "cuda"]) == 0


def test_resume_on_cuda(city, tmp_path, train_interrupted):
    def config(work, **kw):
        return TrainConfig(
            preset="emanet_r18-d8_toycity",
            data_root=str(city),
            work_dir=str(work),
            iters=4,
            batch_size=2,
            crop_size=(64, 128),
            checkpoint_interval=2,
            num_workers=1,
            device="cuda",
            **kw,
        )

    straight, _ = train(config(tmp_path / "a"), progress=False)
    train_interrupted(config(tmp_path / "b"))
    assert torch.load(tmp_path / "b" / "latest.pth", weights_only=True)["iteration"] == 2
    resumed, _ = train(config(tmp_path / "b", resume=True), progress=False)
    # CUDA's backward kernels add with atomics: equal up to their rounding, not bit for bit.
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_compiled_segmenter_on_cuda_agrees():
    eager = Segmenter(build_model("emanet_r18-d8_toycity").eval(), device="cuda")
    compiled = Segmenter(eager.model, device="cuda", compile=True)
    image = scenes(1)[0]
    assert (compiled(image).labels == eager(image).labels).mean() >= 0.999


def test_em_unit_with_tf32_keeps_float32_accuracy():
    # bf16/fp16 runs allow TF32 for the unit's float32 products; its split operands must keep the
    # output within 1e-3 of float64 (plain TF32 products gave 1.27e-3 on an H200).
    from emanet import EMAttention, EMTrace
    from emanet.runtime.precision import tf32_matmuls

    torch.manual_seed(0)
    unit = EMAttention(512, num_bases=64, num_iterations=3).cuda().eval()
    x = torch.randn(2, 512, 64, 128, device="cuda")

    def relative_error(result, expected):
        return ((result.double() - expected).abs().max() / expected.abs().max()).item()

    expected = unit.double()(x.double())
    unit.float()
    with tf32_matmuls():
        error = relative_error(unit(x), expected)
    assert error < 1e-4, error
    # bf16 features (a bf16 run's): the unit's float32 bases and responsibilities, traced
    traced, reference = EMTrace(), EMTrace()
    unit.double()(x.bfloat16().double(), trace=reference)
    unit.float()
    with tf32_matmuls():
        unit(x.bfloat16(), trace=traced)
    for name in ("bases", "responsibilities"):
        result, expected = getattr(traced, name)[-1], getattr(reference, name)[-1]
        assert relative_error(result, expected) < 1e-4, name


@pytest.mark.parametrize("precision", HALF)
def test_pointwise_products_on_cuda_agree_with_convolutions(precision):
    # Half-precision segmenters run 1x1 convolutions as cuBLASLt products with the bias (and
    # ReLU) in the epilogue: each must give the convolution's values, to half rounding.
    from emanet.fast.fusion import PointwiseConv

    torch.manual_seed(0)
    dtype = DTYPES[precision]
    conv = torch.nn.Conv2d(1024, 256, 1).cuda().to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1024, 64, 128, device="cuda", dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for relu in (False, True):
            expected = conv(x).float()
            expected = expected.relu() if relu else expected
            result = PointwiseConv(conv, relu=relu)(x)
            assert result.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(result.float(), expected, rtol=2e-2, atol=2e-2)
    if BUNDLED_CHECKPOINT.exists():  # the segmenter uses them (labels: the precision tests)
        segmenter = Segmenter.from_pretrained(device="cuda", precision=precision)
        assert any(isinstance(m, PointwiseConv) for m in segmenter._net.modules())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_memory_levers_on_cuda_give_the_same_training_step(precision):
    # emanet.fast.loss (CUDA's float32 softmax of bf16 input, upsampling backward) and
    # emanet.fast.recompute (cuDNN BatchNorm recomputed in backward): the same gradients as the
    # plain forward pass, and less memory at the step's peak.
    from emanet.fast.loss import upsampled_cross_entropy
    from emanet.fast.recompute import RecomputeNormReLU

    torch.manual_seed(0)
    model = build_model("emanet_r50-d8_512x1024_80k_cityscapes").cuda().train()
    images = torch.randn(2, 3, 256, 512, device="cuda")
    labels = torch.randint(0, 19, (2, 256, 512), device="cuda")
    labels[:, :16] = 255
    start = {k: v.clone() for k, v in model.state_dict().items()}
    dtype = DTYPES.get(precision, torch.float32)
    results = []
    # Twice each: the first pair lets cuDNN choose its kernels (its trial workspaces would count
    # in the first step's peak when torch.backends.cudnn.benchmark is on).
    for recompute in (False, True, False, True):
        model.load_state_dict(start)
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        torch.manual_seed(1)  # dropout
        with torch.autocast("cuda", dtype=dtype, enabled=precision != "fp32"):
            with RecomputeNormReLU(model) if recompute else torch.enable_grad():
                loss = model.forward_train(images, labels)["loss"]
        loss.backward()
        peak = torch.cuda.max_memory_allocated() - before
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, peak))
    (loss, grads, peak), (loss_rc, grads_rc, peak_rc) = results[2:]
    assert loss_rc == pytest.approx(loss, rel=1e-6)
    for name, grad in grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert ((grads_rc[name] - grad).abs().max() / scale) < 2e-2, name
    assert peak_rc < 0.95 * peak  # counted on a CPU: 0.87 (bf16), 0.90 (fp32)

    logits = torch.randn(2, 19, 32, 64, device="cuda", dtype=dtype, requires_grad=True)
    loss = upsampled_cross_entropy(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    up = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear")
    per_pixel = torch.nn.functional.cross_entropy(
        up.float(), labels, ignore_index=255, reduction="none"
    )
    reference = per_pixel.mean()  # mmseg's average: over every label pixel
    (expected,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=0)
    # Both gradients go through CUDA's upsampling backward, which adds in the logits' dtype with
    # atomics in no fixed order: compared relative to the largest entry, not entry by entry.
    error = (grad.float() - expected.float()).abs().max() / expected.float().abs().max()
    assert error < (2e-2 if precision == "bf16" else 1e-5), error
