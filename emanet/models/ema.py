"""The Expectation-Maximization attention unit (EMANet, Li et al., ICCV 2019, arXiv 1907.13426).

Pixel features ``X`` of shape ``(B, C, N)`` (``N = H * W``) are explained by ``K`` bases
``mu`` of shape ``(B, C, K)``. A few EM iterations run on every image:

* E-step: ``Z = softmax_K(X^T mu)``, the responsibilities ``(B, N, K)`` of each base for each
  pixel (a soft assignment, like a Gaussian mixture with a kernel ``exp(x^T mu)``).
* M-step: ``mu = X Z_bar`` with ``Z_bar`` = ``Z`` normalised to sum 1 over the pixels, i.e. each
  base becomes the responsibility-weighted mean of the pixels, then L2-normalised over ``C``.

The output is the low-rank reconstruction ``X_hat = mu Z^T``: every pixel is re-expressed as a
mixture of K bases, which removes noise and carries global context at a cost linear in ``N``
(non-local attention is quadratic). No gradient flows through the iterations; the bases that
start the iterations are a buffer updated with a moving average of the final bases in training.

Two optional properties of the E-step (defaults: mmsegmentation's unit, bit for bit):

* ``inverse_temperature`` ``lambda``: ``Z = softmax_K(lambda * X^T mu)``. Large ``lambda`` makes the
  assignment harder (k-means in the limit), small makes it softer (one image-wide mean at 0).
* ``centered_cosine``: before EM, the image's mean feature is subtracted from every pixel and each
  pixel is L2-normalised over ``C``, so the E-step compares *directions* relative to the image
  (``softmax(lambda * cos(x_n - mean, mu_k))``: a von Mises-Fisher mixture with concentration
  ``lambda``) and the bases are spherical means. Why: nothing differentiable flows through EM, so
  nothing in training keeps the features fed to the unit in a shape where the E-step is sharp.
  Their length acts as a per-pixel inverse temperature that weight decay is free to shrink, and
  after ReLU and the frozen 1x1 ``ema_mid_conv`` (whose bias, meant to centre them, stays at its
  zero initialisation) they share a large common component, so every pixel is closest to the same
  few bases. Centring and normalising remove both, and ``lambda`` then sets the sharpness.

Under autocast (bf16/fp16) the iterations run in float32 with autocast off and the reconstruction
is cast back to the input's dtype: the softmax and the normalisations need float32's range (the
responsibilities normalised over ``N`` pixels sit near fp16's smallest normal), and the unit is a
small share of the model's FLOPs.

Where CUDA float32 matmuls may use TF32 (bf16/fp16 runs, see :mod:`emanet.runtime.precision`),
TF32's
10-bit mantissa alone moves the output by ~1e-3 of its largest value (1.27e-3 on an H200 at the
R-50 head's size): the softmax turns absolute logit errors into relative errors of the
responsibilities, and the M-step feeds them back. So every product is computed from *split*
operands ``a = hi + lo`` (``hi`` exact in TF32, ``lo`` the remainder) as
``a_hi b_hi + a_hi b_lo + a_lo b_hi`` ("3xTF32"), accurate to ~float32. The extra work falls on
the narrow operands: the features are read once per product against ``[b_hi, b_lo]`` (``2K``
columns instead of ``K``), and bf16/fp16 features are exact in TF32, so their ``lo`` is zero and
skipped. An emulation of TF32 on the CPU (``tests/test_ema.py``) gives 1.27e-3 for plain TF32
products and 1.0e-6 for split ones at that size.

This module follows mmsegmentation's ``EMAModule`` numerically; it is written with ``bmm`` on
contiguous layouts instead of ``einsum`` because on CPU that is the fastest way to reach the
matmul floor (see ``benchmarks/bench_ema.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from emanet.runtime.precision import autocast_off

__all__ = ["EMAttention", "EMTrace", "em_iterations", "reconstruct", "split_tf32", "uses_tf32"]


@dataclass
class EMTrace:
    """Per-iteration record of an EM run on one batch.

    Attributes:
        responsibilities: one tensor ``(B, K, H, W)`` per iteration ``t = 1..T``: the E-step's
            soft assignment of each pixel to each base (sums to 1 over ``K``).
        bases: one tensor ``(B, C, K)`` per iteration: the M-step's unit-norm bases.
        initial_bases: ``(B, C, K)`` the bases the iterations started from.
    """

    responsibilities: list[torch.Tensor] = field(default_factory=list)
    bases: list[torch.Tensor] = field(default_factory=list)
    initial_bases: torch.Tensor | None = None

    @property
    def num_iterations(self) -> int:
        return len(self.responsibilities)


#: Clears the 13 low mantissa bits of a float32 (as an int32): what remains is exact in TF32.
_TF32_MASK = -(1 << 13)


def split_tf32(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` (float32) as ``hi + lo``, exactly: ``hi`` keeps the sign, exponent and 10 leading
    mantissa bits (representable in TF32, so a TF32 matmul reads it unchanged) and ``lo = a - hi``
    the rest (at most ``2**-10 |a|``)."""
    hi = (a.view(torch.int32) & _TF32_MASK).view(torch.float32)
    return hi, a - hi


def uses_tf32(x: torch.Tensor) -> bool:
    """Whether float32 matmuls on ``x``'s device may run in TF32 (CUDA with TF32 allowed)."""
    return x.is_cuda and torch.backends.cuda.matmul.allow_tf32


def _bmm_split(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (``(B, M, K) @ (B, K, P)``) to ~float32 accuracy from TF32 products:
    ``a_hi b_hi + a_hi b_lo + a_lo b_hi`` as one product over a tripled inner dimension (cheap
    for the unit's ``K = 64``; the output is written once)."""
    a_hi, a_lo = split_tf32(a)
    b_hi, b_lo = split_tf32(b)
    return torch.bmm(torch.cat([a_hi, a_hi, a_lo], dim=2), torch.cat([b_hi, b_lo, b_hi], dim=1))


def _bmm_split_right(
    a: torch.Tensor, a_lo: torch.Tensor | None, b: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``(a + a_lo) @ b`` (``(B, M, P) @ (B, P, K)``, ``a`` exact in TF32) to ~float32 accuracy
    from TF32 products, for a large ``a`` (the features) and a narrow ``b``: ``a`` is read once
    against ``[b_hi, b_lo]`` (``2K`` columns), plus ``a_lo b_hi`` where ``a_lo`` is given."""
    num_cols = b.shape[2]
    b_hi, b_lo = split_tf32(b)
    both = torch.bmm(a, torch.cat([b_hi, b_lo], dim=2))
    out = torch.add(both[..., :num_cols], both[..., num_cols:], out=out)
    if a_lo is not None:
        out.add_(torch.bmm(a_lo, b_hi))
    return out


def reconstruct(
    bases: torch.Tensor, resp: torch.Tensor, split: bool = False, pixels_first: bool = False
) -> torch.Tensor:
    """The unit's output ``mu Z^T`` ``(B, C, N)`` from ``bases`` ``(B, C, K)`` and ``resp``
    ``(B, N, K)``; with ``pixels_first``, its transpose ``Z mu^T`` ``(B, N, C)`` (contiguous, for
    channels_last). ``split``: from split TF32 products (see the module docstring)."""
    a, b = (resp, bases.transpose(1, 2)) if pixels_first else (bases, resp.transpose(1, 2))
    return _bmm_split(a, b) if split else torch.bmm(a, b)


def em_iterations(
    feats: torch.Tensor,
    bases: torch.Tensor,
    num_iterations: int,
    trace: EMTrace | None = None,
    spatial_size: tuple[int, int] | None = None,
    inverse_temperature: float = 1.0,
    split: bool = False,
    feats_exact_in_tf32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``num_iterations`` E/M steps (the caller decides about gradients).

    Args:
        feats: ``(B, C, N)`` pixel features; either contiguous or the transpose of a contiguous
            ``(B, N, C)`` (channels_last input): BLAS reads both layouts without a copy.
        bases: ``(B, C, K)`` starting bases (unit norm over ``C``).
        num_iterations: ``T >= 1``.
        trace: if given, every iteration's responsibilities and bases are appended to it.
        spatial_size: ``(H, W)`` with ``H * W == N``, used to shape the traced maps.
        inverse_temperature: ``lambda`` of the E-step ``softmax(lambda * X^T mu)``; at 1.0 no
            multiplication happens at all (mmsegmentation's unit, bit for bit).
        split: compute the E- and M-step products from split TF32 operands (float32 ``feats``;
            see the module docstring). Off, every product is one plain ``bmm``.
        feats_exact_in_tf32: with ``split``, the features are known to be exact in TF32 (they
            were bf16/fp16), so their low part is zero and skipped.

    Returns:
        ``(bases, responsibilities)``: the final bases ``(B, C, K)`` and the final E-step's
        responsibilities ``(B, N, K)``.
    """
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    feats_lo = None
    if split and not feats_exact_in_tf32:
        feats, feats_lo = split_tf32(feats)
    feats_t = feats.transpose(1, 2)
    feats_lo_t = None if feats_lo is None else feats_lo.transpose(1, 2)
    batch, channels, num_pixels = feats.shape
    # One buffer for every E-step, softmax in place: large fresh allocations cost page faults
    # on CPU that are a visible share of this unit's time.
    resp = feats.new_empty(batch, num_pixels, bases.shape[2])
    for _ in range(num_iterations):
        # E-step: (B, N, C) @ (B, C, K) -> (B, N, K), softmax over the bases.
        if split:
            _bmm_split_right(feats_t, feats_lo_t, bases, out=resp)
        else:
            torch.bmm(feats_t, bases, out=resp)
        if inverse_temperature != 1.0:
            resp.mul_(inverse_temperature)
        torch.softmax(resp, dim=2, out=resp)
        # M-step: (B, C, N) @ (B, N, K) -> (B, C, K). mmsegmentation first divides each column
        # of ``resp`` by its sum over pixels; that per-base scale is undone by the L2
        # normalisation right after, so we skip it (same result up to float rounding).
        if split:
            bases = F.normalize(_bmm_split_right(feats, feats_lo, resp), dim=1)
        else:
            bases = F.normalize(torch.bmm(feats, resp), dim=1)
        if trace is not None:
            height, width = spatial_size
            trace.responsibilities.append(
                resp.transpose(1, 2).reshape(batch, -1, height, width).clone()
            )
            trace.bases.append(bases.clone())
    return bases, resp


class EMAttention(nn.Module):
    """EM attention unit: ``(B, C, H, W) -> (B, C, H, W)`` low-rank reconstruction.

    Args:
        channels: ``C``, the feature channels.
        num_bases: ``K``, number of bases (64 in the paper and mmsegmentation).
        num_iterations: ``T``, EM iterations (3 in training; may be changed at test time, either
            by setting the attribute or per call).
        momentum: moving-average rate of the bases buffer in training (0.1).
        inverse_temperature: ``lambda`` of the E-step ``softmax(lambda * X^T mu)`` (1.0, as in
            mmsegmentation and the paper).
        centered_cosine: run EM on the pixels centred on the image's mean feature and
            L2-normalised (cosine E-step, spherical M-step) instead of the raw features (False,
            as in mmsegmentation and the paper). See the module docstring.

    Buffers:
        bases: ``(1, C, K)``, initialised from ``N(0, sqrt(2 / K))`` and L2-normalised over ``C``.
    """

    def __init__(
        self,
        channels: int,
        num_bases: int = 64,
        num_iterations: int = 3,
        momentum: float = 0.1,
        inverse_temperature: float = 1.0,
        centered_cosine: bool = False,
    ) -> None:
        super().__init__()
        if channels < 1 or num_bases < 1 or num_iterations < 1:
            raise ValueError("channels, num_bases and num_iterations must be positive")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        _check_inverse_temperature(inverse_temperature)
        self.channels = channels
        self.num_bases = num_bases
        self.num_iterations = num_iterations
        self.momentum = momentum
        self.inverse_temperature = float(inverse_temperature)
        self.centered_cosine = bool(centered_cosine)
        bases = torch.empty(1, channels, num_bases).normal_(0.0, math.sqrt(2.0 / num_bases))
        self.register_buffer("bases", F.normalize(bases, dim=1))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_bases={self.num_bases}, "
            f"num_iterations={self.num_iterations}, momentum={self.momentum}, "
            f"inverse_temperature={self.inverse_temperature}, "
            f"centered_cosine={self.centered_cosine}"
        )

    def forward(
        self,
        x: torch.Tensor,
        num_iterations: int | None = None,
        trace: EMTrace | None = None,
        inverse_temperature: float | None = None,
    ) -> torch.Tensor:
        """Reconstruct ``x`` from ``K`` bases found by EM.

        Args:
            x: ``(B, C, H, W)`` features, any floating dtype; under autocast or in bf16/fp16 the
                iterations run in float32 and the result comes back in ``x.dtype``.
            num_iterations: overrides ``self.num_iterations`` for this call.
            trace: an :class:`EMTrace` to fill with every iteration's responsibilities
                ``(B, K, H, W)`` and bases ``(B, C, K)`` (float32 for half inputs); ``None``
                (default) records nothing.
            inverse_temperature: overrides ``self.inverse_temperature`` for this call (a what-if
                at test time; the bases buffer is only updated with the unit's own value).

        Returns:
            ``(B, C, H, W)`` reconstruction ``mu Z^T``. It carries no gradient: the unit is a
            fixed-point solver, as in the paper.
        """
        batch, channels, height, width = x.shape
        if channels != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {channels}")
        steps = self.num_iterations if num_iterations is None else int(num_iterations)
        if inverse_temperature is None:
            inverse_temperature = self.inverse_temperature
        else:
            _check_inverse_temperature(inverse_temperature)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4
        # Half inputs are promoted: see the module docstring. float64 stays float64 (tests).
        work_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        with torch.no_grad(), autocast_off(x.device.type):
            if channels_last:
                feats = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
                feats = feats.to(work_dtype).transpose(1, 2)
            else:
                feats = x.reshape(batch, channels, height * width).to(work_dtype)
            if self.centered_cosine:
                feats = F.normalize(feats - feats.mean(dim=2, keepdim=True), dim=1)
            bases = self.bases.to(work_dtype).expand(batch, -1, -1)
            if trace is not None:
                trace.initial_bases = bases.clone()
            # TF32 products would cost ~1e-3 of accuracy: split them (see the module docstring).
            split = work_dtype == torch.float32 and uses_tf32(feats)
            bases, resp = em_iterations(
                feats,
                bases,
                steps,
                trace,
                (height, width),
                float(inverse_temperature),
                split=split,
                # bf16/fp16 values are exact in TF32 (unless centring computed new ones).
                feats_exact_in_tf32=x.dtype != work_dtype and not self.centered_cosine,
            )
            if self.training:
                self._update_bases(bases)
            recon = reconstruct(bases, resp, split, pixels_first=channels_last).to(x.dtype)
            if channels_last:  # (B, N, C), returned as a channels_last view
                return recon.view(batch, height, width, channels).permute(0, 3, 1, 2)
            return recon.view(batch, channels, height, width)

    def _update_bases(self, bases: torch.Tensor) -> None:
        """Moving average of the bases buffer, identical on every process.

        ``bases``: ``(B, C, K)`` final bases of this batch.
        """
        new = bases.float().mean(dim=0, keepdim=True)
        if dist.is_available() and dist.is_initialized():
            # Average across processes so that every rank keeps the same buffer (DDP does not
            # synchronise buffers that change outside of forward's autograd graph by itself).
            dist.all_reduce(new, op=dist.ReduceOp.SUM)
            new = new / dist.get_world_size()
        new = F.normalize(new, dim=1)
        self.bases.mul_(1.0 - self.momentum).add_(new, alpha=self.momentum)


def _check_inverse_temperature(value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"inverse_temperature must be a positive number, got {value!r}")
