"""Matplotlib figures for notebooks and reports: EM convergence, bases vs classes, training
curves, and the grids of line plots, pictures and per-class bars the notebooks share.

The numbers come from :mod:`emanet.viz.render` or from the caller. Only
:class:`matplotlib.figure.Figure` is used (no pyplot), so nothing depends on the backend. Every
figure is at most :data:`WIDTH` inches wide, 960 pixels at matplotlib's 100 dpi: JupyterLab
shows it at its own size, so that no text is drawn smaller than about 9 pixels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from emanet.models.ema import EMTrace
from emanet.viz.render import convergence

__all__ = [
    "WIDTH",
    "Panel",
    "base_class_figure",
    "class_bars",
    "convergence_figure",
    "image_panels",
    "line_panels",
    "plot_training_curves",
]

WIDTH = 9.6
"""The widest figure, in inches: 960 pixels at 100 dpi, JupyterLab's usual output width."""


def convergence_figure(trace: EMTrace, sample: int = 0) -> Figure:
    """Two line plots of :func:`~emanet.viz.render.convergence` against the iteration ``t``:
    how far the bases moved, and the responsibility entropy / ln K (1 = uniform)."""
    stats = convergence(trace, sample)
    steps = np.arange(1, trace.num_iterations + 1)
    fig = Figure(figsize=(7.0, 2.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(steps, stats["base_shift"], marker="o")
    ax1.set(xlabel="EM iteration t", ylabel="mean 1 - cos(mu_t, mu_t-1)", title="bases moved")
    ax2.plot(steps, stats["entropy"], marker="o", color="tab:orange")
    ax2.axhline(1.0, ls="--", color="grey", lw=1, label="uniform")
    ax2.set(xlabel="EM iteration t", ylabel="entropy / ln K", title="responsibility entropy")
    ax2.set_ylim(0, 1.05)
    ax2.legend(loc="best", fontsize="small")
    for ax in (ax1, ax2):
        ax.set_xticks(steps)
    fig.suptitle("EM convergence")
    return fig


def base_class_figure(
    matrix: np.ndarray, classes: Sequence[str], order: Sequence[int] | None = None
) -> Figure:
    """Heat map of :func:`~emanet.viz.render.base_class_matrix`: bases in ``order`` as rows,
    classes as columns."""
    order = np.arange(matrix.shape[0]) if order is None else np.asarray(order)
    # 0.13 inch a row: every base's number is written, 7 points high (10 pixels at 100 dpi).
    fig = Figure(figsize=(WIDTH * 0.75, max(3, 0.13 * len(order) + 1.8)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(matrix[order], aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), [str(b) for b in order], fontsize=7)
    ax.set(
        xlabel="class",
        ylabel="base (in the given order)",
        title="share of each base's responsibility per class",
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the base's mass")
    return fig


def plot_training_curves(metrics_jsonl: str | Path) -> Figure:
    """Loss curves and validation mIoU from a trainer's ``metrics.jsonl``.

    Rows with ``loss`` (and optionally ``loss_decode``, ``loss_aux``) are training logs; rows
    with ``mIoU`` (percent) are validations; both carry ``iter``. Blank or malformed lines (a
    run killed mid-write) are skipped. Left axes: losses; right axes: mIoU.
    """
    rows = []
    for line in Path(metrics_jsonl).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "iter" in row:
            rows.append(row)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "mIoU" in r]
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for key, label in (("loss", "total"), ("loss_decode", "decode head"), ("loss_aux", "aux")):
        points = [(r["iter"], r[key]) for r in train if key in r]
        if points:
            ax1.plot(*zip(*points, strict=True), label=label)
    ax1.set(xlabel="iteration", ylabel="cross-entropy loss", title="training loss")
    if train:
        ax1.legend(fontsize="small")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if val:
        ax2.plot([r["iter"] for r in val], [r["mIoU"] for r in val], marker="o", color="tab:green")
    else:
        ax2.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax2.transAxes)
    ax2.set(xlabel="iteration", ylabel="mIoU (%)", title="validation mIoU")
    return fig


@dataclass
class Panel:
    """One axes of :func:`line_panels`: named curves and how to draw them.

    Attributes:
        title, xlabel, ylabel: the axes' texts.
        lines: ``{label: (x, y)}``, one curve each, drawn with markers in this order.
        styles: ``{label: keyword arguments of Axes.plot}`` for curves drawn otherwise (e.g. a
            dashed grey reference ``{"color": "grey", "ls": "--", "marker": ""}``).
        xscale, yscale: ``"linear"`` or ``"log"`` (``"log2"`` for base-2 ticks on x).
        ylim: ``(bottom, top)``, either may be ``None``.
        integer_x: integer ticks on x (iterations, numbers of bases).
        mark_x: ``(x, label)`` of a dotted vertical line, e.g. the value a model was trained with.
    """

    title: str
    xlabel: str
    ylabel: str
    lines: Mapping[str, tuple[Sequence[float], Sequence[float]]]
    styles: Mapping[str, dict] = field(default_factory=dict)
    xscale: str = "linear"
    yscale: str = "linear"
    ylim: tuple[float | None, float | None] | None = None
    integer_x: bool = False
    mark_x: tuple[float, str] | None = None


def _draw_panel(ax: Axes, panel: Panel) -> None:
    for label, (xs, ys) in panel.lines.items():
        style = {"marker": "o", "markersize": 4, **panel.styles.get(label, {})}
        ax.plot(xs, ys, label=label, **style)
    if panel.mark_x is not None:
        ax.axvline(panel.mark_x[0], ls=":", color="grey", label=panel.mark_x[1])
    if panel.xscale == "log2":
        ax.set_xscale("log", base=2)
    else:
        ax.set_xscale(panel.xscale)
    ax.set_yscale(panel.yscale)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    if panel.integer_x and panel.xscale == "linear":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(panel.title, fontsize=10)
    ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel)
    ax.legend(fontsize=8)


def line_panels(
    panels: Sequence[Panel], cols: int = 2, title: str = "", height: float = 2.9
) -> Figure:
    """:class:`Panel` line plots in a grid of ``cols`` columns, :data:`WIDTH` inches wide and
    ``height`` inches a row; ``title`` above them."""
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(WIDTH, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax, panel in zip(axes, panels, strict=False):
        _draw_panel(ax, panel)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def image_panels(
    images: Mapping[str, np.ndarray],
    cols: int = 2,
    title: str = "",
    height: float = 2.4,
    nearest: bool = False,
) -> Figure:
    """Pictures in a grid of ``cols`` columns, each titled with its key, axes hidden.

    ``images``: ``{title: (H, W, 3) uint8 or (H, W) array}``; a 2-D array is drawn with the
    ``tab20`` colour map (labels, cluster ids). ``nearest`` keeps pixels square (label maps)."""
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(WIDTH, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax, (name, picture) in zip(axes, images.items(), strict=False):
        picture = np.asarray(picture)
        cmap = "tab20" if picture.ndim == 2 else None
        ax.imshow(picture, cmap=cmap, interpolation="nearest" if nearest else "antialiased")
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def class_bars(
    values: Mapping[str, Sequence[float]],
    classes: Sequence[str],
    colours: Sequence[Sequence[int]] | None = None,
    ylabel: str = "",
    title: str = "",
    log: bool = False,
) -> Figure:
    """One bar per class for each series of ``values`` (``{label: per-class values}``), side
    by side; the first series in the classes' ``colours`` (RGB 0-255), the others grey. NaN
    (a class absent from the data) draws no bar."""
    fig = Figure(figsize=(WIDTH, 3.2), layout="constrained")
    ax = fig.subplots()
    xs = np.arange(len(classes))
    width = 0.8 / len(values)
    greys = ("lightgray", "dimgray", "silver")
    for i, (label, series) in enumerate(values.items()):
        colour = np.asarray(colours) / 255 if i == 0 and colours is not None else greys[i % 3]
        offset = (i - (len(values) - 1) / 2) * width
        heights = np.nan_to_num(np.asarray(series, dtype=float))
        ax.bar(xs + offset, heights, width, color=colour, edgecolor="k", label=label)
    ax.set_xticks(xs, classes, rotation=45, ha="right", fontsize=9)
    ax.set(ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    if len(values) > 1:
        ax.legend(fontsize=8)
    return fig
