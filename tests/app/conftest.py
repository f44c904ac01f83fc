"""What the app's tests share: a random-weights model that counts its runs, the app around one
segmenter, a server, and a toy-city scene on disk."""

import numpy as np
import pytest
import torch
from PIL import Image

from emanet import build_model
from emanet.data.toycity import render_scene
from emanet.predict import Segmenter


class CountingSegmenter(Segmenter):
    """A segmenter that counts the images it is asked to segment."""

    runs = 0

    def __call__(self, image, *args, **kwargs):
        self.runs += 1
        return super().__call__(image, *args, **kwargs)


@pytest.fixture(scope="module")
def segmenter():
    """The small preset with random weights (seeded), on the CPU, counting its runs."""
    torch.manual_seed(0)
    return CountingSegmenter(build_model("emanet_r18-d8_toycity"), device="cpu")


@pytest.fixture(scope="module")
def serve(free_port):
    """``serve(demo) -> url``: the app launched on a free loopback port, closed after the
    module's tests."""
    demos = []

    def launch(demo, **options) -> str:
        port = free_port()
        demo.launch(
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            **options,
        )
        demos.append(demo)
        return f"http://127.0.0.1:{port}/"

    yield launch
    for demo in demos:
        demo.close()


@pytest.fixture(scope="module")
def demo_of(tmp_path_factory):
    """``demo_of(segmenter) -> demo``: the app with ``segmenter`` behind every model choice,
    loaded at start."""

    def build(segmenter):
        # Imported here: the test modules set Gradio's environment before Gradio loads.
        from emanet.app.ui import build_demo

        return build_demo(
            segmenter_factory=lambda name: segmenter,
            examples_dir=tmp_path_factory.mktemp("examples"),
            preload=True,
        )

    return build


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    """``scene_file(seed) -> path``: a 256x512 toy-city scene drawn from ``seed``, as a PNG."""

    def write(seed: int):
        image, _, _ = render_scene(256, 512, np.random.default_rng(seed))
        path = tmp_path_factory.mktemp("scene") / "scene.png"
        Image.fromarray(image).save(path)
        return path

    return write
