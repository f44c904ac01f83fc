"""What happens on the page: every event of the :class:`~app.layout.Page` tied to its
:class:`~app.handlers.Explorer` method. Nothing is laid out here and nothing computed."""

from __future__ import annotations

from .handlers import Explorer, checkpoint_uploaded, toggle_play
from .layout import Page

PRIVATE = {"api_visibility": "private"}
# .input fires on the person's moves only (not on a handler's updates), and always_last drops
# the intermediate positions of a drag: only what is shown is drawn.
REDRAW = {"trigger_mode": "always_last", **PRIVATE}


def wire(page: Page, explorer: Explorer) -> None:
    """Connect the page's events (inside its open ``gr.Blocks``).

    The API's endpoints are ``/segment`` (the Segment button), ``/pixel`` (the "show this
    pixel" button) and ``/export`` (the trace download); every other event is private to the
    page. A run first answers with the main views, then draws the others.
    """
    _runs(page, explorer)
    _controls(page, explorer)
    _pixels(page, explorer)
    page.compare.click(
        explorer.compare,
        [
            *(page.session, page.model_b, page.iterations_b, page.lambda_b, page.map_opacity),
            page.checkpoint_path,
        ],
        [page.parts_a, page.parts_b, page.differences],
        **PRIVATE,
    )
    page.export_trace.click(
        explorer.export_trace, [page.session], [page.download], api_name="export"
    )
    page.export_figures.click(
        explorer.export_figures, [page.session, page.map_opacity], [page.download], **PRIVATE
    )


def _runs(page: Page, explorer: Explorer) -> None:
    # preprocess=False: the image arrives as Gradio's payload (its upload path, checked to be
    # in the upload folder, and its original name) and our loader decodes it; every control
    # is validated in app.session.run_model, which also refuses models the dropdown does not
    # offer.
    run = {
        "inputs": [
            *(page.image, page.model, page.iterations, page.max_size, page.opacity),
            *(page.lambda_scale, page.map_opacity, page.checkpoint_path),
        ],
        "outputs": [
            *(page.overlay, page.parts, page.curves, page.areas, page.legend, page.summary),
            page.session,
        ],
        "preprocess": False,
    }
    details = {
        "fn": explorer.details,
        "inputs": [page.session, page.map_opacity],
        "outputs": [
            *(page.iteration, page.base, page.grid, page.base_strip, page.projection),
            *(page.heatmap, page.pixel_chart),
        ],
        **PRIVATE,
    }
    page.button.click(explorer.segment, api_name="segment", **run).then(**details)
    # .change, and only it, fires once for every new image: an upload, a paste, a webcam
    # capture, an example click (which fires no .upload) and a clear. A new model (an official
    # one is downloaded, with its progress in the page) runs on the image shown.
    for source in (page.image, page.model):
        source.change(explorer.segment_new_image, **PRIVATE, **run).then(**details)
    page.checkpoint.upload(
        checkpoint_uploaded, [page.checkpoint], [page.checkpoint_path, page.model], **PRIVATE
    )
    page.checkpoint.clear(lambda: None, outputs=[page.checkpoint_path], **PRIVATE)


def _controls(page: Page, explorer: Explorer) -> None:
    maps = [page.parts, page.grid]
    page.iteration.input(
        explorer.redraw_iteration, [page.session, page.iteration, page.map_opacity], maps, **REDRAW
    )
    page.play.click(toggle_play, [page.playing], [page.timer, page.play, page.playing], **PRIVATE)
    page.timer.tick(
        explorer.play,
        [page.session, page.iteration, page.map_opacity],
        [page.iteration, *maps],
        **PRIVATE,
    )
    page.map_opacity.input(
        explorer.redraw_maps,
        [page.session, page.iteration, page.base, page.map_opacity],
        [*maps, page.base_strip],
        **REDRAW,
    )
    page.base.input(
        explorer.redraw_base, [page.session, page.base, page.map_opacity], page.base_strip, **REDRAW
    )
    page.opacity.input(
        explorer.redraw_overlay, [page.session, page.opacity], page.overlay, **REDRAW
    )
    page.grid.select(
        explorer.pick_base,
        [page.session, page.map_opacity],
        [page.base, page.base_strip],
        **PRIVATE,
    )


def _pixels(page: Page, explorer: Explorer) -> None:
    views = [page.session, page.iteration, page.base, page.opacity, page.map_opacity]
    marked = [page.overlay, page.parts, page.grid, page.base_strip]
    for picture in (page.overlay, page.parts):
        picture.select(
            explorer.click,
            views,
            [page.pixel_x, page.pixel_y, page.pixel_numbers, page.pixel_chart, *marked],
            **PRIVATE,
        )
    page.show_pixel.click(
        explorer.pixel,
        [
            *(page.pixel_x, page.pixel_y, page.session, page.image, page.model),
            *(page.iterations, page.max_size, page.lambda_scale, page.checkpoint_path),
        ],
        [page.pixel_numbers, page.pixel_chart, page.session],
        api_name="pixel",
        preprocess=False,
    ).then(explorer.mark, views, marked, **PRIVATE)
