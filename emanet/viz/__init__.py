"""Pictures of what EM attention does.

:mod:`~emanet.viz.render` draws arrays (uint8 images, per-iteration numbers) fast enough for the
app; :mod:`~emanet.viz.explorer` the explorer's views (the parts map, one pixel's
responsibilities, the bases in feature space); :mod:`~emanet.viz.figures` makes matplotlib
figures for notebooks and reports. All are re-exported here: ``from emanet import viz;
viz.parts_map(...)``.
"""

from emanet.viz import explorer, figures, render
from emanet.viz.explorer import *  # noqa: F403 (the names of explorer.__all__)
from emanet.viz.figures import *  # noqa: F403 (the names of figures.__all__)
from emanet.viz.render import *  # noqa: F403 (the names of render.__all__)

__all__ = [*render.__all__, *explorer.__all__, *figures.__all__]
