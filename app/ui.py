"""``build_demo``: the app as a Gradio Blocks, its page (:mod:`app.layout`) wired to its handlers
(:mod:`app.events`, :mod:`app.handlers`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from emanet.predict import Segmenter

from .events import wire
from .examples import example_images
from .handlers import Explorer
from .layout import Page


def build_demo(
    segmenter_factory: Callable[[str | None], Segmenter] | None = None,
    toycity_root: str | None = None,
    examples_dir: str | Path | None = None,
    preload: bool = False,
    default_model: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    explorer: Explorer | None = None,
) -> gr.Blocks:
    """The whole app, queued (2 runs of each event at a time, 64 waiting at most).

    Args:
        segmenter_factory, preload, default_model, device, precision: make the app's
            :class:`app.handlers.Explorer` (see there). Tests pass a random-weights model as
            the factory.
        toycity_root: a generated toy city whose val images become examples too (default:
            the ``EMANET_TOYCITY`` environment variable; none if unset).
        examples_dir: where the example toy-city scenes and photographs are written as PNG
            (once; later starts reuse them).
        explorer: an Explorer made already (instead of the arguments above that make one).
    """
    if explorer is None:
        explorer = Explorer(segmenter_factory, default_model, preload, device, precision)
    elif (segmenter_factory, default_model, device, precision) != (None,) * 4 or preload:
        raise ValueError("give either an explorer or the arguments to make one, not both")
    examples_dir = Path(examples_dir or Path(tempfile.gettempdir()) / "emanet-app-examples")
    examples = example_images(examples_dir, toycity_root or os.environ.get("EMANET_TOYCITY"))
    # delete_cache: Gradio keeps a copy of every output file; copies older than an hour go,
    # hourly, so that a long-running server does not fill its disk.
    with gr.Blocks(
        title="EMANet explorer", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        page = Page(
            explorer.choices,
            explorer.default_model,
            explorer.num_bases(),
            examples,
            explorer.random_bundled,
        )
        wire(page, explorer)
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo
