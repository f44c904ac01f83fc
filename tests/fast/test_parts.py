"""The parts map's argmax from candidates: the same bases and values as interpolating all K."""

import pytest
import torch
import torch.nn.functional as F

from emanet.fast.parts import parts_by_candidates


def plain(maps, size):
    up = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    values, bases = up.max(dim=0)
    return bases, values


@pytest.mark.parametrize("sharpness", [0.3, 3.0, 30.0])  # undecided .. decided pixels
@pytest.mark.parametrize("size", [(48, 80), (37, 101), (6, 10), (3, 4)])
def test_same_as_interpolating_every_base(sharpness, size):
    torch.manual_seed(0)
    maps = torch.softmax(sharpness * torch.randn(16, 6, 10), dim=0)
    bases, values = parts_by_candidates(maps, size)
    expected_bases, expected_values = plain(maps, size)
    torch.testing.assert_close(values, expected_values, rtol=0, atol=1e-6)
    # the same base wherever the winner is not a tie to float rounding
    up = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    top2 = up.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-5
    assert torch.equal(bases[clear], expected_bases[clear])
    assert bases.shape == size and bases.dtype == torch.int64


def test_a_single_cell_map():
    maps = torch.softmax(torch.randn(5, 1, 1), dim=0)
    bases, values = parts_by_candidates(maps, (4, 3))
    assert (bases == maps[:, 0, 0].argmax()).all()
    torch.testing.assert_close(values, maps[:, 0, 0].max().expand(4, 3))
