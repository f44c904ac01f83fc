"""The evaluation loop: one decode per image, the scores of a plain loop, the result files,
and the same scores when the images are shared among ranks."""

import collections
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emanet import build_model
from emanet.data import CityscapesDataset, generate_toycity
from emanet.evaluation.evaluate import evaluate_segmenter
from emanet.evaluation.metrics import IoUMetric
from emanet.predict import Segmenter

# Cityscapes labelId of each trainId (cityscapesScripts helpers/labels.py).
LABEL_ID_OF_TRAIN_ID = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


@pytest.fixture(scope="module")
def small_city(tmp_path_factory):
    # 48x96 scenes: the small preset's test scale (512, 256) resizes them, so the test-time
    # pipeline matters.
    root = tmp_path_factory.mktemp("city")
    return generate_toycity(root, train=4, val=3, size=(48, 96), seed=5)


@pytest.fixture(scope="module")
def random_segmenter():
    torch.manual_seed(0)
    return Segmenter(build_model("emanet_r18-d8_toycity"), device="cpu")


def test_evaluate_segmenter_decodes_every_image_once_and_scores_like_a_plain_loop(
    small_city, random_segmenter
):
    decoded = collections.Counter()

    class CountingDataset(CityscapesDataset):
        def load_pair(self, index):
            decoded[index] += 1
            return super().load_pair(index)

    inputs = []

    class RecordingSegmenter:
        """The segmenter, noting what it is given (a path would be decoded a second time)."""

        classes = random_segmenter.classes

        def __call__(self, image, **options):
            inputs.append(image)
            return random_segmenter(image, **options)

    dataset = CountingDataset(small_city, "val")
    report = evaluate_segmenter(RecordingSegmenter(), dataset, progress=False)
    assert decoded == {0: 1, 1: 1, 2: 1}
    assert all(isinstance(image, np.ndarray) for image in inputs), [type(i) for i in inputs]

    metric = IoUMetric()
    for index in range(len(dataset)):
        metric.update(random_segmenter(dataset.images[index]).labels, dataset.load_label(index))
    expected = metric.compute()
    assert report["metrics"]["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12, nan_ok=True)
    assert report["metrics"]["images"] == 3 and "iIoU" in report["metrics"]


def test_result_files_hold_the_predicted_labels(small_city, random_segmenter, tmp_path):
    dataset = CityscapesDataset(small_city, "val")
    report = evaluate_segmenter(
        random_segmenter,
        dataset,
        max_images=2,
        save_pred=tmp_path / "pred",
        cityscapes_format=tmp_path / "official",
        progress=False,
    )
    assert report["metrics"]["images"] == 2
    assert "iIoU" in report["table"] and "mIoU" in report["table"]
    names = [Path(path).name for path in dataset.images[:2]]
    assert sorted(os.listdir(tmp_path / "pred")) == sorted(names)
    assert sorted(os.listdir(tmp_path / "official")) == sorted(names)
    label_id = np.array(LABEL_ID_OF_TRAIN_ID, dtype=np.uint8)
    for index, name in enumerate(names):
        labels = random_segmenter(dataset.images[index]).labels
        with Image.open(tmp_path / "pred" / name) as train_ids:
            assert np.array_equal(np.asarray(train_ids), labels)
        with Image.open(tmp_path / "official" / name) as label_ids:
            assert np.array_equal(np.asarray(label_ids), label_id[labels])


def _sharded_eval(rank, world, city, out_dir):
    torch.manual_seed(0)
    segmenter = Segmenter(build_model("emanet_r18-d8_toycity"), device="cpu")
    dataset = CityscapesDataset(city, "val")
    report = evaluate_segmenter(segmenter, dataset, progress=False, rank=rank, world_size=world)
    torch.save(report["metrics"], os.path.join(out_dir, f"metrics{rank}.pt"))


@pytest.mark.slow
def test_evaluate_segmenter_shared_across_ranks_equals_one_process(
    small_city, random_segmenter, tmp_path, run_gloo
):
    run_gloo(_sharded_eval, str(small_city), str(tmp_path))
    alone = evaluate_segmenter(random_segmenter, CityscapesDataset(small_city, "val"))["metrics"]
    for rank in range(2):
        shared = torch.load(tmp_path / f"metrics{rank}.pt", weights_only=True)
        assert shared.keys() == alone.keys()
        for key in ("aAcc", "mIoU", "mAcc", "iIoU"):
            assert shared[key] == pytest.approx(alone[key], abs=1e-12, nan_ok=True)
