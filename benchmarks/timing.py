"""The one timing rule every benchmark here uses: warm up, then the median of timed calls."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def median_time(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 3):
    """Median wall time of ``fn()`` in seconds over ``repeat`` calls after ``warmup`` calls.

    CUDA work is synchronised before and after each call, so the time covers the kernels.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
