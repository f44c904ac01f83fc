"""The renderers: grids, strips, convergence and bases against classes, against hand-made
traces and loops."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from emanet import EMAttention, EMTrace
from emanet.data import CLASSES
from emanet.models.attention import trace_stats
from emanet.viz import render


def real_trace(k=8, t=3, h=6, w=10):
    """A trace from the real EM unit on random features."""
    unit = EMAttention(16, num_bases=k).eval()
    trace = EMTrace()
    unit(torch.randn(1, 16, h, w), num_iterations=t, trace=trace)
    return trace


def constant_trace(levels, h=4, w=4, t=1):
    """Base ``k`` has responsibility ``levels[k]`` on every pixel (levels sum to 1)."""
    resp = torch.tensor(levels, dtype=torch.float32).view(1, -1, 1, 1).expand(1, -1, h, w)
    bases = torch.nn.functional.normalize(torch.randn(1, 3, len(levels)), dim=1)
    return EMTrace([resp.clone()] * t, [bases] * t, bases)


def test_base_order_by_share_and_ties_stable():
    resp = np.zeros((4, 2, 2))
    resp[0], resp[1], resp[2], resp[3] = 0.1, 0.6, 0.2, 0.1
    assert render.base_order(resp).tolist() == [1, 2, 0, 3]
    assert render.base_order(torch.from_numpy(resp)).tolist() == [1, 2, 0, 3]
    np.testing.assert_allclose(render.base_shares(resp), [0.1, 0.6, 0.2, 0.1])
    # a base that owns a larger area outranks one that is stronger on fewer pixels
    resp = np.zeros((2, 1, 4))
    resp[0, 0] = [1.0, 0.0, 0.0, 0.0]
    resp[1, 0] = [0.0, 1.0, 1.0, 1.0]
    assert render.base_order(resp).tolist() == [1, 0]


def test_attention_grid_shape_dtype_and_layout():
    trace = real_trace(k=8)
    grid = render.attention_grid(trace, iteration=2, cols=4, tile=30)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    tile_w = round(30 * 10 / 6)
    assert grid.shape == (2 * 32 + 2, 4 * (tile_w + 2) + 2, 3)
    assert render.attention_grid(trace, iteration=1, max_bases=3, cols=3, tile=20).shape[0] == 24
    picture = np.full((60, 100, 3), 200, np.uint8)
    assert render.attention_grid(trace, -1, image=picture, cols=4, tile=30).shape == grid.shape
    with pytest.raises(ValueError, match="iteration"):
        render.attention_grid(trace, iteration=0)
    with pytest.raises(ValueError, match="iteration"):
        render.attention_grid(trace, iteration=4)


def test_attention_grid_tiles_are_ordered_by_share():
    levels = [0.125, 0.0, 0.75, 0.125]  # exact in float32; ties keep the index order
    trace = constant_trace(levels)
    tile = 40
    grid = render.attention_grid(trace, cols=2, tile=tile, vmax=1.0)

    def colour(slot):  # bottom-right pixel of a tile, away from the label
        r, c = divmod(slot, 2)
        return grid[2 + r * (tile + 2) + tile - 2, 2 + c * (tile + 2) + tile - 2]

    for slot, base in enumerate([2, 0, 3, 1]):
        np.testing.assert_array_equal(colour(slot), render._VIRIDIS[int(levels[base] * 255 + 0.5)])
    # by default the largest responsibility shown is the brightest colour
    grid = render.attention_grid(trace, cols=2, tile=tile)
    np.testing.assert_array_equal(colour(0), render._VIRIDIS[255])
    np.testing.assert_array_equal(colour(3), render._VIRIDIS[0])
    # a given order is kept
    grid = render.attention_grid(trace, order=[1, 3], cols=2, tile=tile)
    np.testing.assert_array_equal(grid[tile, tile], render._VIRIDIS[0])


def test_labels_are_pillows_pixels():
    """The glyph-stamped labels (grid tiles, base strips) against Pillow drawing each one."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)
    labels = [
        ((3, 2), "#12 3.4%"),
        ((40, 20), "base #7, t=10"),  # letters and punctuation; runs off the right edge
        ((70, 33), "#0 100.0%"),  # off the bottom-right corner
        ((10, 24), " "),  # nothing inked: no box either
        ((10, 30), ""),
    ]
    reference = Image.fromarray(background.copy())
    draw = ImageDraw.Draw(reference)
    for xy, text in labels:
        if text.strip():
            left, top, right, bottom = draw.textbbox(xy, text)
            draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
            draw.text(xy, text, fill=(255, 255, 255))
    stamped = background.copy()
    render._draw_labels(stamped, labels)
    np.testing.assert_array_equal(stamped, np.asarray(reference))
    assert (stamped != background).any()


def test_attention_grid_slot_inverts_the_layout():
    trace = real_trace(k=8, h=6, w=10)
    tile, cols = 30, 4
    tile_w = round(tile * 10 / 6)
    for slot in range(8):
        r, c = divmod(slot, cols)
        x, y = 2 + c * (tile_w + 2) + tile_w // 2, 2 + r * (tile + 2) + tile // 2
        assert render.attention_grid_slot(trace, x, y, cols=cols, tile=tile) == slot
    assert render.attention_grid_slot(trace, 0, 0, cols=cols, tile=tile) is None  # border
    assert render.attention_grid_slot(trace, 2 + tile_w, 5, cols=cols, tile=tile) is None  # gap
    assert render.attention_grid_slot(trace, 10_000, 5, cols=cols, tile=tile) is None


def test_base_across_iterations_panels():
    trace = real_trace(t=4)
    image = np.zeros((60, 100, 3), np.uint8)
    strip = render.base_across_iterations(trace, base=2, image=image)
    assert strip.shape == (60, 4 * 100 + 3 * 4, 3) and strip.dtype == np.uint8
    narrow = render.base_across_iterations(trace, base=2, image=image, max_width=200)
    assert narrow.shape[1] <= 200 + 3 * 4
    with pytest.raises(ValueError, match="base"):
        render.base_across_iterations(trace, base=8, image=image)


def test_convergence_hand_made_trace():
    k, c = 4, 3
    bases = torch.nn.functional.normalize(torch.randn(1, c, k), dim=1)
    uniform = torch.full((1, k, 2, 2), 1.0 / k)
    trace = EMTrace(responsibilities=[uniform, uniform], bases=[bases, bases], initial_bases=bases)
    stats = render.convergence(trace)
    assert max(abs(s) for s in stats["base_shift"]) < 1e-6  # identical bases: no shift
    assert stats["entropy"] == pytest.approx([1.0, 1.0])  # uniform: entropy / ln K = 1
    assert stats["max_responsibility"] == pytest.approx([1 / k, 1 / k])
    # opposite bases: 1 - cos = 2 at t=1, then no move at t=2
    trace.initial_bases = -bases
    shift = render.convergence(trace)["base_shift"]
    assert abs(shift[0] - 2.0) < 1e-6 and abs(shift[1]) < 1e-6
    # orthogonal bases: 1 - cos = 1
    e = torch.eye(2).view(1, 2, 2)
    trace = EMTrace([torch.full((1, 2, 1, 1), 0.5)], [e], e.flip(2))
    assert abs(render.convergence(trace)["base_shift"][0] - 1.0) < 1e-6
    # decided pixels: entropy 0 (no log 0 trouble), one base owns them all
    onehot = torch.zeros(1, k, 2, 2)
    onehot[:, 1] = 1.0
    stats = render.convergence(EMTrace([onehot], [bases], bases))
    assert stats["entropy"] == [0.0] and stats["active_bases"] == [1]
    assert math.isnan(render.convergence(EMTrace([onehot], [bases], None))["base_shift"][0])
    with pytest.raises(ValueError, match="empty"):
        render.convergence(EMTrace())


def test_convergence_of_real_em_is_the_attention_measure_of_each_iteration():
    trace = real_trace(k=8, t=5)
    stats = render.convergence(trace)
    assert all(len(values) == 5 for values in stats.values())
    assert all(0 <= s <= 2 for s in stats["base_shift"])
    for t in range(1, 6):  # iteration t of the trace is entry t - 1 of every list
        (measured,) = trace_stats(trace, t - 1)
        assert stats["entropy"][t - 1] == measured.entropy
        assert stats["max_responsibility"][t - 1] == measured.max_responsibility
    # entropy / ln K from its definition, at the last iteration
    resp = trace.responsibilities[-1][0].double()
    entropy = -(resp * resp.log()).sum(0).mean() / math.log(8)
    assert stats["entropy"][-1] == pytest.approx(float(entropy), rel=1e-9)


def test_base_class_matrix_by_hand():
    # 2 bases on a 1x2 map: pixel 0 is class 3, pixel 1 is class 5
    resp = torch.tensor([[[[0.75, 0.25]], [[0.25, 0.75]]]])
    trace = EMTrace(responsibilities=[resp], bases=[torch.zeros(1, 1, 2)])
    labels = np.array([[3, 3, 5, 5]], dtype=np.uint8)  # (1, 4) -> nearest to (1, 2)
    m = render.base_class_matrix(trace, labels, num_classes=19)
    assert m.shape == (2, 19)
    np.testing.assert_allclose(m.sum(1), 1.0)
    np.testing.assert_allclose(m[0, [3, 5]], [0.75, 0.25])
    np.testing.assert_allclose(m[1, [3, 5]], [0.25, 0.75])
    # ignored pixels do not count
    m = render.base_class_matrix(trace, np.array([[3, 3, 255, 255]]))
    np.testing.assert_allclose(m[:, 3], [1.0, 1.0])
    # no counted pixel at all: zero rows, not NaN
    assert not render.base_class_matrix(trace, np.full((1, 4), 255)).any()


def test_base_class_matrix_matches_a_loop():
    trace = real_trace(k=5, h=6, w=10)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, (6, 10))
    labels[0, :3] = 255
    m = render.base_class_matrix(trace, labels)
    resp = trace.responsibilities[-1][0].numpy()
    expected = np.zeros((5, 19))
    for y in range(6):
        for x in range(10):
            if labels[y, x] != 255:
                expected[:, labels[y, x]] += resp[:, y, x]
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(m, expected, rtol=1e-5)
    np.testing.assert_allclose(m.sum(1), 1.0)
    order = render.base_order(resp)
    image = render.base_class_image(m, CLASSES, order)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[0] > 5 * 16
