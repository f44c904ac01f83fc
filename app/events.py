"""What happens on the page: every event of the :class:`~app.layout.Page` tied to its
:class:`~app.handlers.Explorer` method. Nothing is laid out here and nothing computed."""

from __future__ import annotations

from .handlers import Explorer, checkpoint_uploaded
from .layout import Page


def wire(page: Page, explorer: Explorer) -> None:
    """Connect the page's events (inside its open ``gr.Blocks``).

    ``/segment`` (the Segment button) is the API's one endpoint; every other event is private
    to the page. A run first answers with the main views, then draws the secondary ones.
    """
    # preprocess=False: the image arrives as Gradio's payload (its upload path, checked to be
    # in the upload folder, and its original name) and our loader decodes it; every control
    # is validated in app.session.run_model, which also refuses models the dropdown does not
    # offer.
    run = {
        "inputs": [
            *(page.image, page.model, page.iterations, page.max_size, page.opacity),
            *(page.lambda_scale, page.checkpoint_path),
        ],
        "outputs": [
            *(page.overlay, page.grid, page.curves, page.areas, page.legend, page.summary),
            page.session,
        ],
        "preprocess": False,
    }
    details = {
        "fn": explorer.details,
        "inputs": [page.session],
        "outputs": [page.iteration, page.base, page.base_strip, page.heatmap],
        "api_visibility": "private",
    }
    page.button.click(explorer.segment, api_name="segment", **run).then(**details)
    # .change, and only it, fires once for every new image: an upload, a paste, a webcam
    # capture, an example click (which fires no .upload) and a clear.
    page.image.change(explorer.segment_new_image, api_visibility="private", **run).then(**details)
    private = {"api_visibility": "private"}
    page.checkpoint.upload(
        checkpoint_uploaded, [page.checkpoint], [page.checkpoint_path, page.model], **private
    )
    page.checkpoint.clear(lambda: None, outputs=[page.checkpoint_path], **private)
    # .input fires on the person's moves only (not on details()' updates), and always_last
    # drops the intermediate positions of a drag: only what is shown is drawn.
    redraw = {"trigger_mode": "always_last", **private}
    page.iteration.input(explorer.redraw_grid, [page.session, page.iteration], page.grid, **redraw)
    page.base.input(explorer.redraw_base, [page.session, page.base], page.base_strip, **redraw)
    page.opacity.input(
        explorer.redraw_overlay, [page.session, page.opacity], page.overlay, **redraw
    )
    page.grid.select(explorer.pick, [page.session], [page.base, page.base_strip], **private)
