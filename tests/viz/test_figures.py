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


def test_base_class_figure_labels_every_base_row():
    matrix = np.random.default_rng(0).dirichlet(np.ones(19), size=64)
    order = np.argsort(-matrix.max(1))
    fig = figures.base_class_figure(matrix, CLASSES, order)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [str(b) for b in order]


def test_line_panels_draw_each_curve_in_a_grid():
    xs = [1, 2, 3]
    panels = [
        figures.Panel(
            "a",
            "EM iteration",
            "y",
            {"one": (xs, [3, 2, 1]), "two": (xs, [1, 2, 3])},
            integer_x=True,
            mark_x=(2, "trained"),
        ),
        figures.Panel(
            "b",
            "N",
            "ms",
            {"cost": ([512, 2048], [1.0, 16.0])},
            xscale="log2",
            yscale="log",
            styles={"cost": {"ls": "--"}},
        ),
        figures.Panel("c", "λ", "entropy", {"e": ([1, 50], [0.9, 0.1])}, ylim=(0, 1)),
    ]
    fig = figures.line_panels(panels, cols=2, title="t")
    first, second, third, spare = fig.axes
    assert [line.get_label() for line in first.lines] == ["one", "two", "trained"]
    assert first.lines[0].get_ydata().tolist() == [3, 2, 1]
    assert second.get_xscale() == "log" and second.xaxis.get_transform().base == 2
    assert second.lines[0].get_linestyle() == "--"
    assert third.get_ylim() == (0, 1) and not spare.get_visible()
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in first.get_xticks())


def test_image_panels_titles_each_picture():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    labels = np.arange(24).reshape(4, 6)
    fig = figures.image_panels({"photo": rgb, "labels": labels}, cols=3, nearest=True)
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["photo", "labels"]
    np.testing.assert_array_equal(shown[1].images[0].get_array(), labels)
    assert shown[1].images[0].get_cmap().name == "tab20"
    assert not any(ax.axison for ax in fig.axes)


def test_class_bars_one_bar_per_class_and_series():
    values = {"run": [50.0, float("nan"), 10.0], "bundled": [60.0, 5.0, 20.0]}
    fig = figures.class_bars(values, ["road", "wall", "sky"], [(1, 2, 3)] * 3, ylabel="IoU")
    bars = fig.axes[0].patches
    assert [b.get_height() for b in bars] == [50.0, 0.0, 10.0, 60.0, 5.0, 20.0]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["road", "wall", "sky"]


def test_every_figure_reads_at_jupyterlabs_width(tmp_path):
    from tests.readability import problems, render_report

    trace = real_trace()
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"iter": i, "loss": 1.0 / i}) for i in (1, 2, 3)))
    panel = figures.Panel("p", "EM iteration", "y", {"a": ([1, 2], [0.5, 0.25])}, integer_x=True)
    drawn = [
        figures.convergence_figure(trace),
        figures.base_class_figure(np.full((64, 19), 1 / 19), CLASSES),
        figures.plot_training_curves(metrics),
        figures.line_panels([panel] * 3, cols=3, title="three"),
        figures.image_panels({"a": np.zeros((8, 16, 3), np.uint8)}, cols=1, title="one"),
        figures.class_bars({"a": np.ones(19)}, CLASSES, title="bars"),
    ]
    assert [p for fig in drawn for p in problems(render_report(fig))] == []
