"""emanet.fast.em against the plain em_attention: bit for bit where the docstring says so, and
float32 accuracy from (emulated) TF32 products."""

import pytest
import torch
import torch.nn.functional as F

from emanet import EMAttention, EMTrace
from emanet.fast import em as fast_em
from emanet.fast.em import fast_em_attention, split_tf32
from emanet.models.ema import em_attention
from tests.models.test_ema import reference_em


def _inputs(seed=0, channels=32, bases=8, size=(12, 20)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, *size, generator=gen) * 3
    mu = F.normalize(torch.randn(2, channels, bases, generator=gen), dim=1)
    return x, mu


@pytest.mark.parametrize(("lam", "centered"), [(1.0, False), (7.5, False), (50.0, True)])
def test_fast_equals_plain_bit_for_bit_on_contiguous_float32(lam, centered):
    x, mu = _inputs()
    plain_trace, fast_trace = EMTrace(), EMTrace()
    recon, bases = em_attention(x, mu, 3, lam, centered, plain_trace)
    fast_recon, fast_bases = fast_em_attention(x, mu, 3, lam, centered, fast_trace)
    assert torch.equal(fast_recon, recon) and torch.equal(fast_bases, bases)
    for a, b in zip(fast_trace.responsibilities, plain_trace.responsibilities, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("lam", "centered"), [(1.0, False), (50.0, True)])
def test_fast_reads_channels_last_in_place_and_returns_channels_last(lam, centered):
    x, mu = _inputs(1)
    recon, bases = em_attention(x, mu, 3, lam, centered)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    fast_recon, fast_bases = fast_em_attention(x_cl, mu, 3, lam, centered)
    assert fast_recon.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast_recon, recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_bases, bases, rtol=1e-5, atol=1e-6)


def test_split_tf32_is_exact_and_hi_fits_tf32():
    torch.manual_seed(0)
    a = torch.randn(3, 64, 50) * torch.logspace(-20, 20, 50)
    a[0, 0, :3] = torch.tensor([0.0, -0.0, 1.0])
    hi, lo = split_tf32(a)
    assert torch.equal(hi + lo, a)  # exact: no bit of `a` is lost
    assert not (hi.view(torch.int32) & 0x1FFF).any()  # 10 mantissa bits left: exact in TF32
    assert bool((lo.abs() <= a.abs() * 2.0**-10).all())
    assert torch.equal(torch.sign(hi[a != 0]), torch.sign(a[a != 0]))
    # bf16 and fp16 values are exact in TF32 already (why the unit skips their low part)
    for dtype in (torch.bfloat16, torch.float16):
        assert not split_tf32(a.clamp(-6e4, 6e4).to(dtype).float())[1].any()
    # transposed views split the same as their contiguous copies
    hi_t, lo_t = split_tf32(a.transpose(1, 2))
    assert torch.equal(hi_t, hi.transpose(1, 2)) and torch.equal(lo_t, lo.transpose(1, 2))


def _tf32_bmm(a, b, *, out=None):
    """A CUDA TF32 matmul, emulated: operands rounded to nearest with 10 mantissa bits, products
    summed exactly (float64), result in float32."""

    def to_tf32(t):
        bits = t.float().contiguous().view(torch.int32)
        return ((bits + 0x1000) & -0x2000).view(torch.float32).double()

    result = torch.matmul(to_tf32(a), to_tf32(b)).float()
    return result if out is None else out.copy_(result)


def _max_relative_error(result, expected):
    return float((result.double() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_products_recover_float32_accuracy_from_tf32(monkeypatch, channels_last):
    # Plain TF32 products move the unit's output by ~1e-3 of its largest value at the R-50
    # head's size (this emulation gives what an H200 gives); split products must stay within
    # 1e-3 with a wide margin.
    torch.manual_seed(0)
    unit = EMAttention(512, num_bases=64, num_iterations=3).eval()
    x = torch.randn(2, 512, 32, 48)
    expected, _, _ = reference_em(x.double(), unit.bases.double(), 3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def error(split):
        monkeypatch.setattr(fast_em, "uses_tf32", lambda feats: split)
        with monkeypatch.context() as m:
            m.setattr(torch, "bmm", _tf32_bmm)
            return _max_relative_error(unit(x), expected)

    assert _max_relative_error(unit(x), expected) < 1e-5  # strict float32
    plain, split = error(False), error(True)
    assert plain > 4e-4  # the emulation does show TF32's error...
    assert split < 1e-5  # ...and the split products remove it


def test_split_products_skip_the_low_part_of_half_precision_features(monkeypatch):
    # In a bf16 run the unit's input is bf16: exact in TF32, so only the bases' and the
    # responsibilities' low parts are needed. (The unit's own output is then rounded to bf16.)
    torch.manual_seed(0)
    x = torch.randn(2, 512, 32, 48).bfloat16().float()
    bases = EMAttention(512, num_bases=64).bases.expand(2, -1, -1)
    expected, _, _ = reference_em(x.double(), bases[:1].double(), 3)
    monkeypatch.setattr(torch, "bmm", _tf32_bmm)
    errors = {}
    for split in (False, True):
        monkeypatch.setattr(fast_em, "uses_tf32", lambda feats, split=split: split)
        recon, _ = fast_em_attention(x, bases, 3, exact_in_tf32=True)
        errors[split] = _max_relative_error(recon, expected)
    assert errors[False] > 4e-4
    assert errors[True] < 1e-5


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_split_products_equal_plain_products_in_float32(monkeypatch, exact, channels_last):
    x, mu = _inputs(2)
    if exact:
        x = x.bfloat16().float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    recon, bases = em_attention(x, mu, 3)
    monkeypatch.setattr(fast_em, "uses_tf32", lambda feats: True)
    split_recon, split_bases = fast_em_attention(x, mu, 3, exact_in_tf32=exact)
    torch.testing.assert_close(split_bases, bases, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split_recon, recon, rtol=1e-5, atol=1e-5)


def test_split_products_compile_into_one_graph(monkeypatch):
    # The CUDA path of bf16/fp16 runs (split TF32 products) must not break torch.compile's graph.
    torch._dynamo.reset()
    monkeypatch.setattr(fast_em, "uses_tf32", lambda feats: True)

    def unit_maths(x, bases):
        return fast_em_attention(x, bases, 2, 3.0, True)[0]

    x, mu = _inputs(3, channels=16, bases=4, size=(5, 6))
    x = x.contiguous(memory_format=torch.channels_last)
    explanation = torch._dynamo.explain(unit_maths)(x, mu)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(unit_maths, backend="eager")
    torch.testing.assert_close(compiled(x, mu), unit_maths(x, mu))
