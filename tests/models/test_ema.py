import math
import os

import pytest
import torch
import torch.nn.functional as F

from emanet import EMAttention, EMTrace
from emanet.models.ema import em_attention


def reference_em(x, bases, steps):
    """mmsegmentation's EMAModule forward, written with einsum as it does (float64 here)."""
    b, c, h, w = x.shape
    feats = x.view(b, c, h * w)
    mu = bases.repeat(b, 1, 1)
    for _ in range(steps):
        z = torch.einsum("bcn,bck->bnk", feats, mu)
        z = F.softmax(z, dim=2)
        z_normed = F.normalize(z, dim=1, p=1)
        mu = torch.einsum("bcn,bnk->bck", feats, z_normed)
        mu = F.normalize(mu, dim=1, p=2)
    recon = torch.einsum("bck,bnk->bcn", mu, z)
    return recon.view(b, c, h, w), mu, z


def make_unit(c=16, k=8, t=3, dtype=torch.float64, fast=True):
    unit = EMAttention(c, num_bases=k, num_iterations=t, fast=fast).to(dtype)
    return unit.eval()


def test_init_bases_unit_norm_and_shape():
    unit = EMAttention(32, num_bases=16)
    assert unit.bases.shape == (1, 32, 16)
    torch.testing.assert_close(unit.bases.norm(dim=1), torch.ones(1, 16))
    assert not unit.bases.requires_grad


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("steps", [1, 3, 5])
def test_matches_reference_float64(steps, fast):
    unit = make_unit(t=steps, fast=fast)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64) * 3
    expected, _, _ = reference_em(x, unit.bases, steps)
    torch.testing.assert_close(unit(x), expected, rtol=1e-10, atol=1e-10)


def test_channels_last_same_result_and_layout():
    unit = make_unit()
    x = torch.randn(2, 16, 6, 4, dtype=torch.float64)
    y = unit(x)
    y_cl = unit(x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y, rtol=1e-12, atol=1e-12)


def test_float32_matches_reference():
    unit = EMAttention(64, num_bases=16).eval()
    x = torch.randn(2, 64, 8, 8)
    expected, _, _ = reference_em(x.double(), unit.bases.double(), 3)
    torch.testing.assert_close(unit(x), expected.float(), rtol=1e-4, atol=1e-5)


def test_trace_invariants_and_override():
    unit = make_unit(c=16, k=8, t=3)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    trace = EMTrace()
    y = unit(x, num_iterations=6, trace=trace)
    assert trace.num_iterations == 6
    assert unit.num_iterations == 3
    for resp, mu in zip(trace.responsibilities, trace.bases, strict=True):
        assert resp.shape == (2, 8, 5, 7)
        assert mu.shape == (2, 16, 8)
        torch.testing.assert_close(resp.sum(dim=1), torch.ones(2, 5, 7, dtype=torch.float64))
        assert (resp >= 0).all()
        torch.testing.assert_close(mu.norm(dim=1), torch.ones(2, 8, dtype=torch.float64))
    assert trace.initial_bases.shape == (2, 16, 8)
    # the traced run returns what the untraced run returns, and the last traced step is it
    torch.testing.assert_close(y, unit(x, num_iterations=6), rtol=0, atol=0)
    ref, mu, z = reference_em(x, unit.bases, 6)
    torch.testing.assert_close(trace.bases[-1], mu)
    torch.testing.assert_close(trace.responsibilities[-1], z.transpose(1, 2).reshape(2, 8, 5, 7))


def test_iteration_count_changes_result():
    unit = make_unit()
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    assert not torch.allclose(unit(x, num_iterations=1), unit(x, num_iterations=4))
    unit.num_iterations = 4
    torch.testing.assert_close(unit(x), unit(x, num_iterations=4))
    with pytest.raises(ValueError):
        unit(x, num_iterations=0)


def test_em_converges_to_clusters():
    # Two well separated directions: after EM every pixel's responsibility mass lies on
    # bases that point towards its own cluster.
    gen = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(2, 16, generator=gen, dtype=torch.float64), dim=1) * 8
    assign = torch.arange(64) % 2
    feats = centres[assign] + 0.1 * torch.randn(64, 16, generator=gen, dtype=torch.float64)
    x = feats.T.reshape(1, 16, 8, 8)
    unit = make_unit(c=16, k=4)
    trace = EMTrace()
    unit(x, num_iterations=10, trace=trace)
    resp = trace.responsibilities[-1].reshape(4, 64)
    best = resp.argmax(dim=0)
    # each base serves one cluster only
    for k in best.unique():
        assert assign[best == k].unique().numel() == 1


def test_no_gradient_through_unit_and_eval_keeps_bases():
    unit = EMAttention(8, num_bases=4)
    x = torch.randn(1, 8, 3, 3, requires_grad=True)
    unit.eval()
    before = unit.bases.clone()
    y = unit(x)
    assert not y.requires_grad
    torch.testing.assert_close(unit.bases, before, rtol=0, atol=0)


def test_training_momentum_update():
    unit = make_unit().train()
    before = unit.bases.clone()
    x = torch.randn(3, 16, 4, 4, dtype=torch.float64)
    _, mu, _ = reference_em(x, before, 3)
    unit(x)
    new = F.normalize(mu.mean(dim=0, keepdim=True), dim=1)
    torch.testing.assert_close(unit.bases, 0.9 * before + 0.1 * new)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        EMAttention(8, momentum=2.0)
    with pytest.raises(ValueError):
        EMAttention(8)(torch.randn(1, 4, 2, 2))


def _ddp_worker(rank, world, out_dir):
    torch.manual_seed(0)
    unit = EMAttention(8, num_bases=4).train()  # same seed: same initial bases
    x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(100 + rank))
    unit(x)
    torch.save(unit.bases, os.path.join(out_dir, f"bases{rank}.pt"))
    # expected: momentum update with the mean over all ranks' final bases


@pytest.mark.slow
def test_bases_identical_across_two_gloo_processes(tmp_path, run_gloo):
    run_gloo(_ddp_worker, str(tmp_path))
    b0 = torch.load(tmp_path / "bases0.pt", weights_only=True)
    b1 = torch.load(tmp_path / "bases1.pt", weights_only=True)
    torch.testing.assert_close(b0, b1, rtol=0, atol=0)
    # and equal to the single-process computation over both ranks' batches
    torch.manual_seed(0)
    unit = EMAttention(8, num_bases=4).double()
    start = unit.bases.clone()
    mus = []
    for rank in range(2):
        x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(100 + rank))
        _, mu, _ = reference_em(x.double(), start, 3)
        mus.append(mu.mean(dim=0, keepdim=True))
    new = F.normalize((mus[0] + mus[1]) / 2, dim=1)
    torch.testing.assert_close(b0.double(), 0.9 * start + 0.1 * new, rtol=1e-5, atol=1e-6)
    assert math.isclose(float(b0.norm(dim=1).mean()), 1.0, rel_tol=0.05)


# --- inverse temperature, centred cosine E-step, mixed precision ----------------------------


def reference_em_variant(x, bases, steps, lam=1.0, centered_cosine=False):
    """The paper's EM with ``softmax(lam * X^T mu)`` and, optionally, on centred unit pixels."""
    b, c, h, w = x.shape
    feats = x.reshape(b, c, h * w)
    if centered_cosine:
        feats = feats - feats.mean(dim=2, keepdim=True)
        feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    mu = bases.repeat(b, 1, 1)
    for _ in range(steps):
        z = F.softmax(lam * torch.einsum("bcn,bck->bnk", feats, mu), dim=2)
        mu = torch.einsum("bcn,bnk->bck", feats, z / z.sum(dim=1, keepdim=True))
        mu = mu / mu.norm(dim=1, keepdim=True)
    return torch.einsum("bck,bnk->bcn", mu, z).reshape(b, c, h, w), mu, z


def _unit_as_of_1392e09(x, bases, steps):
    """The unit's code before inverse temperature existed: lambda = 1 must be this, bit for bit,
    with either implementation."""
    b, c, h, w = x.shape
    feats = x.reshape(b, c, h * w)
    mu = bases.expand(b, -1, -1)
    resp = feats.new_empty(b, h * w, mu.shape[2])
    for _ in range(steps):
        torch.bmm(feats.transpose(1, 2), mu, out=resp)
        torch.softmax(resp, dim=2, out=resp)
        mu = F.normalize(torch.bmm(feats, resp), dim=1)
    return torch.bmm(mu, resp.transpose(1, 2)).view(b, c, h, w)


@pytest.mark.parametrize("fast", [True, False])
def test_default_unit_is_bit_identical_to_the_unit_before_inverse_temperature(fast):
    unit = EMAttention(32, num_bases=8, fast=fast).eval()
    x = torch.randn(2, 32, 6, 5) * 4
    expected = _unit_as_of_1392e09(x, unit.bases, 3)
    assert torch.equal(unit(x), expected)
    assert torch.equal(unit(x, inverse_temperature=1.0), expected)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    ("lam", "centered"), [(0.25, False), (3.0, False), (0.25, True), (3.0, True), (40.0, True)]
)
def test_inverse_temperature_and_centered_cosine_match_reference(lam, centered, fast):
    unit = EMAttention(16, 8, inverse_temperature=lam, centered_cosine=centered, fast=fast)
    unit = unit.double().eval()
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64) * 2 + 1
    expected, mu, z = reference_em_variant(x, unit.bases, 3, lam, centered)
    torch.testing.assert_close(unit(x), expected, rtol=1e-9, atol=1e-10)
    # channels_last runs the same computation
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(unit(x_cl), expected, rtol=1e-9, atol=1e-10)
    # a per-call override equals a unit built with that value
    plain = EMAttention(16, 8, centered_cosine=centered).double().eval()
    plain.bases.copy_(unit.bases)
    torch.testing.assert_close(plain(x, inverse_temperature=lam), expected, rtol=1e-9, atol=1e-10)


def test_larger_inverse_temperature_sharpens_responsibilities():
    unit = EMAttention(16, 8, centered_cosine=True).double().eval()
    x = torch.randn(1, 16, 8, 8, dtype=torch.float64)
    entropies = []
    for lam in (1.0, 10.0, 100.0):
        trace = EMTrace()
        unit(x, trace=trace, inverse_temperature=lam)
        z = trace.responsibilities[-1]
        entropies.append(float(-(z * z.clamp_min(1e-300).log()).sum(dim=1).mean()))
    assert entropies[0] > entropies[1] > entropies[2]


def test_centered_cosine_ignores_feature_scale_and_common_offset():
    unit = EMAttention(16, 8, inverse_temperature=20.0, centered_cosine=True).double().eval()
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    offset = torch.randn(1, 16, 1, 1, dtype=torch.float64) * 5
    trace_a, trace_b = EMTrace(), EMTrace()
    unit(x, trace=trace_a)
    unit(0.01 * x + offset, trace=trace_b)
    torch.testing.assert_close(trace_b.responsibilities[-1], trace_a.responsibilities[-1])


def test_invalid_inverse_temperature():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="inverse_temperature"):
            EMAttention(8, inverse_temperature=bad)
        with pytest.raises(ValueError, match="inverse_temperature"):
            EMAttention(8)(torch.randn(1, 8, 2, 2), inverse_temperature=bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_features_with_float32_bases_run_in_float32(dtype):
    unit = EMAttention(32, num_bases=8, inverse_temperature=5.0, centered_cosine=True).eval()
    x = torch.randn(2, 32, 6, 6)
    expected = unit(x)
    trace = EMTrace()
    y = unit(x.to(dtype), trace=trace)
    assert y.dtype == dtype
    assert trace.responsibilities[-1].dtype == torch.float32
    assert trace.bases[-1].dtype == torch.float32
    # only the input's rounding differs from the float32 run
    torch.testing.assert_close(y.float(), expected, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_dtype_mix_reproduced_on_cpu(monkeypatch, dtype):
    # CUDA autocast runs F.normalize in float32 while bmm runs in bf16/fp16: the unit used to
    # crash there ("Expected out tensor to have dtype float, but got BFloat16") because the
    # bases turned float32 after the first M-step and met a half `out=` buffer. CPU autocast
    # keeps normalize in bf16, so simulate CUDA's policy for it and run under CPU autocast.
    import emanet.models.ema as ema_module

    real_normalize = F.normalize

    def normalize_in_float32(tensor, *args, **kwargs):
        return real_normalize(tensor.float(), *args, **kwargs)

    monkeypatch.setattr(ema_module.F, "normalize", normalize_in_float32)
    unit = EMAttention(32, num_bases=8).train()
    same = EMAttention(32, num_bases=8).train()
    same.bases.copy_(unit.bases)
    x = torch.randn(2, 32, 5, 5).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        y = unit(x)
    assert y.dtype == dtype
    assert unit.bases.dtype == torch.float32
    # the same update as a float32 run on the same (rounded) features
    monkeypatch.setattr(ema_module.F, "normalize", real_normalize)
    same(x.float())
    torch.testing.assert_close(unit.bases, same.bases, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("autocast", [False, True])
def test_the_unit_compiles_into_one_graph(autocast, fast):
    # A graph break inside the unit makes torch.compile re-trace the rest of forward on every
    # call until its recompile limit, then run it eagerly.
    torch._dynamo.reset()
    unit = EMAttention(16, num_bases=4, num_iterations=2, centered_cosine=True, fast=fast).eval()
    x = torch.randn(2, 16, 6, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        explanation = torch._dynamo.explain(unit)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_plain_function_reads_like_the_paper():
    # em_attention on its own, against the float64 reference with the paper's M-step division
    torch.manual_seed(3)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    bases = F.normalize(torch.randn(1, 16, 8, dtype=torch.float64), dim=1)
    trace = EMTrace()
    recon, mu = em_attention(x, bases.expand(2, -1, -1), 4, 2.5, True, trace)
    expected, expected_mu, z = reference_em_variant(x, bases, 4, 2.5, True)
    torch.testing.assert_close(recon, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mu, expected_mu, rtol=1e-10, atol=1e-12)
    assert trace.num_iterations == 4
    torch.testing.assert_close(trace.responsibilities[-1], z.transpose(1, 2).reshape(2, 8, 5, 7))


@pytest.mark.parametrize("centered", [False, True])
def test_trace_keeps_the_pixels_as_the_e_step_compares_them(centered):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 7)
    traces = []
    for fast in (False, True):
        unit = EMAttention(16, num_bases=8, centered_cosine=centered, fast=fast).eval()
        unit.bases.copy_(EMAttention(16, num_bases=8).bases)
        traces.append(EMTrace())
        unit(x, num_iterations=2, trace=traces[-1])
    plain, fast = traces
    assert plain.features.shape == (2, 16, 5, 7)
    torch.testing.assert_close(fast.features, plain.features, rtol=0, atol=0)
    flat = x.flatten(2)
    if centered:
        flat = torch.nn.functional.normalize(flat - flat.mean(dim=2, keepdim=True), dim=1)
    torch.testing.assert_close(plain.features, flat.view_as(x))
    # channels_last input: the same pixels
    cl = EMTrace()
    EMAttention(16, num_bases=8, centered_cosine=centered).eval()(
        x.contiguous(memory_format=torch.channels_last), trace=cl
    )
    torch.testing.assert_close(cl.features, plain.features)
