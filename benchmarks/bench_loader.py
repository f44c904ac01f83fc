"""Training-loader throughput per worker on Cityscapes-size (2048x1024) PNGs.

Runs the trainer's own loader (emanet.training.data.build_loaders: imagecodecs PNG decoding where
it is
installed, else torchvision.io; the random resize by torchvision's uint8 kernel, crop with
cat_max_ratio, flip, colour parameters drawn per sample)
at the official R-50-D8 settings (crop 512x1024, random rescale 0.5-2.0 of 2048x1024) on
synthetic street scenes written as 2048x1024 PNGs (emanet.data.toycity; PNGs of ~3 MB, like
Cityscapes' ~2.5 MB). Prints

    per worker (CPU time)  1 / the CPU seconds one sample costs in a worker's process (one
                           thread, as in a DataLoader worker): what a worker delivers on a core
                           of its own, whatever else runs on the machine; with imagecodecs and,
                           in the same run, with torchvision.io decoding (the lever's baseline)
    N workers (wall)       images/s of the DataLoader with N workers, and that / N

and the device half (photometric distortion + normalisation of a batch, TrainTransform.finish)
per image on the chosen device.

Usage: python benchmarks/bench_loader.py [--data ROOT] [--images 8] [--workers 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
from timing import median_time

from emanet.data.toycity import generate_toycity
from emanet.io import images
from emanet.models.presets import get_preset
from emanet.runtime.device import resolve_device
from emanet.training.config import TrainConfig
from emanet.training.data import build_loaders
from emanet.training.run import Run

PRESET = "emanet_r50-d8_512x1024_80k_cityscapes"


def synthetic_city(root: str | Path, images: int = 8) -> Path:
    """``images`` 2048x1024 toy-city scenes in Cityscapes' layout under ``root`` (reused)."""
    root = Path(root)
    if not any(root.glob("leftImg8bit/train/*/*.png")):
        generate_toycity(root, train=images, val=0, size=(1024, 2048), seed=0)
    return root


def loader_for(root: Path, workers: int, batch_size: int = 2, device: str = "cpu"):
    """The trainer's loader and transform at the R-50 512x1024 settings."""
    config = TrainConfig(
        preset=PRESET,
        data_root=str(root),
        work_dir="",
        batch_size=batch_size,
        num_workers=workers,
    )
    run = Run(rank=0, world=1, device=torch.device(device), precision="fp32")
    loader, transform, _ = build_loaders(config, get_preset(PRESET), run)
    # The loader as it feeds a GPU: uint8 crops, colours and normalisation left to the device.
    loader.dataset.finish = False
    return loader, transform


@contextlib.contextmanager
def png_decoder(fast: bool):
    """The loader's PNG decoding with imagecodecs (``fast``, where installed) or without it."""
    saved = images.imagecodecs
    if not fast:
        images.imagecodecs = None  # what a machine without imagecodecs runs
    try:
        yield saved is not None and fast
    finally:
        images.imagecodecs = saved


def cpu_seconds_per_sample(root: Path, samples: int = 16, fast_png: bool = True) -> float:
    """CPU time of one sample in a worker's configuration (one torch thread, this process)."""
    loader, _ = loader_for(root, workers=0)
    dataset, sampler = loader.dataset, iter(loader.sampler)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what DataLoader sets in every worker
    try:
        with png_decoder(fast_png):
            dataset[next(sampler)]  # warm-up: imports, allocator
            start = time.thread_time()
            for _ in range(samples):
                dataset[next(sampler)]
            return (time.thread_time() - start) / samples
    finally:
        torch.set_num_threads(threads)


def loader_images_per_second(root: Path, workers: int, batches: int = 12, batch_size: int = 2):
    """Wall-clock images/s of the DataLoader with ``workers`` workers (after its start-up)."""
    loader, _ = loader_for(root, workers, batch_size)
    batches_iter = iter(loader)
    for _ in range(max(2, workers)):  # the workers' first batches include their start-up
        next(batches_iter)
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    return batches * batch_size / (time.perf_counter() - start)


def finish_seconds_per_image(root: Path, device: torch.device, batch_size: int = 8) -> float:
    """Device time of TrainTransform.finish (colours + normalisation) per image of a batch."""
    loader, transform = loader_for(root, workers=0, batch_size=batch_size)
    images, _, params = (t.to(device) for t in next(iter(loader)))
    return median_time(lambda: transform.finish(images, params), device, repeat=5) / batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder for the synthetic PNGs (kept; default: temporary)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic_city(args.data or tmp, args.images)
        per_sample = cpu_seconds_per_sample(root)
        baseline = cpu_seconds_per_sample(root, fast_png=False)
        wall = loader_images_per_second(root, args.workers)
        finish = finish_seconds_per_image(root, device)
    print(f"loader of {PRESET} (crop 512x1024) on 2048x1024 PNGs")
    with png_decoder(True) as fast:
        decoder = "imagecodecs" if fast else "torchvision.io (imagecodecs is not installed)"
    print(f"per worker (CPU time)  {1 / per_sample:6.1f} images/s ({per_sample * 1e3:.1f} ms each)")
    print(f"  PNG decoder          {decoder}")
    print(f"  torchvision.io       {1 / baseline:6.1f} images/s ({baseline * 1e3:.1f} ms each)")
    per_worker = wall / args.workers
    print(f"{args.workers} workers (wall)  {wall:6.1f} images/s ({per_worker:.1f} per worker)")
    print(f"finish on {device}  {finish * 1e3:6.2f} ms per image (colours + normalisation)")


if __name__ == "__main__":
    main()
