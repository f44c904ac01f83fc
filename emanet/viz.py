"""Pictures of what EM attention does: responsibility grids, convergence, bases vs classes.

Everything here draws arrays and :class:`~emanet.ema.EMTrace` records, never models. The grid
functions return uint8 images built with numpy (they sit on the app's hot path); the
``*_figure`` functions return matplotlib figures for notebooks and reports.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from .ema import EMTrace

__all__ = [
    "responsibility_maps",
    "base_order",
    "attention_grid",
    "base_across_iterations",
    "convergence",
    "convergence_figure",
    "base_class_matrix",
    "base_class_figure",
    "legend_image",
    "plot_training_curves",
]

_VIRIDIS = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def responsibility_maps(trace: EMTrace, iteration: int = -1, sample: int = 0) -> np.ndarray:
    """``(K, h, w)`` float32 responsibilities of one image at ``iteration`` (1-based; -1 last)."""
    index = iteration - 1 if iteration > 0 else iteration
    maps = trace.responsibilities[index][sample]
    return maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else maps


def base_order(responsibilities: np.ndarray | torch.Tensor) -> np.ndarray:
    """Indices of the bases ``(K, h, w)`` by the share of the image they take, largest first."""
    resp = np.asarray(responsibilities, dtype=np.float64)
    share = resp.reshape(resp.shape[0], -1).sum(axis=1)
    return np.argsort(-share, kind="stable")


def _colorize(maps: np.ndarray) -> np.ndarray:
    """``(..., h, w)`` values in [0, 1] -> ``(..., h, w, 3)`` uint8 viridis."""
    return _VIRIDIS[np.clip(maps * 255.0 + 0.5, 0, 255).astype(np.uint8)]


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """``(h, w)`` float or ``(h, w, 3)`` uint8 -> ``size = (H, W)``."""
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if array.ndim == 2:
        image = Image.fromarray(array.astype(np.float32))
        return np.asarray(image.resize((size[1], size[0]), resample))
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def attention_grid(
    trace: EMTrace,
    iteration: int = -1,
    order: Sequence[int] | None = None,
    max_bases: int = 64,
    cols: int = 8,
    tile: int = 96,
    sample: int = 0,
) -> np.ndarray:
    """Responsibility map of every base at one iteration, as one ``(H, W, 3)`` uint8 grid.

    Tiles are ordered by ``order`` (default: by share of the image at this iteration), each
    scaled to ``[0, 1]`` as responsibilities are, coloured with viridis, and labelled with the
    base index and its share of the image.
    """
    resp = responsibility_maps(trace, iteration, sample)
    k, h, w = resp.shape
    order = base_order(resp) if order is None else np.asarray(order)
    order = order[:max_bases]
    tile_h = tile
    tile_w = max(1, round(tile * w / h))
    rows = -(-len(order) // cols)
    gap = 2
    grid = np.full(
        (rows * (tile_h + gap) + gap, cols * (tile_w + gap) + gap, 3), 255, dtype=np.uint8
    )
    total = resp.sum()
    shares = resp.reshape(k, -1).sum(axis=1) / max(total, 1e-12)
    for slot, base in enumerate(order):
        r, c = divmod(slot, cols)
        big = _resize(_colorize(resp[base]), (tile_h, tile_w), nearest=True)
        y, x = gap + r * (tile_h + gap), gap + c * (tile_w + gap)
        grid[y : y + tile_h, x : x + tile_w] = big
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    for slot, base in enumerate(order):
        r, c = divmod(slot, cols)
        y, x = gap + r * (tile_h + gap), gap + c * (tile_w + gap)
        text = f"#{base} {shares[base] * 100:.1f}%"
        draw.rectangle((x, y, x + 7 * len(text), y + 11), fill=(0, 0, 0))
        draw.text((x + 1, y), text, fill=(255, 255, 255))
    return np.asarray(image)


def base_across_iterations(
    trace: EMTrace,
    base: int,
    image: np.ndarray | Image.Image,
    opacity: float = 0.6,
    sample: int = 0,
    max_width: int = 2048,
) -> np.ndarray:
    """One base's responsibility over the image at every iteration, side by side, labelled t=…

    Returns ``(H', T * W' + gaps, 3)`` uint8; ``image`` is the picture that was segmented.
    """
    picture = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    steps = trace.num_iterations
    height, width = picture.shape[:2]
    scale = min(1.0, max_width / (steps * width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    base_img = _resize(picture, size).astype(np.float32)
    panels = []
    for t in range(1, steps + 1):
        resp = responsibility_maps(trace, t, sample)[base]
        heat = _colorize(np.clip(_resize(resp, size), 0, 1)).astype(np.float32)
        blend = (1 - opacity) * base_img + opacity * heat
        panel = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
        ImageDraw.Draw(panel).text((4, 2), f"t={t}", fill=(255, 255, 255))
        panels.append(np.asarray(panel))
        panels.append(np.full((size[0], 4, 3), 255, dtype=np.uint8))
    return np.concatenate(panels[:-1], axis=1)


def convergence(trace: EMTrace, sample: int = 0) -> dict[str, list[float]]:
    """Per iteration ``t = 1..T``: how far the bases moved and how decided the pixels are.

    ``base_shift[t]``: mean over bases of ``1 - cos(mu_t, mu_{t-1})`` (``mu_0`` = the initial
    bases); ``entropy[t]``: mean over pixels of the responsibilities' entropy in nats (``log K``
    when undecided, 0 when every pixel picks one base).
    """
    shifts, entropies = [], []
    previous = trace.initial_bases
    for t in range(trace.num_iterations):
        bases = trace.bases[t][sample].float()
        if previous is not None:
            prev = previous[sample].float()
            cos = torch.nn.functional.cosine_similarity(bases, prev, dim=0)
            shifts.append(float((1 - cos).mean()))
        else:
            shifts.append(float("nan"))
        previous = trace.bases[t]
        resp = trace.responsibilities[t][sample].float().clamp_min(1e-12)
        entropies.append(float(-(resp * resp.log()).sum(dim=0).mean()))
    return {"base_shift": shifts, "entropy": entropies}


def convergence_figure(trace: EMTrace, sample: int = 0) -> Figure:
    """Line plots of :func:`convergence` against the iteration."""
    stats = convergence(trace, sample)
    steps = np.arange(1, trace.num_iterations + 1)
    fig = Figure(figsize=(6.4, 2.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(steps, stats["base_shift"], marker="o")
    ax1.set(xlabel="EM iteration t", ylabel="mean 1 - cos(mu_t, mu_t-1)", title="bases moved")
    k = trace.responsibilities[0].shape[1]
    ax2.plot(steps, stats["entropy"], marker="o", color="tab:orange")
    ax2.axhline(np.log(k), ls="--", color="grey", lw=1, label=f"log K (K={k})")
    ax2.set(xlabel="EM iteration t", ylabel="nats", title="responsibility entropy")
    ax2.legend(loc="best", fontsize="small")
    for ax in (ax1, ax2):
        ax.set_xticks(steps)
    return fig


def base_class_matrix(
    trace: EMTrace,
    labels: np.ndarray,
    num_classes: int = 19,
    iteration: int = -1,
    sample: int = 0,
    ignore_index: int = 255,
) -> np.ndarray:
    """``(K, classes)``: for each base, the share of its responsibility mass on each class.

    ``labels`` ``(H, W)`` trainIds (predicted or ground truth) are brought to the trace's
    resolution with nearest neighbour; ignored pixels do not count. Rows sum to 1 (a base with
    no mass on labelled pixels gets a row of zeros).
    """
    resp = responsibility_maps(trace, iteration, sample)
    k, h, w = resp.shape
    small = _resize(np.asarray(labels, dtype=np.float32), (h, w), nearest=True).astype(np.int64)
    valid = small != ignore_index
    onehot = np.zeros((num_classes, h * w), dtype=np.float64)
    cols = np.flatnonzero(valid.ravel())
    onehot[small.ravel()[cols], cols] = 1.0
    matrix = resp.reshape(k, -1).astype(np.float64) @ onehot.T
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def base_class_figure(
    matrix: np.ndarray, classes: Sequence[str], order: Sequence[int] | None = None
) -> Figure:
    """Heat map of :func:`base_class_matrix` (bases in ``order``, classes as columns)."""
    order = np.arange(matrix.shape[0]) if order is None else np.asarray(order)
    fig = Figure(figsize=(7, max(3, 0.12 * len(order) + 1.5)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(matrix[order], aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    step = max(1, len(order) // 16)
    ax.set_yticks(range(0, len(order), step), [str(b) for b in order[::step]], fontsize=7)
    ax.set(
        xlabel="class",
        ylabel="base (largest share first)",
        title="share of each base's responsibility per class",
    )
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def legend_image(
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    present: Sequence[int] | None = None,
    cols: int = 4,
) -> np.ndarray:
    """A ``(H, W, 3)`` uint8 legend of class colours (only ``present`` trainIds if given)."""
    ids = list(range(len(classes))) if present is None else [int(i) for i in present]
    ids = [i for i in ids if 0 <= i < len(classes)] or [0]
    cell_w, cell_h = 150, 18
    rows = -(-len(ids) // cols)
    image = Image.new("RGB", (cols * cell_w, rows * cell_h + 4), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for slot, index in enumerate(ids):
        r, c = divmod(slot, cols)
        x, y = c * cell_w + 4, r * cell_h + 3
        draw.rectangle(
            (x, y, x + 14, y + 12), fill=tuple(int(v) for v in palette[index]), outline=(0, 0, 0)
        )
        draw.text((x + 20, y), classes[index], fill=(0, 0, 0))
    return np.asarray(image)


def plot_training_curves(metrics_jsonl: str | Path) -> Figure:
    """Loss curves and validation mIoU from a trainer's ``metrics.jsonl``."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "mIoU" in r]
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for key, label in (("loss", "total"), ("loss_decode", "decode"), ("loss_aux", "auxiliary")):
        ax1.plot([r["iter"] for r in train], [r[key] for r in train], label=label)
    ax1.set(xlabel="iteration", ylabel="cross-entropy", title="training loss")
    ax1.legend(fontsize="small")
    ax2.plot([r["iter"] for r in val], [r["mIoU"] for r in val], marker="o", color="tab:green")
    ax2.set(xlabel="iteration", ylabel="mIoU (%)", title="validation mIoU")
    return fig
