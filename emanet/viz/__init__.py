"""Pictures of what EM attention does.

:mod:`~emanet.viz.render` draws arrays (uint8 images, per-iteration numbers) fast enough for the
app; :mod:`~emanet.viz.figures` makes matplotlib figures for notebooks and reports. Both are
re-exported here: ``from emanet import viz; viz.attention_grid(...)``.
"""

from emanet.viz import figures, render
from emanet.viz.figures import *  # noqa: F403 (the names of figures.__all__)
from emanet.viz.render import *  # noqa: F403 (the names of render.__all__)

__all__ = [*render.__all__, *figures.__all__]
