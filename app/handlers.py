"""What the app does when asked: :class:`Explorer` answers every event of the page.

No layout here (:mod:`app.layout`) and no model logic: a run is :func:`app.session.run_model`,
the pictures and texts are :mod:`app.views`, :mod:`app.pixels` and :mod:`app.export`.
:class:`Explorer` holds what all sessions share (the loaded models, the PNG writer) and answers
the API's events: ``/segment``, ``/pixel`` and ``/export``.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr
from PIL import Image

from emanet.io.checkpoint import MODEL_ZOO
from emanet.models.presets import SMALL_PRESET, get_preset
from emanet.predict import Segmenter

from . import export, pixels, views
from .png import PngWriter
from .session import (
    BUNDLED,
    DEFAULTS,
    UPLOADED,
    ModelCache,
    Session,
    bundled_missing,
    file_digest,
    image_file,
    model_choices,
    number,
    run_model,
    run_request,
)

ITERATIONS = DEFAULTS["iterations"]
# Gradio shows the progress of the tqdm bars a handler opens (a checkpoint's download).
DOWNLOAD_PROGRESS = gr.Progress(track_tqdm=True)


class Explorer:
    """The app without its layout: the models (each loaded once, shared by all sessions), the
    PNG writer, and a method for each event. :func:`app.ui.build_demo` lays it out; tests and
    benchmarks call its methods in-process.

    Args:
        segmenter_factory: ``factory(name) -> Segmenter``; ``name`` is ``None`` for the bundled
            model, a zoo name, ``default_model`` or an uploaded ``.pth`` path. Default:
            :func:`app.session.load_segmenter` (random weights if the bundled file is missing).
        default_model: the dropdown's initial choice (a zoo name or a path; default: bundled).
        preload: load the default model now, so the first request is fast and a broken model
            fails at start rather than in a request.
        device, precision: where and in which precision the default factory runs every model
            (see :class:`emanet.predict.Segmenter`; default: CUDA if available, fp32).
        backend, calibration: what runs the network and, for int8, the images to calibrate
            on (see :class:`emanet.predict.Segmenter`; default: torch).
    """

    def __init__(
        self,
        segmenter_factory: Callable[[str | None], Segmenter] | None = None,
        default_model: str | None = None,
        preload: bool = False,
        device: str | None = None,
        precision: str | None = None,
        backend: str | None = None,
        calibration: str | None = None,
    ) -> None:
        options = {"device": device, "precision": precision, "backend": backend}
        options = {k: v for k, v in {**options, "calibration": calibration}.items() if v}
        self.cache = ModelCache(segmenter_factory, **options)
        self.png = PngWriter()
        self.default_model = default_model or None
        self.choices = model_choices(default_model)
        self.random_bundled = segmenter_factory is None and bundled_missing()
        if preload:
            segmenter = self.cache.get(self.default_model)
            if backend == "onnxruntime":  # its export (once per T and lambda) paid at start
                segmenter(Image.new("RGB", (64, 32)), trace=True, num_iterations=ITERATIONS)

    def num_bases(self) -> int:
        """``K`` of the default model, the base slider's range before the first run (each run
        sets it to the ``K`` of the model that ran): the loaded model's, else its preset's (the
        bundled preset's for a file that is not loaded yet)."""
        loaded = self.cache.loaded(self.default_model)
        if loaded is not None:
            return loaded.model.em_unit.num_bases
        preset = self.default_model if self.default_model in MODEL_ZOO else SMALL_PRESET
        return get_preset(preset).num_bases

    # -- a run ---------------------------------------------------------------------------

    def segment(
        self,
        image,
        model,
        iterations,
        max_size,
        opacity,
        lambda_scale=1.0,
        map_opacity=0.7,
        uploaded=None,
        progress=DOWNLOAD_PROGRESS,
    ) -> tuple:
        """The ``/segment`` endpoint: image and controls in; the overlay PNG, the parts map PNG
        at the last iteration, the convergence table, the class-area table, the legend HTML,
        the summary and the new :class:`~app.session.Session` out. ``lambda_scale``
        multiplies the model's own lambda (a what-if)."""
        session = run_model(
            self.cache, image, model, uploaded, iterations, max_size, self.choices, lambda_scale
        )
        steps = session.prediction.trace.num_iterations
        areas = session.prediction.class_areas()
        random_weights = self.random_bundled and session.model == BUNDLED
        return (
            self.png(views.overlay(session, opacity), "overlay"),
            self.png(views.parts(session, steps, map_opacity), "parts"),
            views.convergence_table(session),
            views.class_table(areas),
            views.legend_html(session.prediction, areas),
            views.summary(session, random_weights),
            session,
        )

    def segment_new_image(
        self,
        image,
        model,
        iterations,
        max_size,
        opacity,
        lambda_scale=1.0,
        map_opacity=0.7,
        uploaded=None,
        progress=DOWNLOAD_PROGRESS,
    ) -> tuple:
        """A new image (uploaded, pasted, captured or an example) or a new model: :meth:`segment`
        it; a cleared image clears the views, so that they always show the image on the left.
        (Gradio finds ``progress`` only among the named parameters: no ``*controls`` here.)"""
        if image is None:
            return None, None, None, None, "", "", None
        controls = (iterations, max_size, opacity, lambda_scale, map_opacity, uploaded)
        return self.segment(image, model, *controls)

    def details(self, session: Session | None, map_opacity) -> tuple:
        """After a run: fit the iteration and base sliders to it and draw the other views (the
        grid, the first base across iterations, the bases in feature space, the bases
        against the classes, an empty pixel chart); nothing after a clear."""
        if session is None:
            return (gr.skip(),) * 2 + (None,) * 4 + ("",)
        steps = session.prediction.trace.num_iterations
        first = int(session.order[0])
        return (
            # A slider must span more than its minimum: at T = 1, t = 2 shows t = 1.
            gr.update(maximum=max(steps, 2), value=steps),
            gr.update(maximum=len(session.order) - 1, value=first),
            self.png(views.grid(session, steps, map_opacity), "grid"),
            self.png(views.single_base(session, first, map_opacity), "base"),
            self.png(views.projection(session), "feature-space"),
            self.png(views.base_class_heatmap(session), "bases-classes"),
            pixels.chart(session),
        )

    # -- the explorer's controls (no model run) ------------------------------------------

    def redraw_iteration(self, session: Session | None, iteration, map_opacity) -> tuple:
        """The iteration scrubber moved: the parts map and the grid at that iteration."""
        if session is None:
            return gr.skip(), gr.skip()
        return (
            self.png(views.parts(session, iteration, map_opacity), "parts"),
            self.png(views.grid(session, iteration, map_opacity), "grid"),
        )

    def play(self, session: Session | None, iteration, map_opacity) -> tuple:
        """A tick of the play control: the next iteration (after T, t = 1 again)."""
        if session is None:
            return gr.skip(), gr.skip(), gr.skip()
        steps = session.prediction.trace.num_iterations
        t = int(iteration) % steps + 1
        return (t, *self.redraw_iteration(session, t, map_opacity))

    def redraw_maps(self, session: Session | None, iteration, base, map_opacity) -> tuple:
        """The map opacity moved: the parts map, the grid and the base strip."""
        if session is None:
            return gr.skip(), gr.skip(), gr.skip()
        return (
            *self.redraw_iteration(session, iteration, map_opacity),
            self.png(views.single_base(session, base, map_opacity), "base"),
        )

    def redraw_base(self, session: Session | None, base, map_opacity):
        """The base slider moved: that base across the iterations."""
        if session is None:
            return gr.skip()
        return self.png(views.single_base(session, base, map_opacity), "base")

    def redraw_overlay(self, session: Session | None, opacity):
        """The opacity slider moved: the segmentation at that opacity."""
        if session is None:
            return gr.skip()
        return self.png(views.overlay(session, opacity), "overlay")

    def pick_base(self, session: Session | None, map_opacity, event: gr.SelectData) -> tuple:
        """A click on the grid: select the base of the tile clicked, if any."""
        chosen = None if session is None else views.base_at(session, *event.index[:2])
        if chosen is None:
            return gr.skip(), gr.skip()
        return chosen, self.png(views.single_base(session, chosen, map_opacity), "base")

    # -- one pixel -----------------------------------------------------------------------

    def _pixel_views(self, session: Session, iteration, base, opacity, map_opacity) -> tuple:
        """Every view that marks the chosen pixel: overlay, parts map, grid, base strip."""
        return (
            self.png(views.overlay(session, opacity), "overlay"),
            *self.redraw_maps(session, iteration, base, map_opacity),
        )

    def _choose(self, session: Session, x: int, y: int) -> tuple:
        """Choose pixel ``(x, y)`` of the prediction image: its numbers and its chart."""
        session.pixel = (x, y)
        values = pixels.responsibilities(session)
        answered = pixels.answer(session, values)
        return answered["x"], answered["y"], answered, pixels.chart(session, values)

    def click(self, session, iteration, base, opacity, map_opacity, event: gr.SelectData):
        """A click on the segmentation or the parts map: that pixel, in every view."""
        if session is None:
            return (gr.skip(),) * 8
        x, y = event.index[:2]
        width, height = session.prediction.image.size
        if event.target is not None and getattr(event.target, "elem_id", None) == "parts":
            shown_h, shown_w = views.display_size(session)
            x, y = x * width / shown_w, y * height / shown_h
        x, y = int(min(max(x, 0), width - 1)), int(min(max(y, 0), height - 1))
        chosen = self._choose(session, x, y)
        return (*chosen, *self._pixel_views(session, iteration, base, opacity, map_opacity))

    def pixel(
        self,
        x,
        y,
        session: Session | None,
        image=None,
        model=None,
        iterations=3,
        max_size=1024,
        lambda_scale=1.0,
        uploaded=None,
        progress=DOWNLOAD_PROGRESS,
    ) -> tuple:
        """The ``/pixel`` endpoint: pixel ``(x, y)`` of the uploaded image in; its numbers
        (:func:`app.pixels.answer`), its chart and the session out. It reads the session's
        last run, or runs the model first when there is none, or ``image`` is another image or
        comes with another model or other controls."""
        request = run_request(model, uploaded, iterations, max_size, lambda_scale)
        if image is not None and (
            session is None or (session.digest, session.request) != (_digest(image), request)
        ):
            session = run_model(
                self.cache, image, model, uploaded, iterations, max_size, self.choices, lambda_scale
            )
        if session is None:
            raise gr.Error("Segment an image first (or give the image to /pixel).")
        width, height = session.source_size or session.prediction.image.size
        px, py = number(x, "x", 0, width - 1), number(y, "y", 0, height - 1)
        _, _, answered, chart = self._choose(session, *session.to_prediction(px, py))
        return answered, chart, session

    def mark(self, session: Session | None, iteration, base, opacity, map_opacity) -> tuple:
        """After ``/pixel``: mark the pixel in every view."""
        if session is None:
            return (gr.skip(),) * 4
        return self._pixel_views(session, iteration, base, opacity, map_opacity)

    # -- compare and export --------------------------------------------------------------

    def compare(
        self,
        session: Session | None,
        model,
        iterations,
        lambda_scale,
        map_opacity,
        uploaded=None,
        progress=DOWNLOAD_PROGRESS,
    ) -> tuple:
        """Run B on run A's image (same input size) and put both parts maps and what differs
        side by side."""
        if session is None:
            raise gr.Error("Segment an image first: B runs on the same image.")
        picture = session.prediction.image
        other = run_model(
            self.cache,
            picture,
            model,
            uploaded,
            iterations,
            max(picture.size),
            self.choices,
            lambda_scale,
        )
        other.name = session.name
        steps, other_steps = (s.prediction.trace.num_iterations for s in (session, other))
        return (
            self.png(views.parts(session, steps, map_opacity), "parts-a"),
            self.png(views.parts(other, other_steps, map_opacity), "parts-b"),
            views.comparison(session, other),
        )

    def export_trace(self, session: Session | None) -> str:
        """The ``/export`` endpoint: the run's trace as an ``.npz`` file."""
        if session is None:
            raise gr.Error("Segment an image first: there is nothing to export yet.")
        return str(export.trace_file(session, self.png.folder / "exports"))

    def export_figures(self, session: Session | None, map_opacity) -> str:
        """The run's pictures as a ``.zip`` of PNG files."""
        if session is None:
            raise gr.Error("Segment an image first: there is nothing to export yet.")
        opacity = number(map_opacity, "map opacity", 0.0, 1.0)
        return str(export.figure_set(session, self.png.folder / "exports", opacity))


def _digest(image) -> str:
    """:func:`app.session.file_digest` of an image payload's file."""
    return file_digest(image_file(image)[0])


def toggle_play(playing: bool) -> tuple:
    """The play button: start or stop the timer that steps through the iterations."""
    playing = not playing
    return gr.Timer(active=playing), gr.update(value="⏸ pause" if playing else "▶ play"), playing


def checkpoint_uploaded(path: str) -> tuple:
    """A ``.pth`` file arrived: remember its path and choose it in the model dropdown."""
    return path, gr.update(value=UPLOADED)
