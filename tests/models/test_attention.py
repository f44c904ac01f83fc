import math

import numpy as np
import pytest
import torch

from emanet import EMAttention, EMTrace
from emanet.models.attention import attention_stats, trace_stats


def numpy_stats(resp, bases, min_share=0.02):
    """The four measures written out per pixel and per pair with numpy loops (independent)."""
    resp = np.asarray(resp, dtype=np.float64).reshape(resp.shape[0], resp.shape[1], -1)
    bases = np.asarray(bases, dtype=np.float64)
    out = []
    for z, mu in zip(resp, bases, strict=True):
        k, n = z.shape
        ent = [-sum(p * math.log(p) for p in z[:, i] if p > 0) / math.log(k) for i in range(n)]
        mx = [z[:, i].max() for i in range(n)]
        wins = np.zeros(k)
        for i in range(n):
            wins[int(np.argmax(z[:, i]))] += 1
        active = int((wins / n >= min_share).sum())
        cos = []
        for a in range(k):
            for b in range(k):
                if a != b:
                    va, vb = mu[:, a], mu[:, b]
                    cos.append(abs(va @ vb) / (np.linalg.norm(va) * np.linalg.norm(vb)))
        out.append((np.mean(ent), np.mean(mx), active, np.mean(cos)))
    return out


def test_matches_an_independent_numpy_count():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 5, 7, generator=gen) * 3
    resp = logits.softmax(dim=1)
    bases = torch.randn(2, 4, 6, generator=gen)
    got = attention_stats(resp, bases, min_share=0.05)
    for stats, (ent, mx, active, cos) in zip(got, numpy_stats(resp, bases, 0.05), strict=True):
        assert stats.entropy == pytest.approx(ent, rel=1e-6)
        assert stats.max_responsibility == pytest.approx(mx, rel=1e-6)
        assert stats.active_bases == active
        assert stats.mean_abs_cos == pytest.approx(cos, rel=1e-6)


def test_extremes_uniform_and_one_hot():
    k, h, w = 8, 4, 8
    uniform = torch.full((1, k, h, w), 1.0 / k)
    same = torch.ones(1, 16, k)  # all bases in one direction
    (stats,) = attention_stats(uniform, same)
    assert stats.entropy == pytest.approx(1.0)
    assert stats.max_responsibility == pytest.approx(1.0 / k)
    assert stats.mean_abs_cos == pytest.approx(1.0)
    # one-hot: pixel i owned by base i % k, each base wins 1/8 of the pixels; orthogonal bases
    owner = torch.arange(h * w) % k
    one_hot = torch.nn.functional.one_hot(owner, k).T.reshape(1, k, h, w).float()
    orthogonal = torch.eye(16)[:, :k].unsqueeze(0)
    (stats,) = attention_stats(one_hot, orthogonal, min_share=0.1)
    assert stats.entropy == 0.0
    assert stats.max_responsibility == 1.0
    assert stats.active_bases == k
    assert stats.mean_abs_cos == 0.0
    (stats,) = attention_stats(one_hot, orthogonal, min_share=0.2)
    assert stats.active_bases == 0


def test_trace_stats_reads_the_asked_iteration():
    unit = EMAttention(16, num_bases=8, inverse_temperature=30.0, centered_cosine=True).eval()
    trace = EMTrace()
    unit(torch.randn(1, 16, 6, 6), trace=trace, num_iterations=3)
    last = trace_stats(trace)[0]
    first = trace_stats(trace, iteration=0)[0]
    assert last == attention_stats(trace.responsibilities[2], trace.bases[2])[0]
    assert first == attention_stats(trace.responsibilities[0], trace.bases[0])[0]
    with pytest.raises(ValueError, match="empty"):
        trace_stats(EMTrace())


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="disagree"):
        attention_stats(torch.rand(1, 4, 2, 2), torch.rand(1, 3, 5))
