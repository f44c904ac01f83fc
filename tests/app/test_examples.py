"""The app's examples: toy-city scenes of an unseen seed (always), the photographs, the page."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from emanet import build_model  # noqa: E402
from emanet.app import examples  # noqa: E402
from emanet.app.ui import build_demo  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402


def test_toycity_scenes_are_written_once_and_are_the_same_everywhere(tmp_path):
    first = examples.toycity_examples(tmp_path / "a")
    assert len(first) == 3
    images = []
    for path, caption in first:
        assert path.endswith(".png") and f"seed {examples.TOYCITY_SEED}" in caption
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert im.size[::-1] == examples.TOYCITY_SIZE
            images.append(np.asarray(im))
    # three different, non-blank street scenes
    assert all(image.std() > 10 for image in images)
    assert not np.array_equal(images[0], images[1])
    # cached: a second start reuses the files; another folder gets the same bytes
    stamps = [os.stat(path).st_mtime_ns for path, _ in first]
    assert examples.toycity_examples(tmp_path / "a") == first
    assert [os.stat(path).st_mtime_ns for path, _ in first] == stamps
    again = examples.toycity_examples(tmp_path / "b")
    for (one, _), (two, _) in zip(first, again, strict=True):
        assert open(one, "rb").read() == open(two, "rb").read()
    assert not list((tmp_path / "a").glob("*.tmp*"))


@pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
def test_page_offers_toycity_scenes_before_photos_without_a_toycity(tmp_path, monkeypatch):
    monkeypatch.delenv("EMANET_TOYCITY", raising=False)
    torch.manual_seed(0)
    segmenter = Segmenter(build_model("emanet_r18-d8_toycity"), device="cpu")
    demo = build_demo(lambda name: segmenter, examples_dir=tmp_path)
    (dataset,) = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    labels = dataset.sample_labels
    toy = [i for i, label in enumerate(labels) if label.startswith("synthetic toy city")]
    photos = [i for i, label in enumerate(labels) if label.startswith("photo:")]
    assert len(toy) == 3 and toy == list(range(3))
    if photos:  # scikit-image is part of the app extra, but the app runs without it
        assert min(photos) > max(toy)
    names = [sample[0]["orig_name"] for sample in dataset.samples]
    assert names[:3] == [os.path.basename(path) for path, _ in examples.toycity_examples(tmp_path)]
