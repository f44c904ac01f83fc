"""The matplotlib figures: what each axis shows, from the renderers' numbers."""

import json

import numpy as np
import torch
from matplotlib.figure import Figure

from emanet import EMAttention, EMTrace
from emanet.data import CLASSES
from emanet.viz import figures, render


def real_trace(k=8, t=5, h=6, w=10):
    unit = EMAttention(16, num_bases=k).eval()
    trace = EMTrace()
    unit(torch.randn(1, 16, h, w), num_iterations=t, trace=trace)
    return trace


def test_convergence_figure_plots_the_measures_per_iteration():
    trace = real_trace()
    fig = figures.convergence_figure(trace)
    shift_ax, entropy_ax = fig.axes
    stats = render.convergence(trace)
    np.testing.assert_allclose(shift_ax.lines[0].get_ydata(), stats["base_shift"])
    np.testing.assert_allclose(entropy_ax.lines[0].get_ydata(), stats["entropy"])
    assert entropy_ax.lines[0].get_xdata().tolist() == [1, 2, 3, 4, 5]
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_title() for ax in fig.axes)


def test_base_class_figure_rows_follow_the_order():
    trace = real_trace(k=5)
    labels = np.random.default_rng(0).integers(0, 19, (6, 10))
    matrix = render.base_class_matrix(trace, labels)
    order = [4, 0, 1, 2, 3]
    fig = figures.base_class_figure(matrix, CLASSES, order)
    assert isinstance(fig, Figure)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), matrix[order])


def test_training_curves(tmp_path):
    rows = [
        {"iter": i, "loss": 3 - i * 0.1, "loss_decode": 2.0, "loss_aux": 2.5, "lr": 0.01}
        for i in range(1, 5)
    ] + [{"iter": 4, "mIoU": 12.5, "aAcc": 50.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"iter": 5, "lo')
    fig = figures.plot_training_curves(path)
    loss_ax, miou_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["total", "decode head", "aux"]
    assert loss_ax.lines[0].get_xdata().tolist() == [1, 2, 3, 4]
    assert miou_ax.lines[0].get_ydata().tolist() == [12.5]
    assert all(ax.get_xlabel() == "iteration" and ax.get_ylabel() for ax in fig.axes)
    # no validation rows yet: still a figure
    path.write_text(json.dumps(rows[0]))
    assert len(figures.plot_training_curves(path).axes) == 2
