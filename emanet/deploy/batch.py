"""Many images at once: find them (files, folders, globs), batch those of one size, write the
results in a tree that mirrors the input, skip what cannot be read and say why.

For every image ``IN/sub/dir/name.ext`` found under an input ``IN`` (a folder walked
recursively, or the fixed leading part of a glob such as ``IN/**/*.jpg``), three files are
written under the output folder ``OUT``::

    OUT/sub/dir/name_mask.png       colour mask (palette)
    OUT/sub/dir/name_overlay.png    the image blended with the mask
    OUT/sub/dir/name_trainIds.png   8-bit trainIds (0-18)

A file given by itself is written at the top of ``OUT``. ``trainIds`` are the class ids of the
model's own classes (Cityscapes' trainIds for a Cityscapes model). Images are loaded and results
encoded in background threads (Pillow releases the GIL while it decodes and compresses) while the
model runs; images of the same size are grouped into batches of ``batch_size``.

Under ``torchrun`` (:func:`torchrun_group`) the images are shared out among the processes: each
is predicted once, by the process that owns its output files, and every process returns the
merged summary.

What goes wrong is told in one line and loses nothing:

* a file that cannot be loaded, or whose results would overwrite another input's, is skipped
  with its reason and the run goes on;
* out of memory (CUDA or CPU), a batch is split in two and later batches stay at most that
  size; an image that does not fit even alone is skipped with its size;
* every file is written atomically, so an interrupted run leaves no half PNG; when the output
  folder is full or cannot be written, the run stops with a :class:`~emanet.io.atomic.WriteError`
  that says how many images' results are written.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from emanet.io.atomic import WriteError
from emanet.io.images import ImageLoadError, load_image, write_png
from emanet.runtime.device import is_out_of_memory

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageJob",
    "PredictSummary",
    "default_batch_size",
    "find_images",
    "output_paths",
    "predict_images",
    "share_jobs",
    "torchrun_group",
]

log = logging.getLogger(__name__)

#: File name endings taken from folders (a glob or a file named explicitly may be anything).
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

# Results written per image: suffix of the file name -> what it holds.
_OUTPUTS = ("mask", "overlay", "trainIds")

# Write errors that every later write would meet too (the output folder is full, read-only or
# not ours): they stop the run. Any other write error skips its image.
_OUTPUT_FULL_OR_CLOSED = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
)


def default_batch_size(device: torch.device | str) -> int:
    """Images per forward pass: 8 on CUDA (halved automatically when memory runs out), 4 on
    other devices, where batching still pays (``benchmarks/bench_predict.py``) and 4 keeps an
    official model at 1024x2048 within a laptop's memory."""
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
        write_png(path, arrays[kind])


@contextlib.contextmanager
def _thread_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that drops its queued work on the way out (an error, Ctrl-C)."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prefetch(jobs: Sequence[ImageJob], pool: ThreadPoolExecutor, lookahead: int):
    """``(job, future of its loaded image)`` in order, loading at most ``lookahead`` ahead."""
    loads: deque[tuple[ImageJob, Future]] = deque()
    for job in jobs:
        loads.append((job, pool.submit(load_image, job.path)))
        if len(loads) >= lookahead:
            yield loads.popleft()
    yield from loads


class _Run:
    """One :func:`predict_images` call: images wait in groups of one size until a batch is
    full, batches run on the model (halved when memory runs out), results are written in the
    background, and the summary keeps count."""

    def __init__(self, segmenter, out_dir: Path, batch_size: int, options, opacity, bar, writer):
        self.segmenter, self.out_dir = segmenter, out_dir
        self.options, self.opacity = options, opacity
        self.batch_size = batch_size
        # A run of many different sizes would keep every image waiting for its batch, so
        # past ``max_waiting`` images the largest group goes as it is.
        self.max_waiting = 4 * batch_size
        self.groups: dict[tuple[int, int], list[tuple[ImageJob, Image.Image]]] = {}
        self.claimed: dict[Path, Path] = {}  # results path -> the input that writes it
        self.bar, self.writer = bar, writer
        self.writes: deque[tuple[ImageJob, Future]] = deque()
        self.summary = PredictSummary()
        self.warned_memory = False

    def skip(self, job: ImageJob, reason: str) -> None:
        log.warning("skipped %s: %s", job.path, reason)
        self.summary.skipped.append((job.path, reason))
        self.bar.update(1)

    def take(self, job: ImageJob, load: Future) -> None:
        """Receive one loaded image: skip it, or queue it and run any batch that is ready."""
        try:
            picture = load.result()
        except ImageLoadError as error:
            self.skip(job, _one_line(error))
            return
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            self.skip(job, "out of memory while loading it")
            return
        target = (self.out_dir / job.output_stem).resolve()
        if target in self.claimed:
            self.skip(job, f"its results would overwrite those of {self.claimed[target]}")
            return
        self.claimed[target] = job.path
        group = self.groups.setdefault(picture.size, [])
        group.append((job, picture))
        if len(group) >= self.batch_size:
            self.run_group(picture.size)
        elif sum(len(g) for g in self.groups.values()) > self.max_waiting:
            self.run_group(max(self.groups, key=lambda size: len(self.groups[size])))

    def finish(self) -> None:
        """Run the images still waiting, then wait for every write."""
        for size in list(self.groups):
            self.run_group(size)
        self.collect(block=True)

    def run_group(self, size: tuple[int, int]) -> None:
        """Run the images of ``size`` that wait, in batches of (the current) batch size."""
        group = self.groups.pop(size)
        while group:
            batch, group = group[: self.batch_size], group[self.batch_size :]
            self.run_batch(batch)

    def run_batch(self, batch: list[tuple[ImageJob, Image.Image]]) -> None:
        """Segment ``batch`` and queue its writes; out of memory, the two halves one after the
        other (and every later batch at most that size); one image that does not fit alone is
        skipped."""
        predictions = self._predict([picture for _, picture in batch])
        if predictions is None and len(batch) == 1:
            job, picture = batch[0]
            self.skip(job, f"out of memory even alone ({picture.width}x{picture.height} pixels)")
        elif predictions is None:
            if not self.warned_memory:
                log.warning("out of memory at batch %d: splitting batches in two", len(batch))
                self.warned_memory = True
            half = len(batch) // 2
            self.batch_size = min(self.batch_size, half)
            self.run_batch(batch[:half])
            self.run_batch(batch[half:])
        else:
            for (job, _), prediction in zip(batch, predictions, strict=True):
                paths = output_paths(self.out_dir, job)
                future = self.writer.submit(_write_results, prediction, paths, self.opacity)
                self.writes.append((job, future))
            self.collect(block=False)

    def _predict(self, pictures: list[Image.Image]) -> list | None:
        """The predictions of ``pictures``, or ``None`` when the device ran out of memory (the
        error, and the memory its traceback holds, is gone when this returns)."""
        try:
            return self.segmenter.predict_batch(pictures, **self.options)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
        return None

    def collect(self, block: bool) -> None:
        """Count the writes that have ended, in order (all of them when ``block``)."""
        while self.writes and (block or self.writes[0][1].done()):
            job, future = self.writes.popleft()
            try:
                future.result()
            except OSError as error:
                if isinstance(error, WriteError) and error.errno in _OUTPUT_FULL_OR_CLOSED:
                    raise self._stop(error) from error
                self.skip(job, f"cannot write results: {_one_line(error)}")
                continue
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                self.skip(job, "out of memory while writing its results")
                continue
            self.summary.written.append(job.path)
            self.bar.update(1)

    def _stop(self, error: WriteError) -> WriteError:
        """No more results can be written: drop the queued writes, let those under way end,
        and say how far the run got."""
        for _, future in self.writes:
            future.cancel()
        for job, future in self.writes:
            if not future.cancelled() and future.exception() is None:
                self.summary.written.append(job.path)
        self.writes.clear()
        space = error.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = "free some space" if space else "choose an output folder you can write to"
        done = f"{len(self.summary.written)} of {self.bar.total}"
        return error.with_advice(
            f"the run stopped with the results of {done} images written, each file whole; "
            f"{fix} and run again"
        )


@contextlib.contextmanager
def torchrun_group(device: str | None = None) -> Iterator[tuple[int, int, str | None]]:
    """``(rank, world, device)`` of this process. Under ``torchrun`` (``WORLD_SIZE`` > 1) the
    process group is joined (NCCL for CUDA, gloo otherwise; left on the way out if opened here)
    and a CUDA device (``--device cuda``, or none given on a machine with CUDA) is this process's
    GPU, ``cuda:LOCAL_RANK``. Outside torchrun: ``(0, 1, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not dist.is_initialized():
        yield 0, 1, device
        return
    wants_cuda = device in (None, "cuda") and torch.cuda.is_available()
    if wants_cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    opened = not dist.is_initialized()
    if opened:
        dist.init_process_group("nccl" if wants_cuda else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        if opened and dist.is_initialized():
            dist.destroy_process_group()


def share_jobs(jobs: Sequence[ImageJob], rank: int, world: int) -> list[ImageJob]:
    """The jobs of process ``rank`` of ``world``: round robin over the output paths, so jobs
    whose results would land on the same files meet in one process (which skips the later)."""
    owner: dict[Path, int] = {}
    for job in jobs:
        owner.setdefault(job.output_stem, len(owner) % world)
    return [job for job in jobs if owner[job.output_stem] == rank]


def _merged(summary: PredictSummary, world: int) -> PredictSummary:
    """Every process's summary in one (written and skipped of all, the longest time)."""
    if world == 1:
        return summary
    parts: list[PredictSummary | None] = [None] * world
    dist.all_gather_object(parts, summary)
    return PredictSummary(
        written=[path for part in parts for path in part.written],
        skipped=[item for part in parts for item in part.skipped],
        seconds=max(part.seconds for part in parts),
    )


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
    rank: int = 0,
    world: int = 1,
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
        rank, world: this process's share of ``jobs`` (:func:`share_jobs`) under
            torch.distributed; every process returns the merged summary.

    Returns:
        a :class:`PredictSummary` (also logged).

    Raises:
        WriteError: the output folder is full or cannot be written; the run stops there, the
            results written until then are whole, and the message says how many there are.
    """
    batch_size = default_batch_size(segmenter.device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    jobs = share_jobs(jobs, rank, world)
    options = {"num_iterations": num_iterations, "aug_test": aug_test, "mode": mode}
    with (
        _thread_pool(workers, "emanet-load") as loader,
        _thread_pool(workers, "emanet-write") as writer,
        logging_redirect_tqdm(),
        tqdm(total=len(jobs), desc="predict", unit="image", disable=not progress or rank) as bar,
    ):
        run = _Run(segmenter, Path(out_dir), batch_size, options, opacity, bar, writer)
        for job, load in _prefetch(jobs, loader, lookahead=2 * batch_size + workers):
            run.take(job, load)
        run.finish()
    run.summary.seconds = time.perf_counter() - start
    summary = _merged(run.summary, world)
    if rank == 0:
        log.info("%s%s", summary.format(out_dir), f" ({world} processes)" if world > 1 else "")
    return summary
