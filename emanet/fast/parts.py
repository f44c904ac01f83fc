"""The parts map's argmax, computed from a few candidate bases instead of all ``K``.

:func:`emanet.viz.explorer.parts` brings the ``(K, h, w)`` responsibilities to the image
bilinearly and takes each pixel's largest: ``K`` values a pixel. A bilinear value is a weighted
mean of four neighbouring cells, so a pixel's winner is almost always the winner of one of its
four cells. Here each pixel weighs only those (at most four) candidates, and checks the result:
any other base has at most its cell's *second* largest responsibility in each cell, so when the
best candidate beats the interpolated second largest values, it is the argmax. The few pixels
where it does not (undecided ones) are computed over all ``K``. Same bases, same values as the
full interpolation (``tests/fast/test_parts.py``), a fraction of the work on a trained model.
"""

from __future__ import annotations

import torch

__all__ = ["parts_by_candidates"]


def _source(size_out: int, size_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output index of an ``align_corners=False`` bilinear resize (as PyTorch's):
    the first source index, the second (clamped) and the second's weight."""
    scale = size_in / size_out
    source = ((torch.arange(size_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    first = source.floor().long().clamp_max(size_in - 1)
    return first, (first + 1).clamp_max(size_in - 1), source - first


def parts_by_candidates(maps: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """``(K, h, w)`` responsibilities -> ``(H, W)`` bases and values of the bilinear argmax at
    ``size = (H, W)``."""
    num_bases, h, w = maps.shape
    y0, y1, wy = _source(size[0], h)
    x0, x1, wx = _source(size[1], w)
    cells = maps.reshape(num_bases, h * w).T  # (h*w, K)
    top2 = cells.topk(2, dim=1)
    best, second = top2.indices[:, 0], top2.values[:, 1]
    # The four cells of each quad (its top-left cell (i, j)) and their winners, the candidates.
    rows, cols = torch.arange(h), torch.arange(w)
    down, right = (rows + 1).clamp_max(h - 1), (cols + 1).clamp_max(w - 1)
    corners = torch.stack(
        [
            (rows[:, None] * w + cols[None]).flatten(),
            (rows[:, None] * w + right[None]).flatten(),
            (down[:, None] * w + cols[None]).flatten(),
            (down[:, None] * w + right[None]).flatten(),
        ],
        dim=1,
    )  # (h*w, 4)
    candidates = best[corners]  # (h*w, 4)
    quad_values = cells[corners[:, :, None], candidates[:, None, :]]  # (h*w, corner, candidate)
    # Each output pixel: its quad and the weights of the quad's four cells.
    quad = (y0[:, None] * w + x0[None]).flatten()
    fy, fx = wy[:, None], wx[None]
    weights = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=-1)
    weights = weights.reshape(-1, 4)  # (H*W, 4)
    values = torch.einsum("pc,pcj->pj", weights, quad_values[quad])
    value, pick = values.max(dim=1)
    base = candidates[quad].gather(1, pick[:, None])[:, 0]
    bound = (weights * second[corners][quad]).sum(dim=1)
    unsure = (value < bound).nonzero()[:, 0]
    if len(unsure):
        full = torch.einsum("pc,pck->pk", weights[unsure], cells[corners[quad[unsure]]])
        value[unsure], base[unsure] = full.max(dim=1)
    return base.view(size), value.view(size)
