"""The one timing rule every benchmark here uses: warm up, then time each call on its own."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def wall_times(
    fn: Callable[[], object],
    repeat: int,
    warmup: int = 3,
    device: torch.device | None = None,
) -> list[float]:
    """Wall time of each of ``repeat`` calls of ``fn()`` in seconds, after ``warmup`` calls.

    On a CUDA ``device`` the work is synchronised before and after each call, so the time
    covers the kernels.
    """
    cuda = device is not None and device.type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 3):
    """Median of :func:`wall_times`, in seconds."""
    times = sorted(wall_times(fn, repeat, warmup, device))
    return times[len(times) // 2]
