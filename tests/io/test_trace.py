"""Trace files: a round trip, plain arrays only, clear errors."""

import numpy as np
import pytest
import torch

from emanet import EMAttention, EMTrace
from emanet.io.trace import TraceFileError, load_trace, save_trace


@pytest.fixture
def run():
    torch.manual_seed(0)
    trace = EMTrace()
    EMAttention(16, num_bases=8).eval()(torch.randn(2, 16, 5, 7), num_iterations=3, trace=trace)
    labels = np.random.default_rng(0).integers(0, 5, (40, 56))
    image = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    return trace, labels, image


def test_round_trip_keeps_every_array_and_the_run(run, tmp_path):
    trace, labels, image = run
    classes = ["a", "b", "c", "d", "é"]
    path = save_trace(tmp_path / "run.npz", trace, labels, image, classes, "my model", 2.5, 1)
    loaded = load_trace(path)
    assert loaded.model == "my model" and loaded.classes == classes
    assert loaded.num_iterations == 3 and loaded.inverse_temperature == 2.5
    np.testing.assert_array_equal(loaded.labels, labels)
    np.testing.assert_array_equal(loaded.image, image)
    for mine, theirs in zip(loaded.trace.responsibilities, trace.responsibilities, strict=True):
        torch.testing.assert_close(mine[0], theirs[1], rtol=0, atol=0)
    for mine, theirs in zip(loaded.trace.bases, trace.bases, strict=True):
        torch.testing.assert_close(mine[0], theirs[1], rtol=0, atol=0)
    torch.testing.assert_close(loaded.trace.initial_bases[0], trace.initial_bases[1])
    torch.testing.assert_close(loaded.trace.features[0], trace.features[1])


def test_file_is_plain_numpy_with_the_documented_shapes(run, tmp_path):
    trace, labels, image = run
    save_trace(tmp_path / "run.npz", trace, labels, image, list("abcde"), "m", 1.0)
    with np.load(tmp_path / "run.npz", allow_pickle=False) as data:
        assert data["responsibilities"].shape == (3, 8, 5, 7)
        assert data["bases"].shape == (3, 16, 8)
        assert data["initial_bases"].shape == (16, 8)
        assert data["features"].shape == (16, 5, 7)
        assert data["labels"].shape == (40, 56) and data["image"].shape == (40, 56, 3)
        assert int(data["num_iterations"]) == 3 and str(data["model"]) == "m"
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]  # no temporary file left


def test_bad_files_are_named_clearly(run, tmp_path):
    with pytest.raises(TraceFileError, match="missing.npz: no such file"):
        load_trace(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TraceFileError, match="junk.npz is not an .npz trace file"):
        load_trace(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(TraceFileError, match="other.npz is not an emanet trace"):
        load_trace(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="empty"):
        save_trace(tmp_path / "e.npz", EMTrace(), np.zeros((2, 2)), np.zeros((2, 2, 3)), [], "m", 1)
