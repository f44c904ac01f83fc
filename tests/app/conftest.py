"""What the app's tests share: a random-weights model that counts its runs, and a server."""

import pytest
import torch

from emanet import build_model
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
