"""What "readable at JupyterLab's width" means, measured on a figure as it is displayed.

JupyterLab shows a PNG at its own pixel size, scaled down to the output area's width (about
960 pixels at the default window size). A text of ``s`` points in a figure drawn at ``dpi``
is ``s * dpi / 72`` pixels in the PNG, times ``shown / png_width`` on the screen.

:data:`KERNEL_HOOK` is the source of a cell the notebook tests run first in the kernel: every
PNG a figure becomes (shown by pyplot's inline backend or returned as a cell's value) is
measured by :func:`figure_report` and appended as one JSON line to a log file.
"""

from __future__ import annotations

import io
import math

from matplotlib.figure import Figure
from matplotlib.text import Text

OUTPUT_WIDTH_PX = 960
MIN_TEXT_PX = 9.0
MAX_LINE_CHARS = 99


def png_width(png: bytes) -> int:
    """The width in pixels of a PNG image."""
    return int.from_bytes(png[16:20], "big")  # the IHDR chunk's width


def _non_integer_iteration_ticks(fig: Figure) -> list[str]:
    """Tick labels like 0.25 on linear axes that count iterations."""
    bad = []
    for ax in fig.axes:
        if "iteration" not in ax.get_xlabel().lower() or ax.get_xscale() != "linear":
            continue
        low, high = sorted(ax.get_xlim())
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        bad += [f"{ax.get_xlabel()}: {t:g}" for t in ticks if not math.isclose(t, round(t))]
    return bad


def figure_report(fig: Figure, png: bytes, dpi: float) -> dict:
    """Sizes of ``fig`` as JupyterLab shows ``png``, the PNG it was drawn to at ``dpi``."""
    width = png_width(png)
    shown = min(1.0, OUTPUT_WIDTH_PX / width)
    texts = [
        t
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip() and t.get_figure() is not None
    ]
    sizes = [(t.get_fontsize() * dpi / 72 * shown, t.get_text()) for t in texts]
    smallest = min(sizes, default=(math.inf, ""))
    return {
        "title": fig._suptitle.get_text() if fig._suptitle else "",
        "figure_width_px": round(fig.get_figwidth() * dpi),
        "png_width_px": width,
        "smallest_text_px": round(smallest[0], 2),
        "smallest_text": smallest[1][:40],
        "non_integer_iteration_ticks": _non_integer_iteration_ticks(fig),
    }


def render_report(fig: Figure) -> dict:
    """:func:`figure_report` of ``fig`` drawn as the inline backend draws it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return figure_report(fig, buffer.getvalue(), fig.dpi)


def problems(report: dict) -> list[str]:
    """What is wrong with one figure, in words (nothing when it is readable)."""
    found = []
    if report["figure_width_px"] > OUTPUT_WIDTH_PX:
        found.append(f"drawn {report['figure_width_px']} px wide")
    if report["smallest_text_px"] < MIN_TEXT_PX:
        found.append(f"text {report['smallest_text']!r} shown {report['smallest_text_px']} px")
    found += [f"tick {t}" for t in report["non_integer_iteration_ticks"]]
    return [f"{report['title']!r}: {p}" for p in found]


KERNEL_HOOK = """\
import io as _io, json as _json, sys as _sys
_sys.path.insert(0, {root!r})
from matplotlib.backend_bases import FigureCanvasBase as _Canvas
from tests.readability import figure_report as _report

_print_figure = _Canvas.print_figure


def _measured(self, filename, *args, **kwargs):
    result = _print_figure(self, filename, *args, **kwargs)
    if isinstance(filename, _io.BytesIO) and filename.getvalue().startswith(b"\\x89PNG"):
        dpi = kwargs.get("dpi") or self.figure.dpi
        with open({log!r}, "a") as _log:
            _log.write(_json.dumps(_report(self.figure, filename.getvalue(), dpi)) + "\\n")
    return result


_Canvas.print_figure = _measured
_sys.path.remove({root!r})
"""
