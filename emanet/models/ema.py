"""The Expectation-Maximization attention unit (EMANet, Li et al., ICCV 2019, arXiv 1907.13426).

A feature map's ``N = H * W`` pixels ``X`` ``(C, N)`` are explained by ``K`` bases ``mu``
``(C, K)``, found anew for every image by a few iterations of EM:

* E-step: ``Z = softmax_K(lambda * X^T mu)``, the responsibilities ``(N, K)`` of each base for
  each pixel (a soft assignment, like a mixture model with the kernel ``exp(lambda x^T mu)``);
* M-step: each base becomes the responsibility-weighted mean of the pixels,
  ``mu_k = sum_n z_nk x_n / sum_n z_nk``, then is L2-normalised over ``C``.

After ``T`` iterations the unit outputs the low-rank reconstruction ``X_hat = mu Z^T``: every
pixel re-expressed as a mixture of ``K`` bases, at a cost linear in ``N`` (non-local attention
is quadratic). No gradient flows through the iterations; the bases the iterations start from
are a buffer, updated in training as a moving average of the bases EM converged to.

The E-step has two options. ``lambda`` (the inverse temperature, 1 in the paper) sets how
sharply a pixel picks its bases. ``centered_cosine`` first subtracts the image's mean feature
from every pixel and L2-normalises it, so the E-step compares directions (a von Mises-Fisher
mixture with concentration ``lambda``). Nothing differentiable flows through EM, so nothing in
training keeps the raw features in a shape where the E-step is sharp: their length acts as a
per-pixel inverse temperature that weight decay may shrink, and they share a large common
component. Centring and normalising remove both; the small preset uses it, the four official
presets keep the paper's unit.

:func:`em_attention` is the algorithm. :class:`EMAttention` wraps it as a layer and runs, by
default, the same computation from :mod:`emanet.fast.em`, which reuses one buffer, reads
channels_last features in place and keeps float32 accuracy when CUDA runs float32 products in
TF32. With ``EMAttention.fast`` off, the layer runs :func:`em_attention` itself. The two agree
bit for bit on contiguous float32 CPU input, and to float rounding otherwise (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from emanet.fast.em import fast_em_attention
from emanet.runtime.precision import autocast_off

__all__ = ["EMAttention", "EMOptions", "EMTrace", "em_attention"]


@dataclass
class EMTrace:
    """What one EM run on a batch went through, iteration by iteration.

    Attributes:
        responsibilities: ``(B, K, H, W)`` per iteration ``t = 1..T``: the E-step's soft
            assignment of each pixel to each base (sums to 1 over ``K``).
        bases: ``(B, C, K)`` per iteration: the M-step's unit-norm bases.
        initial_bases: ``(B, C, K)``: the bases the iterations started from.
        features: ``(B, C, H, W)``: the pixels as the E-step compares them with the bases
            (centred and unit-length with ``centered_cosine``), so that the M-step's bases
            and the pixels they average can be drawn in one space.
    """

    responsibilities: list[torch.Tensor] = field(default_factory=list)
    bases: list[torch.Tensor] = field(default_factory=list)
    initial_bases: torch.Tensor | None = None
    features: torch.Tensor | None = None

    @property
    def num_iterations(self) -> int:
        return len(self.responsibilities)

    def record(self, resp: torch.Tensor, bases: torch.Tensor, size: tuple[int, int]) -> None:
        """Append one iteration: ``resp`` ``(B, N, K)`` with ``N = H * W``, ``bases``."""
        batch, _, num_bases = resp.shape
        maps = resp.transpose(1, 2).reshape(batch, num_bases, *size)
        self.responsibilities.append(maps.clone())
        self.bases.append(bases.clone())

    def record_features(self, pixels: torch.Tensor, size: tuple[int, int]) -> None:
        """Keep the pixels ``(B, C, N)`` the iterations compare with the bases."""
        self.features = pixels.reshape(*pixels.shape[:2], *size).clone()


@dataclass(frozen=True, eq=False)
class EMOptions:
    """What one forward pass asks of the EM unit, handed down from the segmentor's inference to
    :class:`EMAttention` as one object. ``None`` fields mean the unit's own value.

    Attributes:
        num_iterations: ``T`` for this pass (a test-time choice).
        inverse_temperature: ``lambda`` for this pass (a what-if).
        trace: an :class:`EMTrace` to record the iterations into.
    """

    num_iterations: int | None = None
    inverse_temperature: float | None = None
    trace: EMTrace | None = None


def em_attention(
    x: torch.Tensor,
    bases: torch.Tensor,
    num_iterations: int,
    inverse_temperature: float = 1.0,
    centered_cosine: bool = False,
    trace: EMTrace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM attention on a batch of feature maps, as the paper writes it.

    Args:
        x: ``(B, C, H, W)`` features.
        bases: ``(B, C, K)`` unit-norm bases the iterations start from.
        num_iterations: ``T``.
        inverse_temperature: ``lambda`` of the E-step.
        centered_cosine: centre the pixels on the image's mean feature and L2-normalise them
            first (see the module docstring).
        trace: if given, every iteration's responsibilities and bases are recorded into it.

    Returns:
        The reconstruction ``mu Z^T`` ``(B, C, H, W)`` and the final bases ``(B, C, K)``.
    """
    batch, channels, height, width = x.shape
    pixels = x.flatten(2)  # X: (B, C, N)
    if centered_cosine:
        pixels = F.normalize(pixels - pixels.mean(dim=2, keepdim=True), dim=1)
    if trace is not None:
        trace.record_features(pixels, (height, width))
    for _ in range(num_iterations):
        # E-step: Z = softmax over the K bases of lambda * X^T mu, (B, N, K).
        resp = torch.softmax(inverse_temperature * (pixels.transpose(1, 2) @ bases), dim=2)
        # M-step: mu_k = sum_n z_nk x_n / sum_n z_nk, then |mu_k| = 1. The division by
        # sum_n z_nk only scales mu_k, which the L2 normalisation undoes, so it is left out.
        bases = F.normalize(pixels @ resp, dim=1)  # (B, C, K)
        if trace is not None:
            trace.record(resp, bases, (height, width))
    recon = bases @ resp.transpose(1, 2)  # X_hat = mu Z^T, (B, C, N)
    return recon.view(batch, channels, height, width), bases


class EMAttention(nn.Module):
    """EM attention unit: ``(B, C, H, W) -> (B, C, H, W)`` low-rank reconstruction.

    Args:
        channels: ``C``, the feature channels.
        num_bases: ``K`` (64 in the paper and mmsegmentation).
        num_iterations: ``T`` (3 in training; may be changed at test time, by setting the
            attribute or per call).
        momentum: moving-average rate of the bases buffer in training (0.1).
        inverse_temperature: ``lambda`` of the E-step (1.0, as in the paper).
        centered_cosine: cosine E-step on centred pixels (False, as in the paper).
        fast: run :func:`emanet.fast.em.fast_em_attention` instead of :func:`em_attention`
            (the same results; see the module docstring).

    Buffers:
        bases: ``(1, C, K)``, drawn from ``N(0, sqrt(2 / K))`` and L2-normalised over ``C``.

    Inputs in bf16 or fp16 (or under autocast) are iterated in float32 with autocast off, and
    the result comes back in the input's dtype: the softmax and the normalisations need
    float32's range, and the unit is a small share of the model's FLOPs.
    """

    def __init__(
        self,
        channels: int,
        num_bases: int = 64,
        num_iterations: int = 3,
        momentum: float = 0.1,
        inverse_temperature: float = 1.0,
        centered_cosine: bool = False,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if channels < 1 or num_bases < 1 or num_iterations < 1:
            raise ValueError("channels, num_bases and num_iterations must be positive")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.channels, self.num_bases = channels, num_bases
        self.num_iterations, self.momentum = num_iterations, momentum
        self.inverse_temperature = _positive(inverse_temperature)
        self.centered_cosine, self.fast = bool(centered_cosine), bool(fast)
        bases = torch.empty(1, channels, num_bases).normal_(0.0, math.sqrt(2.0 / num_bases))
        self.register_buffer("bases", F.normalize(bases, dim=1))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_bases={self.num_bases}, "
            f"num_iterations={self.num_iterations}, momentum={self.momentum}, "
            f"inverse_temperature={self.inverse_temperature}, "
            f"centered_cosine={self.centered_cosine}, fast={self.fast}"
        )

    def forward(
        self,
        x: torch.Tensor,
        num_iterations: int | None = None,
        trace: EMTrace | None = None,
        inverse_temperature: float | None = None,
    ) -> torch.Tensor:
        """Reconstruct ``x`` ``(B, C, H, W)`` from ``K`` bases found by EM.

        ``num_iterations`` and ``inverse_temperature`` override the unit's own for this call (a
        what-if at test time; the bases buffer follows the unit's own lambda in training).
        ``trace``: an :class:`EMTrace` to fill (float32 for half inputs). The result carries no
        gradient: the unit is a fixed-point solver, as in the paper.
        """
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        steps = self.num_iterations if num_iterations is None else int(num_iterations)
        if steps < 1:
            raise ValueError(f"num_iterations must be >= 1, got {steps}")
        lam = self.inverse_temperature if inverse_temperature is None else inverse_temperature
        # Half inputs are iterated in float32 (see the class docstring); float64 stays float64.
        work_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        with torch.no_grad(), autocast_off(x.device.type):
            feats = x.to(work_dtype)
            bases = self.bases.to(work_dtype).expand(x.shape[0], -1, -1)
            if trace is not None:
                trace.initial_bases = bases.clone()
            lam, centered = _positive(lam), self.centered_cosine
            if self.fast:
                # bf16/fp16 values are exact in TF32: the fast products need not split them.
                half = x.dtype != work_dtype
                recon, bases = fast_em_attention(feats, bases, steps, lam, centered, trace, half)
            else:
                recon, bases = em_attention(feats, bases, steps, lam, centered, trace)
            if self.training:
                self._update_bases(bases)
            return recon.to(x.dtype)

    def _update_bases(self, bases: torch.Tensor) -> None:
        """Moving average of the bases buffer with this batch's final bases ``(B, C, K)``,
        identical on every process."""
        new = bases.float().mean(dim=0, keepdim=True)
        if dist.is_available() and dist.is_initialized():
            # DDP does not synchronise buffers changed outside autograd; average them here.
            dist.all_reduce(new, op=dist.ReduceOp.SUM)
            new = new / dist.get_world_size()
        new = F.normalize(new, dim=1)
        self.bases.mul_(1.0 - self.momentum).add_(new, alpha=self.momentum)


def _positive(value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"inverse_temperature must be a positive number, got {value!r}")
    return float(value)
