"""Peak tensor memory of one training step, on any device (a CPU too).

Runs the trainer's ``train_step`` (bench_gpu.training_step: the card's crop, batch 2, SGD with
momentum, steady state) under a dispatch mode that follows every tensor storage from its
creation to its release, and reports the peak of the live bytes: parameters, momentum, batch,
everything stored for backward and every temporary. That is what ``torch.cuda.
max_memory_allocated`` counts on a GPU, less what cuBLAS/cuDNN take for their workspaces and the
allocator's rounding. Rows: fp32 and bf16, with the BatchNorm->ReLU outputs recomputed
(emanet.fast.recompute, the eager trainer's default) and stored, in the trainer's channels_last
layout
(--no-channels-last: NCHW; on a CPU both count the same, to the megabyte).

Calibration (R-50-D8 512x1024, commit e10e841): this counted 3.06 GB (bf16) and 5.23 GB (fp32)
where bench_gpu measured 3.28 and 5.56 GB on an H200, so a GPU adds about 0.2-0.35 GB.

Usage: python benchmarks/bench_train_memory.py [--preset NAME] [--precision bf16 fp32]
       [--batch-size 2] [--device cpu] [--no-channels-last]
"""

from __future__ import annotations

import argparse
import time
import weakref

import torch
from bench_gpu import training_step
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from emanet.models.presets import PRESETS


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive (those created under it, and those given to
    :meth:`track`), and their peak, with the operator that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self._alive: dict[int, weakref.ref] = {}
        self.current = self.peak = 0
        self.peak_op = ""

    def track(self, *tensors: torch.Tensor) -> None:
        for tensor in tensors:
            self._count(tensor, "")

    def _count(self, tensor: torch.Tensor, op: str) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)  # a storage keeps its Python object while it lives
        if key in self._alive:
            return
        size = storage.nbytes()

        def released(_, key=key, size=size):
            self._alive.pop(key, None)
            self.current -= size

        self._alive[key] = weakref.ref(storage, released)
        self.current += size
        if self.current > self.peak:
            self.peak, self.peak_op = self.current, op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._count(value, str(func.overloadpacket.__name__))
        return out


def peak_of_a_step(
    preset: str,
    precision: str,
    recompute: bool,
    batch_size: int,
    device,
    channels_last: bool = True,
):
    """(peak GB, persistent GB, operator at the peak) of the second step of a fresh run."""
    step = training_step(
        preset,
        device,
        precision,
        batch_size=batch_size,
        recompute_norm_relu=recompute,
        channels_last=channels_last,
    )
    step()  # the momentum buffers exist from the first step on
    net, optimizer, _, batch = step.args[:4]  # train_step(net, optimizer, transform, batch, ...)
    counter = LiveTensorBytes()
    counter.track(*net.parameters(), *net.buffers(), *batch)
    for state in optimizer.state.values():
        counter.track(*(v for v in state.values() if isinstance(v, torch.Tensor)))
    persistent = counter.current
    with counter:
        step()
    return counter.peak / 1e9, persistent / 1e9, counter.peak_op


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="emanet_r50-d8_512x1024_80k_cityscapes", choices=PRESETS
    )
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the trainer's default layout (--no-channels-last: NCHW)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"{args.preset}, batch {args.batch_size} at the card's crop, {layout}, on {device}")
    print("| precision | BatchNorm->ReLU outputs | peak GB | of which persistent | at | s |")
    print("|---|---|---|---|---|---|")
    for precision in args.precision:
        for recompute in (True, False):
            started = time.perf_counter()
            peak, persistent, op = peak_of_a_step(
                args.preset, precision, recompute, args.batch_size, device, args.channels_last
            )
            how = "recomputed" if recompute else "stored"
            print(
                f"| {precision} | {how} | {peak:.3f} | {persistent:.3f} | {op} "
                f"| {time.perf_counter() - started:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
