"""Evaluation figures: what they draw is the row-normalised matrix and the IoU values given."""

import math

import numpy as np
import pytest
from PIL import Image

from emanet.data.cityscapes import CLASSES, PALETTE
from emanet.evaluation.plots import (
    confusion_figure,
    per_class_iou_figure,
    row_normalize,
    write_eval_plots,
)


def sample_confusion(size=19, seed=0):
    counts = np.random.default_rng(seed).integers(0, 1000, (size, size))
    counts[3] = 0  # a class absent from the ground truth
    return counts


def test_row_normalize():
    counts = sample_confusion()
    shares = row_normalize(counts)
    present = [i for i in range(19) if i != 3]
    np.testing.assert_allclose(shares[present].sum(axis=1), 1.0)
    assert np.isnan(shares[3]).all()
    np.testing.assert_allclose(shares[0] * counts[0].sum(), counts[0])
    with pytest.raises(ValueError, match="square"):
        row_normalize(np.zeros((2, 3)))


def test_confusion_figure_shows_shares_with_class_names_on_both_axes():
    counts = sample_confusion()
    figure = confusion_figure(counts, CLASSES)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == list(CLASSES)
    assert [t.get_text() for t in axes.get_yticklabels()] == list(CLASSES)
    drawn = axes.images[0].get_array()
    np.testing.assert_allclose(drawn.filled(np.nan), row_normalize(counts))
    assert "ground" in axes.get_ylabel() and "predicted" in axes.get_xlabel()
    with pytest.raises(ValueError, match="3 class names"):
        confusion_figure(counts, CLASSES[:3])


def test_per_class_iou_figure_bars_are_the_values():
    iou = [float(v) for v in np.linspace(5, 95, 19)]
    iou[4] = math.nan
    figure = per_class_iou_figure(iou, CLASSES, PALETTE)
    axes = figure.axes[0]
    widths = [bar.get_width() for bar in axes.patches]
    np.testing.assert_allclose(widths, np.nan_to_num(iou))
    assert "n/a" in [t.get_text() for t in axes.texts]
    np.testing.assert_allclose(axes.patches[0].get_facecolor()[:3], np.array(PALETTE[0]) / 255)
    defined = [v for v in iou if not math.isnan(v)]
    assert axes.get_legend().get_texts()[0].get_text() == f"mIoU {np.mean(defined):.2f}"


def test_write_eval_plots(tmp_path):
    paths = write_eval_plots(tmp_path / "plots", sample_confusion(), [50.0] * 19, CLASSES)
    assert [p.name for p in paths] == ["confusion.png", "per_class_iou.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [p.name for p in paths]
