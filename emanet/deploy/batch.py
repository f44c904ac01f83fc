"""Many images at once: find them (files, folders, globs), batch those of one size, write the
results in a tree that mirrors the input, skip what cannot be read and say why.

For every image ``IN/sub/dir/name.ext`` found under an input ``IN`` (a folder walked
recursively, or the fixed leading part of a glob such as ``IN/**/*.jpg``), three files are
written under the output folder ``OUT``::

    OUT/sub/dir/name_mask.png       colour mask (palette)
    OUT/sub/dir/name_overlay.png    the image blended with the mask
    OUT/sub/dir/name_trainIds.png   8-bit trainIds (0-18)

A file given by itself is written at the top of ``OUT``. Images are loaded and results encoded
in background threads (Pillow releases the GIL while it decodes and compresses) while the model
runs; images of the same size are grouped into batches of ``batch_size``. A file that cannot be
loaded, or whose results would overwrite another input's, is skipped with a one-line reason and
the run goes on; each file is written atomically, so an interrupted run leaves no half PNG.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from emanet.io.atomic import atomic_write
from emanet.io.images import ImageLoadError, load_image

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageJob",
    "PredictSummary",
    "default_batch_size",
    "find_images",
    "output_paths",
    "predict_images",
]

log = logging.getLogger(__name__)

#: File name endings taken from folders (a glob or a file named explicitly may be anything).
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

# Results written per image: suffix of the file name -> what it holds.
_OUTPUTS = ("mask", "overlay", "trainIds")


def default_batch_size(device: torch.device | str) -> int:
    """Images per forward pass: 8 on CUDA (halved automatically when memory runs out), 4 on
    other devices. On 2 CPU cores the bundled model segments 1.9x more images/s at batch 4 and
    2.1x at batch 8 than at batch 1 (``benchmarks/bench_predict.py``); 4 keeps the memory of an
    official model at 1024x2048 (a few GB per batch) within a laptop's."""
    return 8 if torch.device(device).type == "cuda" else 4


@dataclass(frozen=True)
class ImageJob:
    """One input file and where its results go.

    Attributes:
        path: the image file.
        output_stem: its results' path relative to the output folder, without the suffix
            (``sub/dir/name`` for ``IN/sub/dir/name.jpg``).
    """

    path: Path
    output_stem: Path


def _glob_root(pattern: str) -> Path:
    """The leading folders of ``pattern`` that hold no wildcard (``a/b/**/*.png`` -> ``a/b``)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _folder_jobs(folder: Path, root: Path) -> list[ImageJob]:
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    return [ImageJob(f, f.relative_to(root).with_suffix("")) for f in files if f.is_file()]


def find_images(items: Iterable[str | os.PathLike[str]]) -> list[ImageJob]:
    """The images named by ``items``: files, folders (recursively, by suffix) and globs
    (``**`` spans folders; quote them so the shell leaves them to us), in order, each file once.

    Raises:
        FileNotFoundError: an item that is neither an existing path nor a glob with matches
            (the message names it).
    """
    jobs: list[ImageJob] = []
    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            jobs += _folder_jobs(path, path)
        elif path.is_file():
            jobs.append(ImageJob(path, Path(path.stem)))
        elif glob.has_magic(text):
            root = _glob_root(text)
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {text}")
            for match in matches:
                if match.is_dir():
                    jobs += _folder_jobs(match, root)
                else:
                    jobs.append(ImageJob(match, match.relative_to(root).with_suffix("")))
        else:
            raise FileNotFoundError(f"no such file or folder: {text}")
    seen: set[Path] = set()
    unique = []
    for job in jobs:
        key = job.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(job)
    return unique


def output_paths(out_dir: str | os.PathLike[str], job: ImageJob) -> dict[str, Path]:
    """``{"mask": ..., "overlay": ..., "trainIds": ...}``: the files written for ``job``."""
    base = Path(out_dir) / job.output_stem
    return {kind: base.with_name(f"{base.name}_{kind}.png") for kind in _OUTPUTS}


@dataclass
class PredictSummary:
    """What :func:`predict_images` did.

    Attributes:
        written: inputs whose results were written.
        skipped: ``(input path, one-line reason)`` of the inputs left out.
        seconds: wall time of the run.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    def format(self, out_dir: str | os.PathLike[str]) -> str:
        total = len(self.written) + len(self.skipped)
        rate = len(self.written) / self.seconds if self.seconds > 0 else 0.0
        return (
            f"wrote results for {len(self.written)} of {total} images to {out_dir}, "
            f"skipped {len(self.skipped)}, in {self.seconds:.1f} s ({rate:.2f} images/s)"
        )


def _one_line(error: BaseException) -> str:
    reason = error.reason if isinstance(error, ImageLoadError) else str(error)
    return " ".join(str(reason).split()) or type(error).__name__


def _write_results(prediction, paths: dict[str, Path], opacity: float) -> None:
    arrays = {
        "mask": prediction.color_mask(),
        "overlay": prediction.overlay(opacity),
        "trainIds": prediction.labels.astype(np.uint8),
    }
    for kind, path in paths.items():
        image = Image.fromarray(arrays[kind])
        atomic_write(path, lambda tmp, im=image: im.save(tmp, format="PNG"))


class _Run:
    """State of one :func:`predict_images` call (batches, pools, the summary)."""

    def __init__(self, segmenter, out_dir, batch_size, options, opacity, bar, writer):
        self.segmenter = segmenter
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
        self.options = options
        self.opacity = opacity
        self.bar = bar
        self.writer = writer
        self.summary = PredictSummary()
        self.writes: list[tuple[ImageJob, Future]] = []
        self.warned_memory = False

    def skip(self, job: ImageJob, reason: str) -> None:
        log.warning("skipped %s: %s", job.path, reason)
        self.summary.skipped.append((job.path, reason))
        self.bar.update(1)

    def run_batch(self, batch: list[tuple[ImageJob, Image.Image]]) -> None:
        try:
            predictions = self.segmenter.predict_batch(
                [picture for _, picture in batch], **self.options
            )
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                self.skip(batch[0][0], "out of memory even alone")
                return
            if not self.warned_memory:
                log.warning("out of memory at batch %d: splitting batches in two", len(batch))
                self.warned_memory = True
            self.batch_size = max(1, len(batch) // 2)
            half = len(batch) // 2
            self.run_batch(batch[:half])
            self.run_batch(batch[half:])
            return
        for (job, _), prediction in zip(batch, predictions, strict=True):
            paths = output_paths(self.out_dir, job)
            future = self.writer.submit(_write_results, prediction, paths, self.opacity)
            self.writes.append((job, future))
        self.collect(block=False)

    def collect(self, block: bool) -> None:
        pending = []
        for job, future in self.writes:
            if not (block or future.done()):
                pending.append((job, future))
                continue
            try:
                future.result()
            except OSError as error:
                self.skip(job, f"cannot write results: {_one_line(error)}")
                continue
            self.summary.written.append(job.path)
            self.bar.update(1)
        self.writes = pending


def predict_images(
    segmenter,
    jobs: Sequence[ImageJob],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    num_iterations: int | None = None,
    aug_test: bool = False,
    mode: str | None = None,
    opacity: float = 0.5,
    progress: bool = True,
    workers: int = 2,
) -> PredictSummary:
    """Segment ``jobs`` with ``segmenter`` and write their results under ``out_dir``.

    Args:
        segmenter: an :class:`emanet.Segmenter`.
        jobs: from :func:`find_images`.
        out_dir: output folder (created).
        batch_size: images per forward pass (default :func:`default_batch_size` of the
            segmenter's device); only images of one size share a batch.
        num_iterations, aug_test, mode: as for :meth:`emanet.Segmenter.__call__`.
        opacity: of the mask in the overlay.
        progress: show a progress bar.
        workers: threads that load images and encode results.

    Returns:
        a :class:`PredictSummary` (also logged).
    """
    if batch_size is None:
        batch_size = default_batch_size(segmenter.device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    options = {"num_iterations": num_iterations, "aug_test": aug_test, "mode": mode}
    # Images of one size wait here for their batch. A run of many different sizes would keep
    # all of them waiting, so past ``max_waiting`` the largest group goes as it is.
    groups: OrderedDict[tuple[int, int], list[tuple[ImageJob, Image.Image]]] = OrderedDict()
    max_waiting = 4 * batch_size
    lookahead = 2 * batch_size + workers
    claimed: dict[Path, Path] = {}
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="emanet-load") as loader,
        ThreadPoolExecutor(workers, thread_name_prefix="emanet-write") as writer,
        logging_redirect_tqdm(),
        tqdm(total=len(jobs), desc="predict", unit="image", disable=not progress) as bar,
    ):
        run = _Run(segmenter, out_dir, batch_size, options, opacity, bar, writer)
        loads: list[tuple[ImageJob, Future]] = []
        for job in jobs:
            loads.append((job, loader.submit(load_image, job.path)))
            if len(loads) < lookahead:
                continue
            _take(run, loads.pop(0), groups, claimed, max_waiting)
        while loads:
            _take(run, loads.pop(0), groups, claimed, max_waiting)
        for batch in groups.values():
            for index in range(0, len(batch), run.batch_size):
                run.run_batch(batch[index : index + run.batch_size])
        run.collect(block=True)
    summary = run.summary
    summary.seconds = time.perf_counter() - start
    log.info("%s", summary.format(out_dir))
    return summary


def _take(run: _Run, load: tuple[ImageJob, Future], groups, claimed, max_waiting) -> None:
    """Receive one loaded image: skip it, or queue it and run any batch that is ready."""
    job, future = load
    try:
        picture = future.result()
    except ImageLoadError as error:
        run.skip(job, _one_line(error))
        return
    target = (run.out_dir / job.output_stem).resolve()
    if target in claimed:
        run.skip(job, f"its results would overwrite those of {claimed[target]}")
        return
    claimed[target] = job.path
    group = groups.setdefault(picture.size, [])
    group.append((job, picture))
    if len(group) >= run.batch_size:
        run.run_batch(groups.pop(picture.size))
    elif sum(len(g) for g in groups.values()) > max_waiting:
        largest = max(groups, key=lambda size: len(groups[size]))
        run.run_batch(groups.pop(largest))
