"""One pixel of a run: its responsibilities over every base at every iteration, as numbers (the
``/pixel`` answer) and as a compact ``K x T`` chart (HTML whose cells carry their values).

Pixels are chosen in the prediction image's pixels (:attr:`app.session.Session.pixel`) and
reported in the uploaded image's, as the person gave them.
"""

from __future__ import annotations

import html

import numpy as np

from emanet.viz import explorer, render

from .session import Session

#: How many of a pixel's bases are named (and framed in the grid).
TOP_BASES = 3
CELL = 10  # px, a chart cell's width


def responsibilities(session: Session) -> np.ndarray | None:
    """``(T, K)`` responsibilities of the chosen pixel (rows sum to 1), or ``None``."""
    if session.pixel is None:
        return None
    width, height = session.prediction.image.size
    x, y = session.pixel
    return explorer.pixel_responsibilities(session.prediction.trace, x, y, (width, height))


def top_bases(session: Session, values: np.ndarray | None = None) -> list[tuple[int, float]]:
    """The chosen pixel's :data:`TOP_BASES` bases at the last iteration, largest first
    (``values``: its :func:`responsibilities`, if already read)."""
    values = responsibilities(session) if values is None else values
    return [] if values is None else explorer.top_bases(values[-1], TOP_BASES)


def _source_pixel(session: Session) -> tuple[int, int]:
    """The chosen pixel in the uploaded image's pixels (the centre of its cell there)."""
    width, height = session.prediction.image.size
    src_w, src_h = session.source_size or (width, height)
    x, y = session.pixel
    return int((x + 0.5) * src_w / width), int((y + 0.5) * src_h / height)


def answer(session: Session, values: np.ndarray | None = None) -> dict:
    """What ``/pixel`` returns: the pixel (uploaded image's pixels), its predicted class, its
    responsibilities as ``T`` lists of ``K`` numbers (base ``k`` at index ``k``) and its top
    bases at the last iteration."""
    values = responsibilities(session) if values is None else values
    if values is None:
        return {}
    x, y = session.pixel
    p = session.prediction
    label = int(p.labels[y, x])
    source_x, source_y = _source_pixel(session)
    return {
        "x": source_x,
        "y": source_y,
        "class": p.classes[label] if label < len(p.classes) else None,
        "iterations": len(values),
        "responsibilities": [[round(float(v), 6) for v in row] for row in values],
        "top_bases": [
            {"base": b, "responsibility": round(v, 6)} for b, v in top_bases(session, values)
        ],
    }


def _cell(t: int, base: int, value: float) -> str:
    r, g, b = (int(c) for c in render.colorize(np.asarray(value)))
    return (
        f'<td data-t="{t}" data-base="{base}" data-value="{value:.6f}" '
        f'title="base #{base}, t={t}: {value:.3f}" '
        f'style="width:{CELL}px;min-width:{CELL}px;height:18px;padding:0;'
        f'border:1px solid #fff;background:rgb({r},{g},{b})"></td>'
    )


def _header(order, top: list[tuple[int, float]]) -> str:
    """A row that points at the top bases' columns (a red triangle and the base's number)."""
    named = {base: rank for rank, (base, _) in enumerate(top, start=1)}
    cells = "".join(
        f'<th title="base #{b}" style="padding:0;font-size:11px;color:#e61e1e">'
        f"{'▼' if int(b) in named else ''}</th>"
        for b in order
    )
    return f'<tr><th style="font-weight:normal;font-size:11px;width:36px">top</th>{cells}</tr>'


def chart(session: Session, values: np.ndarray | None = None) -> str:
    """The ``K x T`` chart: a row per iteration, a column per base (in the grid's order,
    largest share first), each cell coloured by the responsibility (viridis, 0 to 1) and
    carrying it in ``data-value``; the top bases are marked and named."""
    values = responsibilities(session) if values is None else values
    if values is None:
        return '<div class="emanet-pixel">Click a pixel of the segmentation or the parts map.</div>'
    top = top_bases(session, values)
    rows = [_header(session.order, top)]
    for t, row in enumerate(values, start=1):
        cells = "".join(_cell(t, int(b), float(row[b])) for b in session.order)
        label = f'<th style="font-weight:normal;width:36px;padding:0 4px">t={t}</th>'
        rows.append(f"<tr>{label}{cells}</tr>")
    colours = explorer.base_colors(values.shape[1])
    named = " ".join(
        f'<span style="white-space:nowrap"><span style="display:inline-block;width:12px;'
        f"height:12px;border:1px solid #000;background:rgb{tuple(int(c) for c in colours[b])}"
        f'"></span> base #{b}: {v:.3f}</span>'
        for b, v in top
    )
    answered = answer(session, values)
    head = (
        f"pixel ({answered['x']}, {answered['y']}), predicted "
        f"<b>{html.escape(str(answered['class']))}</b> — its bases at t = {len(values)}: {named}"
    )
    width = values.shape[1] * (CELL + 2) + 44
    table = (
        '<table class="emanet-pixel-chart" style="border-collapse:collapse;table-layout:fixed;'
        f'width:{width}px">{"".join(rows)}</table>'
    )
    note = (
        "columns: the K bases in the grid's order (largest share first), ▼ the pixel's top "
        "bases (framed in the grid); colour: the responsibility from 0 (dark) to 1 (yellow); "
        "each row sums to 1"
    )
    return (
        f'<div class="emanet-pixel"><div>{head}</div><div style="overflow-x:auto">{table}</div>'
        f'<div style="font-size:0.85em;opacity:0.8">{note}</div></div>'
    )
