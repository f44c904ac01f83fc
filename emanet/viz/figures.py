"""Matplotlib figures for notebooks and reports: EM convergence, bases vs classes, training
curves.

The numbers come from :mod:`emanet.viz.render`. Only :class:`matplotlib.figure.Figure` is used
(no pyplot), so nothing depends on the backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from emanet.models.ema import EMTrace
from emanet.viz.render import convergence

__all__ = ["base_class_figure", "convergence_figure", "plot_training_curves"]


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
    fig = Figure(figsize=(7, max(3, 0.12 * len(order) + 1.5)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(matrix[order], aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    step = max(1, len(order) // 16)
    ax.set_yticks(range(0, len(order), step), [str(b) for b in order[::step]], fontsize=7)
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
    if val:
        ax2.plot([r["iter"] for r in val], [r["mIoU"] for r in val], marker="o", color="tab:green")
    else:
        ax2.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax2.transAxes)
    ax2.set(xlabel="iteration", ylabel="mIoU (%)", title="validation mIoU")
    return fig
