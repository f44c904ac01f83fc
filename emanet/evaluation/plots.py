"""Figures of an evaluation: where the model confuses classes, and IoU class by class.

* ``confusion.png``: the confusion matrix normalised per row (ground truth), so row ``t`` reads
  "of the pixels that are ``t``, which share went to each predicted class"; the diagonal is the
  per-class accuracy. Rows of classes absent from the ground truth are left blank.
* ``per_class_iou.png``: a bar per class in the palette's colours, with the mIoU as a line;
  classes whose IoU is undefined (never in the ground truth nor predicted) are marked n/a.

Figures are made with matplotlib's object API (no pyplot, no GUI backend, safe in threads and
servers) and written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emanet.io.atomic import atomic_write

__all__ = [
    "confusion_figure",
    "per_class_iou_figure",
    "row_normalize",
    "write_eval_plots",
]


def row_normalize(confusion) -> np.ndarray:
    """``(C, C)`` counts -> float64 shares per row (rows with no pixels become NaN)."""
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)


def _check_names(classes: Sequence[str], size: int) -> list[str]:
    names = list(classes)
    if len(names) != size:
        raise ValueError(f"{len(names)} class names for {size} classes")
    return names


def confusion_figure(confusion, classes: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix ``(C, C)`` (rows = ground truth, columns = prediction),
    class names on both axes, shares of at least 1 % written in the cells."""
    shares = row_normalize(confusion)
    names = _check_names(classes, shares.shape[0])
    size = len(names)
    figure = Figure(figsize=(2.5 + 0.42 * size, 2.0 + 0.42 * size), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(shares), cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(size), names, rotation=90)
    axes.set_yticks(range(size), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("ground-truth class")
    axes.set_title("Confusion matrix (each row sums to 1)")
    for row, col in zip(*np.nonzero(np.nan_to_num(shares) >= 0.01), strict=True):
        value = shares[row, col]
        axes.text(
            col,
            row,
            f"{value * 100:.0f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > 0.5 else "black",
        )
    figure.colorbar(image, ax=axes, shrink=0.6, label="share of the ground-truth row")
    return figure


def per_class_iou_figure(
    iou: Sequence[float],
    classes: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
) -> Figure:
    """Horizontal bars of per-class IoU in percent (NaN: "n/a"), mIoU over the defined ones."""
    values = np.asarray(iou, dtype=np.float64)
    names = _check_names(classes, values.size)
    colors = None
    if palette is not None:
        colors = [tuple(c / 255 for c in color) for color in palette][: values.size]
    figure = Figure(figsize=(7.0, 1.2 + 0.3 * values.size), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    rows = np.arange(values.size)
    axes.barh(rows, np.nan_to_num(values), color=colors, edgecolor="black", linewidth=0.5)
    for row, value in zip(rows, values, strict=True):
        label = "n/a" if math.isnan(value) else f"{value:.1f}"
        axes.text(min(np.nan_to_num(value), 100.0) + 1, row, label, va="center", fontsize=8)
    defined = values[~np.isnan(values)]
    if defined.size:
        mean = float(defined.mean())
        axes.axvline(mean, color="red", linestyle="--", linewidth=1, label=f"mIoU {mean:.2f}")
        axes.legend(loc="lower right")
    axes.set_yticks(rows, names)
    axes.invert_yaxis()
    axes.set_xlim(0, 110)
    axes.set_xlabel("IoU (%)")
    axes.set_title("IoU per class")
    return figure


def write_eval_plots(
    out_dir: str | os.PathLike[str],
    confusion,
    iou: Sequence[float],
    classes: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    dpi: int = 120,
) -> list[Path]:
    """Write ``confusion.png`` and ``per_class_iou.png`` into ``out_dir`` (created).

    Args:
        confusion: ``(C, C)`` pixel counts, rows = ground truth.
        iou: ``C`` per-class IoU in percent (NaN where undefined).
        classes, palette: names and colours in class order.

    Returns:
        the two paths.
    """
    out = Path(out_dir)
    written = []
    for name, figure in (
        ("confusion.png", confusion_figure(confusion, classes)),
        ("per_class_iou.png", per_class_iou_figure(iou, classes, palette)),
    ):
        written.append(
            atomic_write(out / name, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=dpi))
        )
    return written
