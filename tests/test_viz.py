import json
import math

import numpy as np
import torch
from matplotlib.figure import Figure

from emanet import EMAttention, EMTrace
from emanet.data import CLASSES, PALETTE
from emanet.viz import (
    attention_grid,
    base_across_iterations,
    base_class_figure,
    base_class_matrix,
    base_order,
    convergence,
    convergence_figure,
    legend_image,
    plot_training_curves,
)


def real_trace(k=8, t=3):
    unit = EMAttention(16, num_bases=k).eval()
    trace = EMTrace()
    unit(torch.randn(1, 16, 6, 10), num_iterations=t, trace=trace)
    return trace


def test_base_order_by_share():
    resp = np.zeros((3, 2, 2))
    resp[0] = 0.1
    resp[1] = 0.6
    resp[2] = 0.3
    assert base_order(resp).tolist() == [1, 2, 0]


def test_attention_grid_shape_and_order():
    trace = real_trace(k=8)
    grid = attention_grid(trace, iteration=2, cols=4, tile=30)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    tile_w = round(30 * 10 / 6)
    assert grid.shape == (2 * 32 + 2, 4 * (tile_w + 2) + 2, 3)
    assert attention_grid(trace, iteration=1, max_bases=3, cols=3, tile=20).shape[0] == 24


def test_base_across_iterations_panels():
    trace = real_trace(t=4)
    image = np.zeros((60, 100, 3), np.uint8)
    strip = base_across_iterations(trace, base=2, image=image)
    assert strip.shape == (60, 4 * 100 + 3 * 4, 3)


def test_convergence_hand_made_trace():
    k, c = 4, 3
    bases = torch.nn.functional.normalize(torch.randn(1, c, k), dim=1)
    uniform = torch.full((1, k, 2, 2), 1.0 / k)
    trace = EMTrace(responsibilities=[uniform, uniform], bases=[bases, bases], initial_bases=bases)
    stats = convergence(trace)
    assert stats["base_shift"] == [0.0, 0.0] or max(abs(s) for s in stats["base_shift"]) < 1e-6
    assert all(abs(e - math.log(k)) < 1e-6 for e in stats["entropy"])
    # opposite bases: 1 - cos = 2
    trace.initial_bases = -bases
    assert abs(convergence(trace)["base_shift"][0] - 2.0) < 1e-6
    assert isinstance(convergence_figure(real_trace()), Figure)


def test_base_class_matrix_by_hand():
    # 2 bases on a 1x2 map: pixel 0 is class 3, pixel 1 is class 5
    resp = torch.tensor([[[[0.75, 0.25]], [[0.25, 0.75]]]])
    trace = EMTrace(responsibilities=[resp], bases=[torch.zeros(1, 1, 2)])
    labels = np.array([[3, 3, 5, 5]])  # (1, 4) -> nearest to (1, 2)
    m = base_class_matrix(trace, labels, num_classes=19)
    assert m.shape == (2, 19)
    np.testing.assert_allclose(m.sum(1), 1.0)
    np.testing.assert_allclose(m[0, [3, 5]], [0.75, 0.25])
    np.testing.assert_allclose(m[1, [3, 5]], [0.25, 0.75])
    # ignored pixels do not count
    m = base_class_matrix(trace, np.array([[3, 3, 255, 255]]))
    np.testing.assert_allclose(m[:, 3], [1.0, 1.0])
    assert isinstance(base_class_figure(m, CLASSES), Figure)


def test_legend_and_training_curves(tmp_path):
    legend = legend_image(CLASSES, PALETTE, present=[0, 10, 13])
    assert legend.dtype == np.uint8 and legend.shape[2] == 3
    # the road colour is drawn
    assert (legend.reshape(-1, 3) == np.array(PALETTE[0], np.uint8)).all(1).any()
    rows = [
        {"iter": i, "loss": 3 - i * 0.1, "loss_decode": 2.0, "loss_aux": 2.5, "lr": 0.01}
        for i in range(1, 5)
    ] + [{"iter": 4, "mIoU": 12.5}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    fig = plot_training_curves(path)
    assert len(fig.axes) == 2 and fig.axes[1].lines[0].get_ydata().tolist() == [12.5]
