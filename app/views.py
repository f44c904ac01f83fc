"""What each view of the page shows for a :class:`~app.session.Session`: pictures from
:mod:`emanet.viz.render`, tables for Gradio, the legend and the summary as text.

Only what a view shows is drawn, when it is shown: the sliders redraw one picture each.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from emanet.predict import Prediction
from emanet.viz import render

from .session import Session, number

# What the summary calls a run's attention, by its mean responsibility entropy / ln K.
DECIDED_ENTROPY, UNIFORM_ENTROPY = 0.5, 0.9
# The attention grid's layout; the click handler must use the same numbers.
GRID_COLS, GRID_TILE = 8, 72
#: The convergence plot's lines and their legends (short: the plot's label explains them).
CONVERGENCE_MEASURES = {
    "base_shift": "base shift",
    "entropy": "entropy / ln K",
    "max_responsibility": "max responsibility",
}


def overlay(session: Session, opacity) -> np.ndarray:
    """``(H, W, 3)`` uint8 segmentation over the image, at the image's own size."""
    return session.prediction.overlay(number(opacity, "overlay opacity", 0.0, 1.0))


def grid(session: Session, iteration) -> np.ndarray:
    """All bases' responsibilities at iteration ``t`` (clipped to 1..T), largest share first."""
    trace = session.prediction.trace
    t = int(np.clip(int(iteration), 1, trace.num_iterations))
    return render.attention_grid(trace, t, order=session.order, cols=GRID_COLS, tile=GRID_TILE)


def base_at(session: Session, x: int, y: int) -> int | None:
    """The base whose tile holds pixel ``(x, y)`` of :func:`grid`'s image, or ``None``."""
    trace = session.prediction.trace
    slot = render.attention_grid_slot(trace, x, y, cols=GRID_COLS, tile=GRID_TILE)
    if slot is None or slot >= len(session.order):
        return None
    return int(session.order[slot])


def single_base(session: Session, base) -> np.ndarray:
    """Base ``#base`` (clipped to 0..K-1) over the image at every iteration, side by side."""
    base = int(np.clip(int(base), 0, len(session.order) - 1))
    return render.base_across_iterations(
        session.prediction.trace, base, session.prediction.image, max_width=1400
    )


def base_class_heatmap(session: Session, max_bases: int = 32) -> np.ndarray:
    """Bases (rows, largest share first) x classes present (columns) as a uint8 heat map."""
    p = session.prediction
    matrix = render.base_class_matrix(p.trace, p.labels, num_classes=len(p.classes))
    return render.base_class_image(matrix, p.classes, session.order, max_bases=max_bases)


def convergence_table(session: Session) -> pd.DataFrame:
    """Per EM iteration, in long form for ``gr.LinePlot`` (a line a measure): how far the bases
    moved and how decided the pixels are (:func:`emanet.viz.render.convergence`)."""
    rows = [
        {"iteration": t, "value": value, "measure": label}
        for key, label in CONVERGENCE_MEASURES.items()
        for t, value in enumerate(session.measures[key], start=1)
    ]
    return pd.DataFrame(rows, columns=["iteration", "value", "measure"])


def class_table(areas: dict[str, float]) -> pd.DataFrame:
    """Classes present and their share of the image (%), largest first, from
    :meth:`~emanet.predict.Prediction.class_areas`."""
    rows = [[name, round(share * 100.0, 2)] for name, share in areas.items()]
    return pd.DataFrame(rows, columns=["class", "area (%)"])


def legend_html(prediction: Prediction, areas: dict[str, float]) -> str:
    """The colour legend of the classes in ``areas`` (largest first): a swatch in the
    prediction's palette and the (escaped) name of each."""
    index = {name: i for i, name in enumerate(prediction.classes)}
    items = []
    for name in areas:
        r, g, b = (int(v) for v in prediction.palette[index[name]])
        items.append(
            '<span style="display:inline-flex;align-items:center;gap:6px;margin:2px 14px 2px 0">'
            f'<span style="display:inline-block;width:14px;height:12px;'
            f'background:#{r:02x}{g:02x}{b:02x};border:1px solid #000"></span>'
            f"{html.escape(name)}</span>"
        )
    body = "".join(items) or "no class"
    return f'<div class="emanet-legend" style="display:flex;flex-wrap:wrap">{body}</div>'


def _lambda_text(session: Session) -> str:
    own = f"{session.own_lambda:g}"
    if session.lambda_scale == 1.0:
        return f"λ = {own}, the model's own"
    return (
        f"**what-if: λ = {session.inverse_temperature:g} = {session.lambda_scale:g}× the "
        f"model's own λ = {own}**, not the responsibilities the model was trained with "
        "(set the λ multiplier to 1 for those)"
    )


def attention_summary(session: Session) -> str:
    """What the attention of this run measured (its last iteration) and with which lambda."""
    entropy = session.measures["entropy"][-1]
    steps, bases = len(session.measures["entropy"]), len(session.order)
    if entropy >= UNIFORM_ENTROPY:
        verdict = "nearly uniform: every pixel is shared by many bases, the maps show little"
    elif entropy <= DECIDED_ENTROPY:
        verdict = "decided: most pixels belong to one base"
    else:
        verdict = "partly decided"
    return (
        f"**Attention at EM iteration {steps} of {steps}** ({_lambda_text(session)}): mean "
        f"responsibility entropy **{entropy:.3f} × ln K** (1 = uniform over the {bases} "
        f"bases) — {verdict}; mean largest responsibility "
        f"{session.measures['max_responsibility'][-1]:.3f} (uniform: {1 / bases:.3f}); "
        f"{session.measures['active_bases'][-1]} of {bases} bases are the most responsible "
        "base of ≥ 2 % of the pixels."
    )


def summary(session: Session, random_weights: bool = False) -> str:
    """Markdown about the run: its measured attention, then sizes, iterations, model time."""
    p = session.prediction
    text = (
        f"{p.image.width}×{p.image.height} image, model input {p.input_size[1]}×"
        f"{p.input_size[0]}, {p.trace.num_iterations} EM iterations, "
        f"{len(session.order)} bases — model time {session.seconds * 1000:.0f} ms "
        f"({session.model})"
    )
    if random_weights:
        text += " — **random weights: the segmentation is meaningless**"
    return f"{attention_summary(session)}\n\n{text}"
