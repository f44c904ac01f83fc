"""The app's PNG codec and writer: lossless for every shape and level, bounded on disk."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emanet.app.png import PngWriter, encode_png


def test_png_writer_is_lossless_and_keeps_only_recent_files(tmp_path):
    writer = PngWriter(tmp_path, keep=2)
    array = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    paths = [writer(array, "overlay") for _ in range(3)]
    for path in paths[1:]:
        with Image.open(path) as im:
            assert im.format == "PNG"
            np.testing.assert_array_equal(np.asarray(im), array)
    assert [Path(p).exists() for p in paths] == [False, True, True]


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 4), (6, 3, 4), (3, 8, 2), (97, 131, 3)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_encode_png_is_lossless(shape, level):
    rng = np.random.default_rng(level)
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    array[: shape[0] // 2] = 7  # flat rows: the Up filter's best case
    with Image.open(io.BytesIO(encode_png(array, level))) as im:
        np.testing.assert_array_equal(np.asarray(im), array)
    with pytest.raises(ValueError, match="cannot write"):
        encode_png(np.zeros((2, 2, 5), dtype=np.uint8))
