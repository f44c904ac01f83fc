"""How alive is EM attention? Four numbers about the responsibilities and bases of one EM run.

A unit whose responsibilities are ~1/K everywhere reconstructs every pixel as the same
image-wide average: the attention is "dead", however good the segmentation is. These measures
tell the two apart, per image, and are what ``benchmarks/bench_attention.py`` and the app report:

* ``entropy``: mean over pixels of the responsibilities' entropy, divided by ``ln K``
  (1 = uniform, 0 = every pixel owned by one base);
* ``max_responsibility``: mean over pixels of the largest responsibility (1/K when uniform);
* ``active_bases``: how many bases are the most responsible base (argmax) of at least
  ``min_share`` of the pixels: the number of parts the image is actually split into;
* ``mean_abs_cos``: mean ``|cos|`` between distinct final bases (1 = all the same direction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ema import EMTrace

__all__ = ["AttentionStats", "attention_stats", "trace_stats", "measure_attention"]


@dataclass(frozen=True)
class AttentionStats:
    """The measures of one image (see the module docstring)."""

    entropy: float
    max_responsibility: float
    active_bases: int
    mean_abs_cos: float


def attention_stats(
    responsibilities: torch.Tensor, bases: torch.Tensor, min_share: float = 0.02
) -> list[AttentionStats]:
    """Measures of each image of a batch.

    Args:
        responsibilities: ``(B, K, H, W)`` (or ``(B, K, N)``), summing to 1 over ``K``.
        bases: ``(B, C, K)`` the bases of the same iteration.
        min_share: the share of pixels a base must win to count as active (2 %).

    Returns:
        One :class:`AttentionStats` per image.
    """
    resp = responsibilities.detach().double().flatten(2)  # (B, K, N)
    mu = bases.detach().double()
    batch, num_bases, num_pixels = resp.shape
    if mu.shape[0] != batch or mu.shape[2] != num_bases:
        raise ValueError(
            f"responsibilities {tuple(responsibilities.shape)} and bases {tuple(bases.shape)} "
            "disagree on the batch size or K"
        )
    # 0 * log 0 = 0: xlogy gives exactly that.
    entropy = -torch.special.xlogy(resp, resp).sum(dim=1).mean(dim=1)
    entropy = entropy / math.log(num_bases) if num_bases > 1 else torch.zeros_like(entropy)
    max_resp = resp.max(dim=1).values.mean(dim=1)
    winners = resp.argmax(dim=1)  # (B, N)
    shares = torch.stack([torch.bincount(w, minlength=num_bases) for w in winners]) / num_pixels
    active = (shares >= min_share).sum(dim=1)
    unit = torch.nn.functional.normalize(mu, dim=1)
    cos = (unit.transpose(1, 2) @ unit).abs()  # (B, K, K)
    off_diagonal = ~torch.eye(num_bases, dtype=torch.bool)
    pairs = max(num_bases * (num_bases - 1), 1)
    mean_cos = (cos * off_diagonal).sum(dim=(1, 2)) / pairs
    return [
        AttentionStats(
            entropy=float(entropy[i]),
            max_responsibility=float(max_resp[i]),
            active_bases=int(active[i]),
            mean_abs_cos=float(mean_cos[i]),
        )
        for i in range(batch)
    ]


def trace_stats(trace: EMTrace, iteration: int = -1, min_share: float = 0.02):
    """:func:`attention_stats` of one iteration of a recorded EM run (default: the last)."""
    if not trace.responsibilities:
        raise ValueError("the trace is empty: run the model with trace=EMTrace()")
    return attention_stats(trace.responsibilities[iteration], trace.bases[iteration], min_share)


def measure_attention(
    segmenter,
    images,
    num_iterations: int | None = None,
    inverse_temperature: float | None = None,
    min_share: float = 0.02,
) -> dict[str, float]:
    """Mean of each measure over ``images`` segmented by ``segmenter`` (a
    :class:`emanet.Segmenter`), at ``num_iterations`` EM iterations (default: the model's) and
    the unit's own or a given ``inverse_temperature``; the measures of the last iteration.

    Returns ``{"entropy", "max_responsibility", "active_bases", "mean_abs_cos", "images"}``.
    """
    rows = []
    for image in images:
        result = segmenter(
            image,
            trace=True,
            num_iterations=num_iterations,
            inverse_temperature=inverse_temperature,
        )
        rows.extend(trace_stats(result.trace, min_share=min_share))
    if not rows:
        raise ValueError("no images to measure")
    means = {
        name: sum(getattr(row, name) for row in rows) / len(rows)
        for name in ("entropy", "max_responsibility", "active_bases", "mean_abs_cos")
    }
    return {**means, "images": len(rows)}
