"""The EM iterations of :func:`emanet.models.ema.em_attention`, computed faster.

The same E-steps, M-steps and reconstruction, with three differences in how they are computed:

* **One buffer for every E-step**, filled by ``bmm(..., out=)`` and a softmax in place: on a
  CPU, large fresh allocations cost page faults that are a visible share of the unit's time.
* **channels_last features are read in place**: a channels_last ``(B, C, H, W)`` map is a
  contiguous ``(B, N, C)`` matrix, which BLAS reads transposed without a copy; the
  reconstruction is then computed pixels-first, ``Z mu^T`` ``(B, N, C)``, and returned as a
  channels_last view.
* **float32 accuracy from TF32 products**: where CUDA may run float32 matmuls in TF32 (bf16 and
  fp16 runs, see :mod:`emanet.runtime.precision`), TF32's 10-bit mantissa alone would move the
  output by about 1e-3 of its largest value: the softmax turns absolute logit errors into
  relative errors of the responsibilities, and the M-step feeds them back. So every product is
  computed from *split* operands ``a = hi + lo`` (``hi`` exact in TF32, ``lo`` the rest) as
  ``a_hi b_hi + a_hi b_lo + a_lo b_hi`` ("3xTF32"). The features are read once per product,
  against ``[b_hi, b_lo]`` (``2K`` columns instead of ``K``); bf16/fp16 features are exact in
  TF32, so their ``lo`` is zero and skipped.

On contiguous float32 CPU input the result equals :func:`~emanet.models.ema.em_attention`'s bit
for bit; on channels_last input, and with split TF32 products, to float rounding
(``tests/fast/test_em.py``; the TF32 error is measured there with an emulation of TF32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fast_em_attention", "split_tf32", "uses_tf32"]

#: Clears the 13 low mantissa bits of a float32 (as an int32): what remains is exact in TF32.
_TF32_MASK = -(1 << 13)


def split_tf32(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` (float32) as ``hi + lo``, exactly: ``hi`` keeps the sign, exponent and 10 leading
    mantissa bits (a TF32 matmul reads it unchanged) and ``lo = a - hi`` the rest (at most
    ``2**-10 |a|``)."""
    hi = (a.view(torch.int32) & _TF32_MASK).view(torch.float32)
    return hi, a - hi


def uses_tf32(x: torch.Tensor) -> bool:
    """Whether float32 matmuls on ``x``'s device may run in TF32 (CUDA with TF32 allowed)."""
    return x.is_cuda and torch.backends.cuda.matmul.allow_tf32


def fast_em_attention(
    x: torch.Tensor,
    bases: torch.Tensor,
    num_iterations: int,
    inverse_temperature: float = 1.0,
    centered_cosine: bool = False,
    trace=None,
    exact_in_tf32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`emanet.models.ema.em_attention` (same arguments and results), computed as the
    module docstring says. ``exact_in_tf32``: the features were bf16/fp16 before being cast to
    float32, so a split of them would find nothing below TF32's precision."""
    batch, channels, height, width = x.shape
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    feats = x.flatten(2)  # (B, C, N): contiguous, or the transpose of a contiguous (B, N, C)
    if centered_cosine:
        feats = F.normalize(feats - feats.mean(dim=2, keepdim=True), dim=1)
    if trace is not None:
        trace.record_features(feats, (height, width))
    split = feats.dtype == torch.float32 and uses_tf32(feats)
    bases, resp = _iterate(
        feats,
        bases,
        num_iterations,
        inverse_temperature,
        trace,
        (height, width),
        split,
        exact_in_tf32 and not centered_cosine,  # centring computes values that are not exact
    )
    if channels_last:  # Z mu^T (B, N, C), seen as (B, C, H, W) channels_last
        recon = _product(resp, bases.transpose(1, 2), split)
        return recon.view(batch, height, width, channels).permute(0, 3, 1, 2), bases
    recon = _product(bases, resp.transpose(1, 2), split)  # mu Z^T (B, C, N)
    return recon.view(batch, channels, height, width), bases


def _iterate(feats, bases, num_iterations, inverse_temperature, trace, size, split, exact):
    """The E- and M-steps on ``feats`` ``(B, C, N)``: the final bases ``(B, C, K)`` and
    responsibilities ``(B, N, K)``."""
    feats_lo = None
    if split and not exact:
        feats, feats_lo = split_tf32(feats)
    feats_t = feats.transpose(1, 2)
    feats_lo_t = None if feats_lo is None else feats_lo.transpose(1, 2)
    resp = feats.new_empty(feats.shape[0], feats.shape[2], bases.shape[2])  # one buffer
    for _ in range(num_iterations):
        if split:  # E-step: (B, N, C) @ (B, C, K)
            _product_split_right(feats_t, feats_lo_t, bases, out=resp)
        else:
            torch.bmm(feats_t, bases, out=resp)
        if inverse_temperature != 1.0:
            resp.mul_(inverse_temperature)
        torch.softmax(resp, dim=2, out=resp)
        if split:  # M-step: (B, C, N) @ (B, N, K)
            bases = F.normalize(_product_split_right(feats, feats_lo, resp), dim=1)
        else:
            bases = F.normalize(torch.bmm(feats, resp), dim=1)
        if trace is not None:
            trace.record(resp, bases, size)
    return bases, resp


def _product(a: torch.Tensor, b: torch.Tensor, split: bool) -> torch.Tensor:
    """``a @ b`` (batched); with ``split``, to float32 accuracy from TF32 products:
    ``a_hi b_hi + a_hi b_lo + a_lo b_hi`` as one product over a tripled inner dimension (cheap
    for the unit's ``K = 64``; the output is written once)."""
    if not split:
        return torch.bmm(a, b)
    a_hi, a_lo = split_tf32(a)
    b_hi, b_lo = split_tf32(b)
    return torch.bmm(torch.cat([a_hi, a_hi, a_lo], dim=2), torch.cat([b_hi, b_lo, b_hi], dim=1))


def _product_split_right(
    a: torch.Tensor, a_lo: torch.Tensor | None, b: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``(a + a_lo) @ b`` (``(B, M, P) @ (B, P, K)``, ``a`` exact in TF32) to float32 accuracy
    from TF32 products, for a large ``a`` (the features) and a narrow ``b``: ``a`` is read once
    against ``[b_hi, b_lo]`` (``2K`` columns), plus ``a_lo b_hi`` where ``a_lo`` is given."""
    num_cols = b.shape[2]
    b_hi, b_lo = split_tf32(b)
    both = torch.bmm(a, torch.cat([b_hi, b_lo], dim=2))
    out = torch.add(both[..., :num_cols], both[..., num_cols:], out=out)
    if a_lo is not None:
        out.add_(torch.bmm(a_lo, b_hi))
    return out
