"""What the app does when asked: :class:`Explorer` answers every event of the page.

No layout here (:mod:`app.ui`) and no model logic: a run is :func:`app.session.run_model`, the
pictures and texts are :mod:`app.views`. :class:`Explorer` holds what all sessions share (the
loaded models, the PNG writer) and answers ``/segment``, the one event of the API.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from emanet.io.checkpoint import MODEL_ZOO
from emanet.models.presets import SMALL_PRESET, get_preset
from emanet.predict import Segmenter

from . import views
from .png import PngWriter
from .session import (
    BUNDLED,
    UPLOADED,
    ModelCache,
    Session,
    bundled_missing,
    model_choices,
    run_model,
)


class Explorer:
    """The app without its layout: the models (each loaded once, shared by all sessions), the
    PNG writer, and a method for each event. :func:`app.ui.build_demo` lays it out; tests and
    benchmarks call :meth:`segment` in-process.

    Args:
        segmenter_factory: ``factory(name) -> Segmenter``; ``name`` is ``None`` for the bundled
            model, a zoo name, ``default_model`` or an uploaded ``.pth`` path. Default:
            :func:`app.session.load_segmenter` (random weights if the bundled file is missing).
        default_model: the dropdown's initial choice (a zoo name or a path; default: bundled).
        preload: load the default model now, so the first request is fast and a broken model
            fails at start rather than in a request.
        device, precision: where and in which precision the default factory runs every model
            (see :class:`emanet.predict.Segmenter`; default: CUDA if available, fp32).
    """

    def __init__(
        self,
        segmenter_factory: Callable[[str | None], Segmenter] | None = None,
        default_model: str | None = None,
        preload: bool = False,
        device: str | None = None,
        precision: str | None = None,
    ) -> None:
        options = {k: v for k, v in (("device", device), ("precision", precision)) if v is not None}
        self.cache = ModelCache(segmenter_factory, **options)
        self.png = PngWriter()
        self.default_model = default_model or None
        self.choices = model_choices(default_model)
        self.random_bundled = segmenter_factory is None and bundled_missing()
        if preload:
            self.cache.get(self.default_model)

    def num_bases(self) -> int:
        """``K`` of the default model, the base slider's range before the first run (each run
        sets it to the ``K`` of the model that ran): the loaded model's, else its preset's (the
        bundled preset's for a file that is not loaded yet)."""
        loaded = self.cache.loaded(self.default_model)
        if loaded is not None:
            return loaded.model.em_unit.num_bases
        preset = self.default_model if self.default_model in MODEL_ZOO else SMALL_PRESET
        return get_preset(preset).num_bases

    def segment(
        self, image, model, iterations, max_size, opacity, lambda_scale=1.0, uploaded=None
    ) -> tuple:
        """The ``/segment`` endpoint: image and controls in; overlay PNG path, attention grid
        PNG path, convergence table, class-area table, legend HTML, summary and the new
        :class:`~app.session.Session` out. ``lambda_scale`` multiplies the model's own lambda
        (a what-if)."""
        session = run_model(
            self.cache, image, model, uploaded, iterations, max_size, self.choices, lambda_scale
        )
        overlay = self.png(views.overlay(session, opacity), "overlay")
        grid = self.png(views.grid(session, session.prediction.trace.num_iterations), "attention")
        areas = session.prediction.class_areas()
        random_weights = self.random_bundled and session.model == BUNDLED
        return (
            overlay,
            grid,
            views.convergence_table(session),
            views.class_table(areas),
            views.legend_html(session.prediction, areas),
            views.summary(session, random_weights),
            session,
        )

    def segment_new_image(self, image, *controls) -> tuple:
        """A new image (uploaded, pasted, captured or an example): :meth:`segment` it; a
        cleared image clears the views, so that they always show the image on the left."""
        if image is None:
            return None, None, None, None, "", "", None
        return self.segment(image, *controls)

    def details(self, session: Session | None) -> tuple:
        """After a run: fit the iteration and base sliders to it and draw the secondary views
        (the first base across iterations, bases against classes); nothing after a clear."""
        if session is None:
            return gr.skip(), gr.skip(), None, None
        steps = session.prediction.trace.num_iterations
        first = int(session.order[0])
        return (
            gr.update(maximum=steps, value=steps),
            gr.update(maximum=len(session.order) - 1, value=first),
            self.png(views.single_base(session, first), "base"),
            self.png(views.base_class_heatmap(session), "bases-classes"),
        )

    def redraw_grid(self, session: Session | None, iteration):
        """The iteration slider moved: the attention grid at that iteration."""
        return gr.skip() if session is None else self.png(views.grid(session, iteration), "grid")

    def redraw_base(self, session: Session | None, base):
        """The base slider moved: that base across the iterations."""
        if session is None:
            return gr.skip()
        return self.png(views.single_base(session, base), "base")

    def redraw_overlay(self, session: Session | None, opacity):
        """The opacity slider moved: the segmentation at that opacity."""
        if session is None:
            return gr.skip()
        return self.png(views.overlay(session, opacity), "overlay")

    def pick(self, session: Session | None, event: gr.SelectData) -> tuple:
        """A click on the attention grid: select the base of the tile clicked, if any."""
        chosen = None if session is None else views.base_at(session, *event.index[:2])
        if chosen is None:
            return gr.skip(), gr.skip()
        return gr.update(value=chosen), self.png(views.single_base(session, chosen), "base")


def checkpoint_uploaded(path: str) -> tuple:
    """A ``.pth`` file arrived: remember its path and choose it in the model dropdown."""
    return path, gr.update(value=UPLOADED)
