"""Batch prediction: finding images, mirroring the input tree, batching by size, skipping what is
broken, and labels identical to one-at-a-time prediction."""

import errno
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emanet import build_model
from emanet.cli import main
from emanet.deploy.batch import (
    ImageJob,
    default_batch_size,
    find_images,
    output_paths,
    predict_images,
)
from emanet.io.atomic import WriteError
from emanet.predict import Segmenter

# What each device says when memory runs out (CUDA, the CPU allocator, Python).
OUT_OF_MEMORY = {
    "cuda": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
        "you tried to allocate 4294967296 bytes."
    ),
    "python": MemoryError,
}


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return Segmenter(build_model("emanet_r18-d8_toycity"), device="cpu")


def photo(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Images (relative path -> (H, W)) in nested folders, plus a note and a broken image."""
    images = {
        "a.png": (40, 60),
        "street/b.jpg": (40, 60),
        "street/deep/c.png": (30, 50),
        "street/deep/d.webp": (40, 60),
    }
    for index, (name, (height, width)) in enumerate(images.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(height, width, index)).save(root / name)
    (root / "street" / "notes.txt").write_text("not an image, and not taken from a folder")
    (root / "street" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return images


def test_find_images_folders_globs_and_files(tmp_path):
    make_tree(tmp_path)
    jobs = find_images([tmp_path])
    stems = {job.output_stem.as_posix() for job in jobs}
    assert stems == {"a", "street/b", "street/deep/c", "street/deep/d", "street/broken"}
    # a glob is mirrored from its fixed leading folders; a named file lands at the top
    jobs = find_images([f"{tmp_path}/street/**/*.png", tmp_path / "street" / "b.jpg"])
    assert [(j.path.name, j.output_stem.as_posix()) for j in jobs] == [
        ("broken.png", "broken"),
        ("c.png", "deep/c"),
        ("b.jpg", "b"),
    ]
    # the same file named twice is segmented once
    assert len(find_images([tmp_path / "a.png", tmp_path / "a.png"])) == 1
    with pytest.raises(FileNotFoundError, match="missing.png"):
        find_images([tmp_path / "missing.png"])
    with pytest.raises(FileNotFoundError, match=r"no file matches .*\*\.gif"):
        find_images([f"{tmp_path}/*.gif"])


def test_batched_labels_equal_one_at_a_time(segmenter):
    images = [photo(48, 80, seed) for seed in range(3)]
    batched = segmenter.predict_batch(images)
    for image, result in zip(images, batched, strict=True):
        single = segmenter(image)
        assert result.labels.shape == (48, 80)
        assert result.input_size == single.input_size
        # batch members never interact; only float rounding of batched kernels may differ
        assert (result.labels == single.labels).mean() > 0.999
    with pytest.raises(ValueError, match="one size"):
        segmenter.predict_batch([photo(48, 80, 0), photo(40, 80, 1)])
    assert segmenter.predict_batch([]) == []


def test_folder_with_a_broken_file(segmenter, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emanet")
    images = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    summary = predict_images(
        segmenter, find_images([tmp_path / "in"]), out, batch_size=2, progress=False
    )
    assert sorted(p.name for p in summary.written) == ["a.png", "b.jpg", "c.png", "d.webp"]
    ((skipped, reason),) = summary.skipped
    assert skipped.name == "broken.png" and "\n" not in reason and reason
    assert f"skipped {skipped}: {reason}" in caplog.text
    assert "wrote results for 4 of 5 images" in caplog.text and "skipped 1" in caplog.text
    for name, (height, width) in images.items():
        stem = Path(name).with_suffix("")
        paths = output_paths(out, ImageJob(Path(name), stem))
        assert sorted(p.name for p in paths.values()) == sorted(
            f"{stem.name}_{kind}.png" for kind in ("mask", "overlay", "trainIds")
        )
        labels = np.asarray(Image.open(paths["trainIds"]))
        assert labels.shape == (height, width) and labels.max() < 19
        assert Image.open(paths["mask"]).size == (width, height)
    # only the results: nothing for the broken file, no temporary files
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(written) == 3 * 4 and not any("broken" in p or ".tmp" in p for p in written)


@pytest.mark.parametrize("device", sorted(OUT_OF_MEMORY))
def test_batches_hold_one_size_and_split_when_memory_runs_out(
    segmenter, tmp_path, monkeypatch, device
):
    sizes = [(40, 60), (30, 50), (40, 60), (40, 60), (30, 50), (40, 60), (40, 60)]
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(photo(height, width, index)).save(tmp_path / f"{index}.png")
    calls = []
    real = Segmenter.predict_batch

    def recording(self, images, **options):
        calls.append([image.size for image in images])
        if len(images) > 2:
            raise OUT_OF_MEMORY[device]()
        return real(self, images, **options)

    monkeypatch.setattr(Segmenter, "predict_batch", recording)
    summary = predict_images(
        segmenter, find_images([tmp_path]), tmp_path / "out", batch_size=4, progress=False
    )
    assert len(summary.written) == len(sizes) and not summary.skipped
    assert all(len(set(batch)) == 1 for batch in calls)  # one image size per batch
    assert max(len(batch) for batch in calls) == 4  # full batch tried first
    successful = [batch for batch in calls if len(batch) <= 2]
    assert sum(len(batch) for batch in successful) == len(sizes)
    assert len(calls) - len(successful) == 1  # after the first failure, batches of 2 only


def test_an_image_too_large_even_alone_is_skipped_with_its_size(
    segmenter, tmp_path, monkeypatch, caplog
):
    for index, (height, width) in enumerate([(40, 60), (90, 120), (40, 60)]):
        Image.fromarray(photo(height, width, index)).save(tmp_path / f"{index}.png")
    real = Segmenter.predict_batch

    def small_memory(self, images, **options):
        if images[0].size == (120, 90):
            raise OUT_OF_MEMORY["cpu"]()
        return real(self, images, **options)

    monkeypatch.setattr(Segmenter, "predict_batch", small_memory)
    summary = predict_images(
        segmenter, find_images([tmp_path]), tmp_path / "out", batch_size=2, progress=False
    )
    assert sorted(p.name for p in summary.written) == ["0.png", "2.png"]
    ((path, reason),) = summary.skipped
    assert path.name == "1.png" and "out of memory" in reason and "120x90" in reason
    assert f"skipped {path}: {reason}" in caplog.text and "\n" not in reason


def test_a_bug_in_the_model_is_not_taken_for_lack_of_memory(segmenter, tmp_path, monkeypatch):
    Image.fromarray(photo(32, 48, 0)).save(tmp_path / "x.png")

    def broken(self, images, **options):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(Segmenter, "predict_batch", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        predict_images(segmenter, find_images([tmp_path]), tmp_path / "out", progress=False)


def _disk_that_fills_up(monkeypatch, error_number, files_that_fit):
    """PNG saves succeed ``files_that_fit`` times, then fail as a full (or closed) disk does:
    a partial file, then the OSError."""
    real_save = Image.Image.save
    saves = []

    def save(self, fp, *args, **kwargs):
        saves.append(fp)
        if len(saves) <= files_that_fit:
            return real_save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(b"\x89PNG\r\n")
        raise OSError(error_number, "simulated")

    monkeypatch.setattr(Image.Image, "save", save)
    return saves


@pytest.mark.parametrize(
    "error_number, advice",
    [
        (errno.ENOSPC, "free some space"),
        (errno.EACCES, "choose an output folder you can write to"),
    ],
)
def test_a_full_or_unwritable_output_folder_stops_the_run(
    segmenter, tmp_path, monkeypatch, error_number, advice
):
    for index in range(8):
        Image.fromarray(photo(32, 48, index)).save(tmp_path / f"{index}.png")
    jobs = find_images([tmp_path])
    out = tmp_path / "out"
    predicted = []
    real = Segmenter.predict_batch

    def counting(self, images, **options):
        predicted.extend(images)
        return real(self, images, **options)

    monkeypatch.setattr(Segmenter, "predict_batch", counting)
    _disk_that_fills_up(monkeypatch, error_number, files_that_fit=2 * 3)  # two images' results
    with pytest.raises(WriteError) as info:
        predict_images(segmenter, jobs, out, batch_size=1, workers=1, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(out) in message and advice in message
    assert "results of 2 of 8 images written" in message
    assert len(predicted) < len(jobs)  # stopped, not every image tried against a full disk
    # what was written is whole, and nothing else is there
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        f"{i}_{kind}.png" for i in (0, 1) for kind in ("mask", "overlay", "trainIds")
    )
    for name in files:
        with Image.open(out / name) as image:
            image.load()


def test_a_file_that_cannot_be_written_is_skipped(segmenter, tmp_path, monkeypatch):
    """An error of one file's own (its name too long for the file system) is not the folder's:
    that image is skipped and the others are written."""
    for index in range(3):
        Image.fromarray(photo(32, 48, index)).save(tmp_path / f"{index}.png")
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if Path(fp).name.startswith(".1_"):
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    summary = predict_images(
        segmenter, find_images([tmp_path]), tmp_path / "out", batch_size=1, progress=False
    )
    assert sorted(p.name for p in summary.written) == ["0.png", "2.png"]
    ((path, reason),) = summary.skipped
    assert path.name == "1.png" and "File name too long" in reason


def test_results_that_would_collide_are_skipped(segmenter, tmp_path):
    Image.fromarray(photo(32, 48, 0)).save(tmp_path / "x.png")
    Image.fromarray(photo(32, 48, 1)).save(tmp_path / "x.jpg")
    summary = predict_images(
        segmenter, find_images([tmp_path]), tmp_path / "out", batch_size=2, progress=False
    )
    assert [p.name for p in summary.written] == ["x.jpg"]
    ((path, reason),) = summary.skipped
    assert path.name == "x.png" and "overwrite" in reason and "x.jpg" in reason


def test_cli_predict_folder_and_glob(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emanet")
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["predict", f"{tmp_path}/in/**/*.png", "--out", str(out), "--batch-size", "3"])
    assert code == 1  # something was skipped
    assert (out / "street" / "deep" / "c_mask.png").is_file() and (out / "a_mask.png").is_file()
    assert "broken.png" in caplog.text and "wrote results for 2 of 3 images" in caplog.text
    assert main(["predict", str(tmp_path / "in" / "a.png"), "--out", str(out)]) == 0
    assert main(["predict", str(tmp_path / "in"), "--out", str(out), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in caplog.records[-1].message


def test_default_batch_size_by_device():
    assert default_batch_size("cuda") == 8
    assert default_batch_size("cpu") == 4
