"""What EM attention does, as arrays: responsibility grids, convergence, bases vs classes.

Everything here reads :class:`~emanet.models.ema.EMTrace` records, never models, and returns numpy
arrays or plain numbers. The ``*_grid`` / ``*_image`` / ``base_across_iterations`` functions
return ``(H, W, 3)`` uint8 images built with numpy and Pillow, fast enough for the app.
Matplotlib figures of the same things are in :mod:`emanet.viz.figures`; matplotlib is used here
only for its colour maps. The measures of how decided the pixels are come from
:mod:`emanet.models.attention`, so the app, the notebooks and the benchmarks report one number.

Iterations are counted from 1 as in the paper (``t = 1..T``); ``-1`` means the last one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from emanet.models.attention import AttentionStats, trace_stats
from emanet.models.ema import EMTrace

__all__ = [
    "responsibility_maps",
    "base_order",
    "base_shares",
    "attention_grid",
    "attention_grid_slot",
    "base_across_iterations",
    "colorbar",
    "colorize",
    "convergence",
    "base_class_matrix",
    "base_class_image",
]

# Colour look-up tables, (256, 3) uint8: indexing is much faster than calling the colormap.
_VIRIDIS = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)
_MAGMA = (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)
_GAP = 2  # white pixels between grid tiles


def _as_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array)


def _index(trace: EMTrace, iteration: int) -> int:
    """1-based iteration (or negative from the end) -> list index, with a clear error."""
    steps = trace.num_iterations
    if steps == 0:
        raise ValueError("the trace is empty: run the model with trace=True")
    if 1 <= iteration <= steps:
        return iteration - 1
    if -steps <= iteration <= -1:
        return iteration
    raise ValueError(f"iteration must be in 1..{steps} (or -1 for the last), got {iteration}")


def responsibility_maps(trace: EMTrace, iteration: int = -1, sample: int = 0) -> np.ndarray:
    """``(K, h, w)`` float32 responsibilities of one image at ``iteration`` (1-based; -1 last)."""
    maps = trace.responsibilities[_index(trace, iteration)][sample]
    return _as_numpy(maps).astype(np.float32, copy=False)


def base_shares(responsibilities) -> np.ndarray:
    """``(K,)`` share of the image (0-1) each base takes: its responsibility summed over pixels,
    over the pixel count (the shares sum to 1 since every pixel's responsibilities do)."""
    resp = _as_numpy(responsibilities).astype(np.float64, copy=False)
    mass = resp.reshape(resp.shape[0], -1).sum(axis=1)
    return mass / max(mass.sum(), 1e-12)


def base_order(responsibilities) -> np.ndarray:
    """Indices of the bases of ``(K, h, w)`` responsibilities by their share, largest first.

    Ties keep the base index order (stable sort), so the order is deterministic.
    """
    return np.argsort(-base_shares(responsibilities), kind="stable")


def colorize(values: np.ndarray, lut: np.ndarray = _VIRIDIS) -> np.ndarray:
    """``(...)`` values in [0, 1] -> ``(..., 3)`` uint8 colours."""
    return lut[np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)]


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """``(h, w)`` float or ``(h, w, 3)`` uint8 -> ``size = (H, W)``, same dtype."""
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if array.ndim == 2:
        image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
        return np.asarray(image.resize((size[1], size[0]), resample))
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def _picture(image) -> np.ndarray:
    """A PIL image or array -> ``(H, W, 3)`` uint8 RGB array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3], dtype=np.uint8)


def _blend(under: np.ndarray, over: np.ndarray, opacity: float) -> np.ndarray:
    """``over`` (uint8 colours) drawn with ``opacity`` on ``under`` (uint8, broadcastable)."""
    mixed = under.astype(np.float32) * (1.0 - opacity) + over.astype(np.float32) * opacity
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _vmax(maps: np.ndarray, vmax: float | None) -> float:
    """The value drawn brightest: ``vmax`` or the maps' maximum (never 0)."""
    if vmax is None:
        vmax = float(maps.max(initial=0.0))
    return max(float(vmax), 1e-12)


@dataclass(frozen=True)
class _Glyph:
    """One character of Pillow's default font, rendered once."""

    advance: float  # how far the pen moves after it
    box: tuple[int, int, int, int]  # its ink's (left, top, right, bottom), the pen at (0, 0)
    mask: np.ndarray  # (h, w) uint8 ink with the pen at ``offset``
    offset: tuple[int, int]


def _glyph(font, char: str) -> _Glyph:
    left, top, right, bottom = font.getbbox(char)
    # The margin keeps ink left of or above the pen (e.g. a comma's tail), as Pillow does.
    ox, oy = max(0, -left), max(0, -top)
    mask = Image.new("L", (max(right + ox, 1), max(bottom + oy, 1)), 0)
    ImageDraw.Draw(mask).text((ox, oy), char, fill=255, font=font)
    return _Glyph(font.getlength(char), (left, top, right, bottom), np.asarray(mask), (ox, oy))


def _paste_ink(canvas: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """Brighten ``canvas`` to the ``(h, w)`` ``mask`` placed with its corner at ``(x, y)``
    (clipped to the canvas)."""
    cx, cy = max(x, 0), max(y, 0)
    region = canvas[cy : y + mask.shape[0], cx : x + mask.shape[1]]
    if region.size:
        ink = mask[cy - y : cy - y + region.shape[0], cx - x : cx - x + region.shape[1]]
        np.maximum(region, ink[..., None], out=region)


def _draw_labels(canvas: np.ndarray, labels: Sequence[tuple[tuple[int, int], str]]) -> None:
    """Write each ``((x, y), text)`` white on a black box into a ``(H, W, 3)`` uint8 array.

    Pixel for pixel what Pillow draws with its default font (``textbbox``, a rectangle one
    pixel larger, ``text``; the font has no kerning), but each character is rendered once per
    call and pasted with numpy, where Pillow lays out and renders every string anew: the app's
    attention grid has 64 labels (``benchmarks/bench_app.py --variants`` measures the gain).
    """
    font = ImageFont.load_default()
    glyphs = {char: _glyph(font, char) for char in {c for _, text in labels for c in text}}
    for (x, y), text in labels:
        placed, pen = [], 0.0  # (pen x, glyph) of each character
        for char in text:
            placed.append((int(pen), glyphs[char]))
            pen += glyphs[char].advance
        inked = [(px, glyph.box) for px, glyph in placed if glyph.box[3] > glyph.box[1]]
        if not inked:
            continue
        left = min(px + box[0] for px, box in inked)
        right = max(px + box[2] for px, box in inked)
        top, bottom = min(box[1] for _, box in inked), max(box[3] for _, box in inked)
        # Pillow's rectangle includes both corners: one pixel of margin on every side.
        canvas[max(y + top - 1, 0) : y + bottom + 2, max(x + left - 1, 0) : x + right + 2] = 0
        for px, glyph in placed:
            _paste_ink(canvas, glyph.mask, x + px - glyph.offset[0], y - glyph.offset[1])


def _tile_size(h: int, w: int, tile: int) -> tuple[int, int]:
    """A tile ``tile`` pixels high with the feature map's aspect ratio."""
    return tile, max(1, round(tile * w / h))


def _tile_corner(slot: int, cols: int, tile_h: int, tile_w: int) -> tuple[int, int]:
    """``(x, y)`` of the top-left pixel of grid tile ``slot`` (row-major, ``cols`` a row)."""
    row, col = divmod(slot, cols)
    return _GAP + col * (tile_w + _GAP), _GAP + row * (tile_h + _GAP)


def _tiles(maps: np.ndarray, size: tuple[int, int], vmax: float | None) -> np.ndarray:
    """``(n, h, w)`` maps -> ``(n, H, W, 3)`` uint8 viridis tiles of ``size = (H, W)``, upsampled
    by nearest neighbour (one block of tile pixels = one feature pixel, nothing invented)."""
    _, h, w = maps.shape
    ys = np.arange(size[0]) * h // size[0]
    xs = np.arange(size[1]) * w // size[1]
    # Colour at the feature resolution, then repeat the colours: the same pixels, less work.
    return colorize(maps / _vmax(maps, vmax)).take(ys, axis=1).take(xs, axis=2)


def attention_grid(
    trace: EMTrace,
    iteration: int = -1,
    image=None,
    order: Sequence[int] | None = None,
    max_bases: int = 64,
    cols: int = 8,
    tile: int = 96,
    opacity: float = 0.7,
    vmax: float | None = None,
    sample: int = 0,
    highlight: Sequence[int] = (),
    marker: tuple[float, float] | None = None,
) -> np.ndarray:
    """Responsibility map of every base at one iteration, as one ``(H, W, 3)`` uint8 grid.

    Args:
        trace: the EM trace; responsibilities ``(B, K, h, w)`` per iteration.
        iteration: ``t`` (1-based; -1 = last).
        image: optional picture that was segmented: each tile is then the map blended over it
            (``opacity`` of colour), which shows *what* a base covers, not just where.
        order: bases to show, in this order (default: by share of the image at ``t``).
        max_bases: show at most this many tiles.
        cols: tiles per row.
        tile: tile height in pixels; the width follows the map's aspect ratio.
        vmax: the responsibility drawn brightest; default: the largest in the shown maps. One
            scale for all tiles, so tiles compare; not 1, because undecided pixels (e.g. early
            iterations, or an untrained model: ~1/K everywhere) would all be black.
        highlight: bases whose tiles get a red frame (e.g. a chosen pixel's top bases).
        marker: ``(x, y)`` as fractions of the image's width and height: a dot on every tile
            (e.g. the chosen pixel).

    Tiles are ``rows x cols`` with :data:`_GAP` white pixels around each, so the result is
    ``(rows * (tile_h + 2) + 2, cols * (tile_w + 2) + 2, 3)``. Each map is coloured with
    viridis from 0 to ``vmax`` and labelled ``#base share%``.
    """
    resp = responsibility_maps(trace, iteration, sample)
    order = base_order(resp) if order is None else np.asarray(order, dtype=np.int64)
    order = order[:max_bases]
    tile_h, tile_w = _tile_size(*resp.shape[1:], tile)
    tiles = _tiles(resp[order], (tile_h, tile_w), vmax)
    if image is not None:
        tiles = _blend(_resize(_picture(image), (tile_h, tile_w)), tiles, opacity)
    rows = max(1, -(-len(order) // cols))
    grid = np.full(
        (rows * (tile_h + _GAP) + _GAP, cols * (tile_w + _GAP) + _GAP, 3), 255, dtype=np.uint8
    )
    shares = base_shares(resp)
    labels = []
    for slot, (base, picture) in enumerate(zip(order, tiles, strict=True)):
        x, y = _tile_corner(slot, cols, tile_h, tile_w)
        grid[y : y + tile_h, x : x + tile_w] = _mark(picture, marker)
        if base in highlight:
            _frame(grid, x, y, tile_h, tile_w)
        labels.append(((x + 1, y), f"#{base} {shares[base] * 100:.1f}%"))
    _draw_labels(grid, labels)
    return grid


def _mark(tile: np.ndarray, marker: tuple[float, float] | None) -> np.ndarray:
    """``tile`` with a small white-on-black dot at ``marker`` (fractions of its size)."""
    if marker is None:
        return tile
    tile = tile.copy()
    cy, cx = int(marker[1] * tile.shape[0]), int(marker[0] * tile.shape[1])
    tile[max(cy - 3, 0) : cy + 4, max(cx - 3, 0) : cx + 4] = 0
    tile[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2] = 255
    return tile


def _frame(grid: np.ndarray, x: int, y: int, tile_h: int, tile_w: int) -> None:
    """A 2-pixel red frame over the border of the tile at ``(x, y)``."""
    red = np.array([230, 30, 30], dtype=np.uint8)
    grid[y : y + 2, x : x + tile_w] = red
    grid[y + tile_h - 2 : y + tile_h, x : x + tile_w] = red
    grid[y : y + tile_h, x : x + 2] = red
    grid[y : y + tile_h, x + tile_w - 2 : x + tile_w] = red


def colorbar(width: int, vmax: float, label: str = "responsibility") -> np.ndarray:
    """``(20, width, 3)`` uint8: the viridis scale of the maps from 0 (left) to ``vmax``
    (right), labelled, to put under a grid or a strip."""
    ramp = colorize(np.linspace(0.0, 1.0, max(width, 2)))
    bar = np.repeat(ramp[None], 20, axis=0)
    right = f"{vmax:.2f}"
    _draw_labels(bar, [((3, 4), "0"), ((width // 2 - 40, 4), label), ((width - 34, 4), right)])
    return bar


def attention_grid_slot(
    trace: EMTrace, x: int, y: int, cols: int = 8, tile: int = 96, sample: int = 0
) -> int | None:
    """Which tile of :func:`attention_grid` (same ``cols`` / ``tile``) holds pixel ``(x, y)``.

    Returns the slot (0 = first tile, an index into the grid's ``order``) or ``None`` for a
    gap or a point outside the tiles. Lets a click on the grid select a base.
    """
    _, _, h, w = trace.responsibilities[-1].shape
    tile_h, tile_w = _tile_size(h, w, tile)
    c, dx = divmod(int(x) - _GAP, tile_w + _GAP)
    r, dy = divmod(int(y) - _GAP, tile_h + _GAP)
    if x < _GAP or y < _GAP or c >= cols or dx >= tile_w or dy >= tile_h:
        return None
    return r * cols + c


def base_across_iterations(
    trace: EMTrace,
    base: int,
    image,
    opacity: float = 0.6,
    vmax: float | None = None,
    sample: int = 0,
    max_width: int = 2048,
    marker: tuple[float, float] | None = None,
) -> np.ndarray:
    """One base's responsibility over the image at every iteration, side by side.

    Args:
        trace: the EM trace (``T`` iterations).
        base: the base index ``0..K-1``.
        image: the picture that was segmented (PIL or ``(H, W, 3)`` uint8 array).
        opacity: weight of the viridis map over the picture.
        vmax: the responsibility drawn brightest (default: this base's maximum over all
            iterations, one scale for all panels so that they compare).
        max_width: the whole strip is scaled down to at most this width.
        marker: ``(x, y)`` as fractions of the image's size: a dot on every panel.

    Returns:
        ``(H', T * W' + (T - 1) * 4, 3)`` uint8: panels labelled ``base #b, t=1..T``, separated
        by 4 white pixels; ``(H', W')`` is the picture's size, shrunk to fit ``max_width``. The
        map is upsampled bilinearly to the picture (a smooth overlay reads better on a photo).
    """
    num_bases = trace.responsibilities[0].shape[1]
    if not 0 <= base < num_bases:
        raise ValueError(f"base must be in 0..{num_bases - 1}, got {base}")
    picture = _picture(image)
    steps = trace.num_iterations
    height, width = picture.shape[:2]
    scale = min(1.0, (max_width - 4 * (steps - 1)) / (steps * width))  # 4: the separators
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    under = _resize(picture, size)
    maps = [responsibility_maps(trace, t, sample)[base] for t in range(1, steps + 1)]
    brightest = _vmax(np.stack(maps), vmax)
    separator = np.full((size[0], 4, 3), 255, dtype=np.uint8)
    panels = []
    for resp in maps:
        heat = colorize(np.clip(_resize(resp, size) / brightest, 0, 1))
        panels += [_mark(_blend(under, heat, opacity), marker), separator]
    strip = np.concatenate(panels[:-1], axis=1)
    _draw_labels(
        strip, [((t * (size[1] + 4) + 3, 2), f"base #{base}, t={t + 1}") for t in range(steps)]
    )
    return strip


def _base_shift(bases: torch.Tensor, previous: torch.Tensor | None) -> float:
    """Mean over the ``K`` bases of ``1 - cos`` between two ``(C, K)`` sets (NaN without
    ``previous``)."""
    if previous is None:
        return float("nan")
    cos = torch.nn.functional.cosine_similarity(bases.double(), previous.double(), dim=0)
    return float((1.0 - cos).mean())


def convergence(trace: EMTrace, sample: int = 0) -> dict[str, list[float]]:
    """Per iteration ``t = 1..T``: how far the bases moved and how decided the pixels are.

    Returns:
        ``{"base_shift": [T floats], "entropy": [...], "max_responsibility": [...],
        "active_bases": [...], "mean_abs_cos": [...]}``. ``base_shift[t]`` is the mean over
        the ``K`` bases of ``1 - cos(mu_t, mu_{t-1})`` (``mu_0`` = the initial bases; NaN at
        ``t = 1`` if the trace has none), in [0, 2]; the others are
        :mod:`emanet.models.attention`'s measures of iteration ``t`` (``entropy`` is divided by
        ``ln K``: 1 when every pixel is undecided, 0 when each picks one base).
    """
    _index(trace, -1)  # an empty trace is an error
    measures = [trace_stats(trace, t)[sample] for t in range(trace.num_iterations)]
    previous = [trace.initial_bases, *trace.bases[:-1]]
    shifts = [
        _base_shift(bases[sample], None if before is None else before[sample])
        for bases, before in zip(trace.bases, previous, strict=True)
    ]
    names = [field.name for field in fields(AttentionStats)]
    return {"base_shift": shifts, **{n: [getattr(m, n) for m in measures] for n in names}}


def base_class_matrix(
    trace: EMTrace,
    labels: np.ndarray,
    num_classes: int = 19,
    iteration: int = -1,
    sample: int = 0,
    ignore_index: int = 255,
) -> np.ndarray:
    """``(K, num_classes)``: for each base, the share of its responsibility mass on each class.

    ``labels`` ``(H, W)`` trainIds (predicted or ground truth) are brought to the trace's
    ``(h, w)`` with nearest neighbour; ``ignore_index`` and ids ``>= num_classes`` do not
    count. Rows sum to 1 (a base with no mass on counted pixels gets a row of zeros).
    """
    resp = responsibility_maps(trace, iteration, sample)
    k, h, w = resp.shape
    labels = np.asarray(labels)
    # Nearest neighbour by index (same pixel centres as Pillow's NEAREST), exact for any dtype.
    ys = ((np.arange(h) + 0.5) * labels.shape[0] / h).astype(np.int64)
    xs = ((np.arange(w) + 0.5) * labels.shape[1] / w).astype(np.int64)
    small = labels[ys][:, xs].astype(np.int64).ravel()
    valid = (small != ignore_index) & (small >= 0) & (small < num_classes)
    flat = resp.reshape(k, -1).astype(np.float64)
    matrix = np.zeros((k, num_classes), dtype=np.float64)
    # Sum each base's mass per class: scatter-add over the valid pixels.
    np.add.at(matrix.T, small[valid], flat[:, valid].T)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def base_class_image(
    matrix: np.ndarray,
    classes: Sequence[str],
    order: Sequence[int] | None = None,
    max_bases: int = 32,
    min_share: float = 0.01,
    cell: int = 16,
) -> np.ndarray:
    """:func:`base_class_matrix` as a labelled ``(H, W, 3)`` uint8 heat map (magma, 0-1).

    Rows are the first ``max_bases`` bases of ``order`` (``#index``); columns only the classes
    that take at least ``min_share`` of some shown base (19 mostly empty columns hide the
    story).
    """
    order = np.arange(matrix.shape[0]) if order is None else np.asarray(order)
    order = order[:max_bases]
    shown = matrix[order]
    present = [c for c in range(len(classes)) if shown[:, c].max(initial=0) >= min_share] or [0]
    heat = colorize(shown[:, present], _MAGMA).repeat(cell, 0).repeat(cell, 1)
    font = ImageFont.load_default()
    left, top = 40, max(font.getbbox(classes[c])[2] for c in present) + 8
    canvas = Image.new("RGB", (left + heat.shape[1] + 4, top + heat.shape[0] + 4), "white")
    canvas.paste(Image.fromarray(heat), (left, top))
    draw = ImageDraw.Draw(canvas)
    for row, base in enumerate(order):
        draw.text((2, top + row * cell + 2), f"#{base}", fill=(0, 0, 0))
    # Column titles written sideways: draw horizontally, rotate the strip by 90 degrees.
    for col, c in enumerate(present):
        strip = Image.new("RGB", (top - 4, cell), "white")
        ImageDraw.Draw(strip).text((2, 2), classes[c], fill=(0, 0, 0))
        canvas.paste(strip.rotate(90, expand=True), (left + col * cell, 2))
    return np.asarray(canvas)
