"""What each view of the page shows for a :class:`~app.session.Session`: pictures from
:mod:`emanet.viz.render`, tables for Gradio, the legend and the summary as text.

Only what a view shows is drawn, when it is shown: the sliders redraw one picture each.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from emanet.predict import Prediction
from emanet.viz import explorer, render

from . import pixels
from .session import Session, number

# What the summary calls a run's attention, by its mean responsibility entropy / ln K.
DECIDED_ENTROPY, UNIFORM_ENTROPY = 0.5, 0.9
# The attention grid's layout; the click handler must use the same numbers.
GRID_COLS, GRID_TILE = 8, 72
#: The parts map is drawn this large (longer side, pixels); clicks on it are scaled.
DISPLAY_MAX_SIDE = 1024
#: How much of the image's brightness the base maps keep under their colours.
DIMMED = 0.55
#: How many bases the feature-space picture names (the largest shares).
NAMED_BASES = 8
#: The convergence plot's lines and their legends (short: the plot's label explains them).
CONVERGENCE_MEASURES = {
    "base_shift": "base shift",
    "entropy": "entropy / ln K",
    "max_responsibility": "max responsibility",
}


def _iteration(session: Session, iteration) -> int:
    return int(np.clip(int(iteration), 1, session.prediction.trace.num_iterations))


def _marked(session: Session, picture: np.ndarray) -> np.ndarray:
    """``picture`` (of the whole image, any size) with the chosen pixel's marker, if any."""
    if session.pixel is None:
        return picture
    width, height = session.prediction.image.size
    x, y = session.pixel
    scale_x, scale_y = picture.shape[1] / width, picture.shape[0] / height
    return explorer.draw_marker(picture, (x + 0.5) * scale_x, (y + 0.5) * scale_y)


def _fraction(session: Session) -> tuple[float, float] | None:
    """The chosen pixel as fractions of the image's width and height."""
    if session.pixel is None:
        return None
    width, height = session.prediction.image.size
    return (session.pixel[0] + 0.5) / width, (session.pixel[1] + 0.5) / height


def overlay(session: Session, opacity) -> np.ndarray:
    """``(H, W, 3)`` uint8 segmentation over the image, at the image's own size."""
    picture = session.prediction.overlay(number(opacity, "overlay opacity", 0.0, 1.0))
    return _marked(session, picture)


def display_size(session: Session) -> tuple[int, int]:
    """``(H, W)`` of the parts map: the image's shape, :data:`DISPLAY_MAX_SIDE` on its longer
    side (a small image is enlarged: the parts are computed finer than its pixels anyway)."""
    width, height = session.prediction.image.size
    scale = DISPLAY_MAX_SIDE / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def parts(session: Session, iteration, opacity) -> np.ndarray:
    """The parts map at iteration ``t`` over the image (each drawn once per session)."""
    t = _iteration(session, iteration)
    alpha = number(opacity, "map opacity", 0.0, 1.0)
    key = (t, round(alpha, 3))
    if key not in session.parts:
        if len(session.parts) >= 4 * session.prediction.trace.num_iterations:
            session.parts.clear()  # bounded: a dragged opacity slider makes new keys
        session.parts[key] = explorer.parts_map(
            session.prediction.trace, t, session.prediction.image, alpha, display_size(session)
        )
    return _marked(session, session.parts[key])


def _dimmed(session: Session) -> np.ndarray:
    return (np.asarray(session.prediction.image, dtype=np.float32) * DIMMED).astype(np.uint8)


def _with_colorbar(picture: np.ndarray, vmax: float) -> np.ndarray:
    bar = render.colorbar(min(picture.shape[1], 420), vmax)
    pad = np.full((bar.shape[0] + 4, picture.shape[1], 3), 255, dtype=np.uint8)
    pad[4:, : bar.shape[1]] = bar
    return np.concatenate([picture, pad])


def grid(session: Session, iteration, opacity=0.7) -> np.ndarray:
    """All bases' responsibilities at iteration ``t`` (clipped to 1..T) over the dimmed image,
    largest share first, with the chosen pixel's top bases framed and a colour bar."""
    trace = session.prediction.trace
    t = _iteration(session, iteration)
    vmax = float(render.responsibility_maps(trace, t).max())
    picture = render.attention_grid(
        trace,
        t,
        image=_dimmed(session),
        order=session.order,
        cols=GRID_COLS,
        tile=GRID_TILE,
        opacity=number(opacity, "map opacity", 0.0, 1.0),
        vmax=vmax,
        highlight=[base for base, _ in pixels.top_bases(session)],
        marker=_fraction(session),
    )
    return _with_colorbar(picture, vmax)


def base_at(session: Session, x: int, y: int) -> int | None:
    """The base whose tile holds pixel ``(x, y)`` of :func:`grid`'s image, or ``None``."""
    trace = session.prediction.trace
    slot = render.attention_grid_slot(trace, x, y, cols=GRID_COLS, tile=GRID_TILE)
    if slot is None or slot >= len(session.order):
        return None
    return int(session.order[slot])


def single_base(session: Session, base, opacity=0.7) -> np.ndarray:
    """Base ``#base`` (clipped to 0..K-1) over the dimmed image at every iteration, side by
    side, with a colour bar."""
    trace = session.prediction.trace
    base = int(np.clip(int(base), 0, len(session.order) - 1))
    vmax = max(float(r[0, base].max()) for r in trace.responsibilities)
    strip = render.base_across_iterations(
        trace,
        base,
        _dimmed(session),
        opacity=number(opacity, "map opacity", 0.0, 1.0),
        vmax=vmax,
        max_width=1200,
        marker=_fraction(session),
    )
    return _with_colorbar(strip, vmax)


def projection(session: Session) -> np.ndarray:
    """The pixels and the bases' paths in the plane of the pixels' two principal components
    (:func:`emanet.viz.explorer.feature_projection`), the largest bases named."""
    trace = session.prediction.trace
    fit = explorer.feature_projection(trace)
    figure = explorer.projection_figure(fit, labelled=session.order[:NAMED_BASES])
    return explorer.figure_array(figure)


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


def _agreement(first: Session, second: Session) -> str:
    a, b = first.prediction, second.prediction
    if list(a.classes) != list(b.classes) or a.labels.shape != b.labels.shape:
        return "label agreement: not comparable (different classes or sizes)"
    return f"label agreement **{float((a.labels == b.labels).mean()) * 100:.1f} %** of the pixels"


def _run_line(session: Session) -> str:
    last = {key: values[-1] for key, values in session.measures.items()}
    return (
        f"{session.model}, T = {session.prediction.trace.num_iterations}, λ = "
        f"{session.inverse_temperature:g}: entropy **{last['entropy']:.3f} × ln K**, "
        f"**{last['active_bases']}** of {len(session.order)} bases in use (≥ 2 % of the "
        f"pixels), mean largest responsibility {last['max_responsibility']:.3f}, model time "
        f"{session.seconds * 1000:.0f} ms"
    )


def comparison(first: Session, second: Session) -> str:
    """What differs between two runs on one image, in numbers."""
    entropy = second.measures["entropy"][-1] - first.measures["entropy"][-1]
    active = second.measures["active_bases"][-1] - first.measures["active_bases"][-1]
    return (
        f"**A** — {_run_line(first)}\n\n**B** — {_run_line(second)}\n\n"
        f"**B − A:** {_agreement(first, second)}; entropy {entropy:+.3f} × ln K; "
        f"{active:+d} bases in use. (A base's number and colour are its index in its own "
        "model: across two models they name different bases.)"
    )
