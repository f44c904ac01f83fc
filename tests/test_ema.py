import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from emanet import EMAttention, EMTrace


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


def make_unit(c=16, k=8, t=3, dtype=torch.float64):
    unit = EMAttention(c, num_bases=k, num_iterations=t).to(dtype)
    return unit.eval()


def test_init_bases_unit_norm_and_shape():
    unit = EMAttention(32, num_bases=16)
    assert unit.bases.shape == (1, 32, 16)
    torch.testing.assert_close(unit.bases.norm(dim=1), torch.ones(1, 16))
    assert not unit.bases.requires_grad


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_matches_reference_float64(steps):
    unit = make_unit(t=steps)
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


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        unit = EMAttention(8, num_bases=4).train()  # same seed: same initial bases
        x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(100 + rank))
        unit(x)
        torch.save(unit.bases, os.path.join(out_dir, f"bases{rank}.pt"))
        # expected: momentum update with the mean over all ranks' final bases
    finally:
        dist.destroy_process_group()


def test_bases_identical_across_two_gloo_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
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
