"""What the explorer shows of EM attention: the parts map, one pixel's responsibilities and the
bases in feature space.

* The **parts map** colours every pixel of the image by its most responsible base (one fixed
  colour per base, :func:`base_colors`) and shades it by how decided the pixel is (its largest
  responsibility, from ``1/K``: dark, to 1: full colour). The responsibilities are brought to the
  image as the logits are (bilinear, ``align_corners=False``), so a region's border follows the
  image rather than the 8x8 blocks of the feature map. One map per iteration ``t = 1..T`` shows
  the bases converge.
* :func:`pixel_responsibilities` reads one pixel's ``(T, K)`` responsibilities with the same
  interpolation: each row sums to 1.
* :func:`feature_projection` draws a sample of the pixels and the bases at ``t = 0..T`` in the
  plane of the pixels' first two principal components: the M-step moves every base towards the
  pixels it is responsible for.

All read :class:`~emanet.models.ema.EMTrace` records and return numpy arrays; iterations count
from 1 as in the paper, ``-1`` is the last.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from emanet.fast.parts import parts_by_candidates
from emanet.models.ema import EMTrace

from .render import _blend, _index, _picture

__all__ = [
    "FeatureProjection",
    "base_colors",
    "draw_marker",
    "feature_projection",
    "figure_array",
    "parts",
    "parts_map",
    "pixel_responsibilities",
    "projection_figure",
    "top_bases",
]

#: The parts map is computed at most this many pixels on its longer side, then enlarged to the
#: image: a ``K``-channel interpolation costs ``K`` times the pixels, and finer than this the
#: regions' borders look the same on a screen.
PARTS_MAX_SIDE = 512
#: Share of a base's colour kept where a pixel is undecided (responsibility ``1/K``).
UNDECIDED_SHADE = 0.25


def base_colors(num_bases: int) -> np.ndarray:
    """``(K, 3)`` uint8: a fixed colour for each base, the same in every view and every run.

    Hues step by the golden angle, so bases with near indices get distant hues, and saturation
    and brightness cycle through three levels, so that 64 colours stay apart.
    """
    colours = []
    for base in range(num_bases):
        hue = (base * 0.618033988749895) % 1.0
        saturation = (0.9, 0.55, 0.75)[base % 3]
        value = (1.0, 0.85, 0.65)[(base // 3) % 3]
        colours.append(colorsys.hsv_to_rgb(hue, saturation, value))
    return (np.asarray(colours).reshape(-1, 3) * 255 + 0.5).astype(np.uint8)


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``(H, W)`` shrunk to at most ``max_side`` on the longer side (never enlarged)."""
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def parts(
    trace: EMTrace,
    iteration: int = -1,
    size: tuple[int, int] | None = None,
    sample: int = 0,
    fast: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's most responsible base and its responsibility at ``iteration``.

    Args:
        size: ``(H, W)`` to bring the ``(K, h, w)`` responsibilities to, bilinearly as the
            logits are; default: the feature map's own.
        fast: find each pixel's base among its four cells' winners
            (:func:`emanet.fast.parts.parts_by_candidates`, the same result) instead of
            interpolating all ``K`` maps.

    Returns:
        ``(H, W)`` int64 bases and ``(H, W)`` float32 responsibilities in ``[1/K, 1]``.
    """
    maps = trace.responsibilities[_index(trace, iteration)][sample].float()
    if size is None or tuple(size) == tuple(maps.shape[-2:]):
        values, bases = maps.max(dim=0)
    elif fast:
        bases, values = parts_by_candidates(maps, tuple(size))
    else:
        # channels_last: the K values of a pixel are contiguous, so the max reads them in order.
        maps = maps[None].contiguous(memory_format=torch.channels_last)
        up = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
        values, bases = up[0].max(dim=0)
    return bases.numpy(), values.numpy()


def parts_map(
    trace: EMTrace,
    iteration: int = -1,
    image=None,
    opacity: float = 0.7,
    size: tuple[int, int] | None = None,
    max_side: int = PARTS_MAX_SIDE,
    sample: int = 0,
) -> np.ndarray:
    """The parts map at ``iteration`` as an ``(H, W, 3)`` uint8 picture.

    Args:
        image: the picture that was segmented: the map is drawn over it with ``opacity`` of
            colour (``1``: the map alone). Without it, the map is drawn on black.
        size: ``(H, W)`` of the result; default: the image's size (the feature map's size
            times 8 without an image).
        max_side: the map is computed at most this large (see :data:`PARTS_MAX_SIDE`) and
            enlarged to ``size`` by nearest neighbour.
    """
    picture = None if image is None else _picture(image)
    if size is None:
        h, w = trace.responsibilities[0].shape[-2:]
        size = picture.shape[:2] if picture is not None else (8 * h, 8 * w)
    work = _fit(tuple(size), max_side)
    bases, values = parts(trace, iteration, work, sample)
    num_bases = trace.responsibilities[0].shape[1]
    decided = np.clip((values - 1.0 / num_bases) / (1.0 - 1.0 / num_bases), 0.0, 1.0)
    shade = UNDECIDED_SHADE + (1.0 - UNDECIDED_SHADE) * decided
    colour = (base_colors(num_bases)[bases] * shade[..., None] + 0.5).astype(np.uint8)
    if picture is not None and opacity < 1.0:
        under = np.asarray(Image.fromarray(picture).resize(work[::-1], Image.BILINEAR))
        colour = _blend(under, colour, opacity)
    if work != tuple(size):
        colour = np.asarray(Image.fromarray(colour).resize(tuple(size)[::-1], Image.NEAREST))
    return colour


def _bilinear(position: float, size_in: int, size_out: int) -> tuple[int, int, float]:
    """Two source indices and the weight of the second, for output pixel ``position`` of an
    ``align_corners=False`` bilinear resize from ``size_in`` to ``size_out`` (as PyTorch)."""
    source = max((position + 0.5) * size_in / size_out - 0.5, 0.0)
    first = min(int(source), size_in - 1)
    return first, min(first + 1, size_in - 1), source - first


def pixel_responsibilities(
    trace: EMTrace, x: int, y: int, image_size: tuple[int, int], sample: int = 0
) -> np.ndarray:
    """``(T, K)`` float64: the responsibilities of every base for pixel ``(x, y)`` of an image
    of ``image_size = (W, H)`` at each iteration, interpolated as :func:`parts` does (each row
    sums to 1)."""
    width, height = image_size
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"pixel ({x}, {y}) is outside the {width}x{height} image")
    h, w = trace.responsibilities[0].shape[-2:]
    y0, y1, wy = _bilinear(y, h, height)
    x0, x1, wx = _bilinear(x, w, width)
    rows = []
    for maps in trace.responsibilities:
        # the four cells first: converting the whole map would cost more than the lookup
        r = maps[sample][:, [y0, y1]][:, :, [x0, x1]].double().numpy()  # (K, 2, 2)
        top = r[:, 0, 0] * (1 - wx) + r[:, 0, 1] * wx
        bottom = r[:, 1, 0] * (1 - wx) + r[:, 1, 1] * wx
        rows.append(top * (1 - wy) + bottom * wy)
    return np.stack(rows)


def top_bases(responsibilities: np.ndarray, count: int = 3) -> list[tuple[int, float]]:
    """The ``count`` bases with the largest of ``(K,)`` responsibilities, as ``(base, value)``
    pairs, largest first (ties: the lower base index first)."""
    values = np.asarray(responsibilities, dtype=np.float64)
    order = np.argsort(-values, kind="stable")[:count]
    return [(int(base), float(values[base])) for base in order]


def draw_marker(picture: np.ndarray, x: float, y: float, radius: int = 7) -> np.ndarray:
    """A copy of ``(H, W, 3)`` uint8 ``picture`` with a ring around pixel ``(x, y)``: white on a
    black outline, so that it shows on any colour."""
    out = picture.copy()
    height, width = out.shape[:2]
    ys, xs = np.ogrid[:height, :width]
    distance = np.hypot(xs - x, ys - y)
    out[(distance >= radius - 2.5) & (distance <= radius + 2.5)] = 0
    out[(distance >= radius - 1) & (distance <= radius + 1)] = 255
    return out


@dataclass(frozen=True)
class FeatureProjection:
    """Pixels and bases in the plane of the pixels' first two principal components.

    Attributes:
        points: ``(n, 2)`` a sample of the pixels.
        point_bases: ``(n,)`` the most responsible base of each point at the last iteration.
        paths: ``(T + 1, K, 2)`` every base at ``t = 0`` (the bases the iterations start
            from) and after each M-step ``t = 1..T``.
        explained: ``(2,)`` the share of the pixels' variance along each axis.
    """

    points: np.ndarray
    point_bases: np.ndarray
    paths: np.ndarray
    explained: np.ndarray


def feature_projection(
    trace: EMTrace, num_points: int = 2000, seed: int = 0, sample: int = 0
) -> FeatureProjection:
    """Project a seeded sample of ``num_points`` pixels and the bases' paths with PCA fitted
    on the sample.

    Pixels are drawn as unit vectors: the E-step's ``lambda x^T mu`` ranks the bases of a
    pixel by their cosine with it (the pixel's length scales all ``K`` logits alike), and the
    bases are unit vectors, so pixels and bases share one sphere.
    """
    if trace.features is None or trace.initial_bases is None:
        raise ValueError("the trace has no features: record it with EMAttention (trace=...)")
    features = trace.features[sample].double().flatten(1).T  # (N, C)
    pixels = F.normalize(features, dim=1)
    picked = torch.from_numpy(np.random.default_rng(seed).permutation(len(pixels))[:num_points])
    chosen = pixels[picked]
    centre = chosen.mean(dim=0)
    # The principal axes: eigenvectors of the (C, C) scatter matrix, largest eigenvalues first.
    variance, axes = torch.linalg.eigh((chosen - centre).T @ (chosen - centre))
    axes = axes[:, [-1, -2]]  # (C, 2)
    bases = [trace.initial_bases, *trace.bases]
    paths = torch.stack([(b[sample].double().T - centre) @ axes for b in bases])
    last = trace.responsibilities[-1][sample].flatten(1)  # (K, N)
    return FeatureProjection(
        points=((chosen - centre) @ axes).numpy(),
        point_bases=last.argmax(dim=0)[picked].numpy(),
        paths=paths.numpy(),
        explained=(variance[[-1, -2]] / variance.sum().clamp_min(1e-12)).numpy(),
    )


def projection_figure(
    projection: FeatureProjection, labelled: Sequence[int] = (), width: float = 6.4
) -> Figure:
    """:class:`FeatureProjection` drawn: the pixels coloured by their base, and each base's
    path from ``t = 0`` (a cross) to ``t = T`` (a ring) in its colour; the bases ``labelled``
    carry their number."""
    num_bases = projection.paths.shape[1]
    colours = base_colors(num_bases) / 255.0
    fig = Figure(figsize=(width, width * 0.75), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.scatter(*projection.points.T, s=5, c=colours[projection.point_bases], alpha=0.45, lw=0)
    in_use = np.unique(projection.point_bases)
    for base in range(num_bases):
        path = projection.paths[:, base]
        shown = base in in_use
        colour = colours[base] if shown else (0.6, 0.6, 0.6)
        ax.plot(*path.T, color=colour, lw=1.6 if shown else 0.6, alpha=1.0 if shown else 0.5)
        ax.scatter(*path[0], marker="x", s=18, color=colour, lw=1)
        ax.scatter(*path[-1], s=40 if shown else 10, facecolor=colour, edgecolor="black", lw=0.8)
    for base in labelled:
        ax.annotate(
            f"#{base}",
            projection.paths[-1, base],
            xytext=(4, 4),
            fontsize=10,
            textcoords="offset points",
        )
    ex = projection.explained * 100
    ax.set(
        xlabel=f"PC 1 ({ex[0]:.0f} % of the variance)",
        ylabel=f"PC 2 ({ex[1]:.0f} % of the variance)",
    )
    ax.set_title("pixels (dots, by base) and bases from t = 0 (×) to T (●)", fontsize=11)
    return fig


def figure_array(fig: Figure) -> np.ndarray:
    """A matplotlib figure rendered to an ``(H, W, 3)`` uint8 array (Agg, its own dpi)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
