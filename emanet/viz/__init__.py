"""Pictures of what EM attention does.

:mod:`~emanet.viz.render` draws arrays (uint8 images, per-iteration numbers) fast enough for the
app; :mod:`~emanet.viz.figures` makes matplotlib figures for notebooks and reports. Both are
re-exported here: ``from emanet import viz; viz.attention_grid(...)``.
"""

from .figures import base_class_figure, convergence_figure, plot_training_curves
from .render import (
    attention_grid,
    attention_grid_slot,
    base_across_iterations,
    base_class_image,
    base_class_matrix,
    base_order,
    base_shares,
    convergence,
    legend_image,
    responsibility_maps,
)

__all__ = [
    "attention_grid",
    "attention_grid_slot",
    "base_across_iterations",
    "base_class_figure",
    "base_class_image",
    "base_class_matrix",
    "base_order",
    "base_shares",
    "convergence",
    "convergence_figure",
    "legend_image",
    "plot_training_curves",
    "responsibility_maps",
]
