"""The explorer's views: parts maps, one pixel's responsibilities, bases in feature space."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emanet import EMAttention, EMTrace
from emanet.viz import explorer


def real_trace(k=8, t=3, h=6, w=10, centered=False, seed=0):
    """A trace of the real EM unit on random features."""
    torch.manual_seed(seed)
    unit = EMAttention(16, num_bases=k, centered_cosine=centered).eval()
    trace = EMTrace()
    unit(torch.randn(1, 16, h, w), num_iterations=t, trace=trace)
    return trace


def test_base_colors_are_fixed_distinct_and_independent_of_k():
    colours = explorer.base_colors(64)
    assert colours.shape == (64, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 64
    # base k has the same colour whatever K is, so a base keeps its colour in every view
    np.testing.assert_array_equal(explorer.base_colors(8), colours[:8])
    # no two colours are near-identical (the smallest distance between any two)
    distance = np.linalg.norm(colours[:, None].astype(float) - colours[None].astype(float), axis=2)
    assert distance[~np.eye(64, dtype=bool)].min() > 12


def test_parts_equal_argmax_of_the_interpolated_responsibilities():
    trace = real_trace()
    for t in (1, 3):
        maps = trace.responsibilities[t - 1]
        up = F.interpolate(maps, size=(24, 40), mode="bilinear", align_corners=False)[0]
        bases, values = explorer.parts(trace, t, (24, 40))
        np.testing.assert_array_equal(bases, up.argmax(dim=0).numpy())
        np.testing.assert_allclose(values, up.max(dim=0).values.numpy(), rtol=1e-6)
    # at the feature map's own size: the trace itself
    bases, _ = explorer.parts(trace, -1)
    np.testing.assert_array_equal(bases, trace.responsibilities[-1][0].argmax(dim=0).numpy())


def test_parts_map_colours_each_pixel_by_its_base_shaded_by_decision():
    trace = real_trace(h=4, w=4)
    picture = explorer.parts_map(trace, -1, size=(4, 4))
    bases, values = explorer.parts(trace, -1)
    colours = explorer.base_colors(8).astype(float)
    k = 8
    shade = explorer.UNDECIDED_SHADE + (1 - explorer.UNDECIDED_SHADE) * (values - 1 / k) / (
        1 - 1 / k
    )
    expected = colours[bases] * shade[..., None]
    assert np.abs(picture.astype(float) - expected).max() <= 0.5 + 1e-6
    # a fully decided pixel is its base's colour; over an image, opacity 1 is the map alone
    image = np.full((32, 32, 3), 200, np.uint8)
    alone = explorer.parts_map(trace, -1, image, opacity=1.0)
    assert alone.shape == (32, 32, 3)
    over = explorer.parts_map(trace, -1, image, opacity=0.0)
    np.testing.assert_array_equal(over, image)


def test_parts_map_is_computed_at_most_max_side_and_enlarged():
    trace = real_trace(h=6, w=10)
    image = np.zeros((300, 500, 3), np.uint8)
    picture = explorer.parts_map(trace, -1, image, opacity=1.0, max_side=100)
    assert picture.shape == (300, 500, 3)
    small = explorer.parts_map(trace, -1, size=(60, 100), opacity=1.0)
    # nearest enlargement by 5: every 5x5 block is one pixel of the small map
    np.testing.assert_array_equal(picture[::5, ::5], small)


def test_pixel_lookup_is_a_direct_index_at_the_maps_size_and_sums_to_one():
    trace = real_trace(t=3, h=6, w=10)
    values = explorer.pixel_responsibilities(trace, 7, 2, (10, 6))
    assert values.shape == (3, 8)
    for t in range(3):
        np.testing.assert_allclose(values[t], trace.responsibilities[t][0, :, 2, 7].double())
    # at any other size: the bilinear interpolation parts() uses, rows summing to 1
    up = F.interpolate(trace.responsibilities[1].double(), size=(48, 80), mode="bilinear")
    for x, y in [(0, 0), (79, 47), (13, 29), (40, 5)]:
        values = explorer.pixel_responsibilities(trace, x, y, (80, 48))
        np.testing.assert_allclose(values[1], up[0, :, y, x], atol=1e-12)
        np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        explorer.pixel_responsibilities(trace, 80, 0, (80, 48))


def test_top_bases_largest_first_ties_by_index():
    assert explorer.top_bases(np.array([0.1, 0.5, 0.1, 0.3]), 3) == [(1, 0.5), (3, 0.3), (0, 0.1)]


@pytest.mark.parametrize("centered", [False, True])
def test_feature_projection_paths_run_t0_to_T_and_points_carry_their_base(centered):
    trace = real_trace(k=8, t=4, h=12, w=12, centered=centered)
    fit = explorer.feature_projection(trace, num_points=100, seed=1)
    assert fit.points.shape == (100, 2) and fit.paths.shape == (5, 8, 2)
    assert (
        np.all((0 < fit.explained) & (fit.explained <= 1)) and fit.explained[0] >= fit.explained[1]
    )
    # the points are an orthogonal projection of the sampled unit pixels, centred on them:
    # their mean is the origin and no distance grows
    pixels = F.normalize(trace.features[0].double().flatten(1).T, dim=1).numpy()
    picked = np.random.default_rng(1).permutation(144)[:100]
    np.testing.assert_allclose(fit.points.mean(axis=0), 0.0, atol=1e-9)
    before = np.linalg.norm(pixels[picked][:, None] - pixels[picked][None], axis=2)
    after = np.linalg.norm(fit.points[:, None] - fit.points[None], axis=2)
    assert (after <= before + 1e-9).all()
    # unit bases project to at most distance 1 + |centre| from the origin
    assert np.isfinite(fit.paths).all() and np.abs(fit.paths).max() <= 2.0
    last = trace.responsibilities[-1][0].flatten(1).argmax(dim=0).numpy()
    np.testing.assert_array_equal(fit.point_bases, last[picked])
    # the same seed draws the same sample
    again = explorer.feature_projection(trace, num_points=100, seed=1)
    np.testing.assert_array_equal(again.points, fit.points)


def test_feature_projection_axes_are_the_principal_axes():
    # pixels spread along one direction: the first axis takes nearly all the variance
    torch.manual_seed(0)
    direction = F.normalize(torch.randn(16), dim=0)
    base = F.normalize(torch.randn(16), dim=0)
    feats = base[:, None] + torch.linspace(-1, 1, 64)[None] * direction[:, None]
    trace = EMTrace()
    EMAttention(16, num_bases=4).eval()(feats.view(1, 16, 8, 8), trace=trace)
    fit = explorer.feature_projection(trace)
    assert fit.explained[0] > 0.95


def test_feature_projection_needs_features():
    trace = real_trace()
    trace.features = None
    with pytest.raises(ValueError, match="features"):
        explorer.feature_projection(trace)


def test_projection_figure_and_marker_draw():
    trace = real_trace(k=8, t=3, h=12, w=12)
    fig = explorer.projection_figure(explorer.feature_projection(trace), labelled=[0, 1])
    picture = explorer.figure_array(fig)
    assert picture.shape == (480, 640, 3) and picture.dtype == np.uint8
    blank = np.full((40, 40, 3), 128, np.uint8)
    marked = explorer.draw_marker(blank, 20, 20)
    assert (marked != blank).any() and (marked[20, 20] == blank[20, 20]).all()
    assert (marked == 255).any() and (marked == 0).any() and marked.shape == blank.shape
