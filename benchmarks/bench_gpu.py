"""The four official models on one CUDA GPU, beside the model card (4x V100).

For each official preset:

* inference at its test setting (a 2048x1024 image: whole for 512x1024, slide 769x769 windows
  for the 769 presets, test scale 2049x1025), batch 1, through ``Segmenter.infer`` (BatchNorm
  folded, channels_last) in fp32, bf16 and fp16 autocast, and bf16 compiled: ms per image, fps
  and peak memory; for R-50 and R-101 also bf16 with every 1x1 convolution through cuDNN (the
  baseline of emanet.fast.fusion.PointwiseConv, which bf16/fp16 segmenters use on CUDA);
* training at the card's crop, batch 2, through the trainer's own ``train_step`` (colours and
  normalisation on the GPU, forward, backward, SGD) in fp32 and bf16, eager and compiled:
  ms per iteration and peak memory, channels_last as the trainer's default; for the first
  preset also fp32 and bf16 storing the BatchNorm->ReLU outputs (the baseline of
  emanet.fast.recompute, which eager training uses), bf16 NCHW (the baseline of the channels_last
  default), and bf16 at batch 8 (the one-GPU recipe: 8 images per BatchNorm, as the card's 4x2);

then the trainer's loader on 2048x1024 PNGs: images/s per worker (see bench_loader.py). One table;
each row also shows the TFLOP/s it achieves on the FLOPs emanet.deploy.flops counts (model_cost,
training_flops), and the card's fps and training memory (V100, fp32) sit beside the rows they
compare with.

A configuration that fails prints its error in the table and the run goes on; configurations
left when --budget seconds are spent are listed as skipped. Compiling costs most of the time:
by default the training step is compiled for the first preset only (--compile-all for all).
Usage: python benchmarks/bench_gpu.py [--presets NAME ...] [--budget 330] [--no-compile]
       [--workers 4] [--warmup 3] [--iters 10]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from bench_loader import (
    cpu_seconds_per_sample,
    loader_images_per_second,
    png_decoder,
    synthetic_city,
)
from PIL import Image

from emanet import build_model
from emanet.data.transforms import TrainTransform
from emanet.deploy.flops import model_cost, training_flops
from emanet.fast.fusion import optimize_for_inference
from emanet.models.presets import get_preset
from emanet.predict import Segmenter
from emanet.runtime.device import resolve_device
from emanet.runtime.precision import PRECISIONS
from emanet.training.config import TrainConfig
from emanet.training.loop import (
    build_optimizer,
    build_training_model,
    train_step,
    wrap_for_training,
)
from emanet.training.run import Run

#: The model card (mmsegmentation, 4x V100, fp32): training memory per GPU (GB), inference fps.
CARD = {
    "emanet_r50-d8_512x1024_80k_cityscapes": (5.4, 4.58),
    "emanet_r101-d8_512x1024_80k_cityscapes": (6.2, 2.87),
    "emanet_r50-d8_769x769_80k_cityscapes": (8.9, 1.97),
    "emanet_r101-d8_769x769_80k_cityscapes": (10.1, 1.22),
}


@dataclass
class Row:
    preset: str
    task: str  # "infer" or "train"
    setting: str  # "fp32", "bf16 compiled", ...
    ms: float | None = None
    peak_gb: float | None = None
    flops: int | None = None  # counted FLOPs of one image / iteration (emanet.deploy.flops)
    note: str = ""


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median ms of ``iters`` calls after ``warmup`` (synchronised); the peak memory is the
    steady state's: cuDNN's benchmark mode tries algorithms with workspaces as large as the free
    memory during the first calls, which says nothing about what a run needs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def measure(row: Row, device: torch.device, work: Callable[[], float]) -> Row:
    """Fill ``row`` from ``work()`` (ms); an error becomes the row's note, never the run's end."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    torch._dynamo.reset()  # every compiled configuration starts from an empty cache
    try:
        row.ms = work()
        row.peak_gb = torch.cuda.max_memory_allocated(device) / 1e9
    except Exception as error:  # a failing configuration is a table entry
        row.note = f"error: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
    finally:
        torch.cuda.empty_cache()
    return row


def inference_step(
    preset: str, device, precision: str, compiled: bool = False, pointwise: bool = True
) -> Callable[[], object]:
    """One ``Segmenter.infer`` of a random 2048x1024 image at the preset's test setting."""
    torch.manual_seed(0)
    segmenter = Segmenter(
        build_model(preset).eval(), device=device, precision=precision, compile=compiled
    )
    if not pointwise:  # the lever's baseline: every 1x1 convolution through cuDNN
        half = PRECISIONS[precision] if precision != "fp32" else None
        segmenter._net = optimize_for_inference(segmenter.model, autocast_dtype=half)
    image = torch.randint(0, 256, (1024, 2048, 3), dtype=torch.uint8).numpy()
    x = segmenter.preprocess(Image.fromarray(image))  # the test scale of the preset
    return lambda: segmenter.infer(x)


def training_step(
    preset_name: str,
    device,
    precision: str,
    compiled: bool = False,
    channels_last: bool = True,
    batch_size: int = 2,
    recompute_norm_relu: bool = True,
) -> partial:
    """One iteration of the trainer's ``train_step`` at the card's crop on Cityscapes-size
    samples drawn as the loader draws them (SGD with momentum, as the recipe)."""
    preset = get_preset(preset_name)
    config = TrainConfig(
        preset=preset_name,
        data_root="",
        work_dir="",
        batch_size=batch_size,
        precision=precision,
        compile=compiled,
        pretrained="none",
        channels_last=channels_last,
        recompute_norm_relu=recompute_norm_relu,
    )
    run = Run(rank=0, world=1, device=device, precision=precision)
    model = build_training_model(config, preset, run, resuming=False)
    net = wrap_for_training(model, config, run).train()
    optimizer = build_optimizer(model, config, run)
    transform = TrainTransform(crop_size=preset.crop_size, scale=preset.train_scale)
    samples = []
    for seed in range(batch_size):
        torch.manual_seed(seed)
        image = torch.randint(0, 256, (3, 1024, 2048), dtype=torch.uint8)
        label = torch.randint(0, 19, (1024, 2048), dtype=torch.uint8)
        samples.append(transform.sample(image, label))
    batch = tuple(torch.stack(parts) for parts in zip(*samples, strict=True))
    if device.type == "cuda":
        batch = tuple(part.pin_memory() for part in batch)  # as the loader delivers it
    # A partial, so that callers can reach its parts (bench_train_memory counts their bytes).
    return partial(train_step, net, optimizer, transform, batch, 0, config, run)


def inference(preset: str, device, precision: str, compiled: bool, warmup: int, iters: int, **kw):
    step = inference_step(preset, device, precision, compiled, **kw)
    return timed(step, device, warmup + 2 * compiled, iters)


def training(preset: str, device, precision: str, compiled: bool, warmup: int, iters: int, **kw):
    step = training_step(preset, device, precision, compiled, **kw)
    return timed(step, device, warmup + 2 * compiled, iters)


def loader_row(workers: int) -> tuple[Row, float | None]:
    """The loader's row, and its images/s per worker (wall clock; ``None`` if it failed)."""
    row, per_worker = Row("loader", "load", f"{workers} workers"), None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = synthetic_city(tmp, images=max(8, 2 * workers))
            per_worker_cpu = 1 / cpu_seconds_per_sample(root)
            baseline_cpu = 1 / cpu_seconds_per_sample(root, fast_png=False)
            # 8 batches a worker after the warm-up: the first ones come from batches the
            # workers prefetched during it, so a short window flatters the wall clock.
            wall = loader_images_per_second(root, workers, batches=8 * workers)
        with png_decoder(True) as fast:
            decoder = "imagecodecs" if fast else "torchvision.io"
        row.note = (
            f"{wall:.1f} img/s = {wall / workers:.1f} per worker "
            f"(CPU time: {per_worker_cpu:.1f} img/s per worker with {decoder}, "
            f"{baseline_cpu:.1f} with torchvision.io)"
        )
        per_worker = wall / workers
    except Exception as error:
        row.note = f"error: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
    return row, per_worker


@dataclass(frozen=True)
class Job:
    """One configuration to measure."""

    preset: str
    task: str
    precision: str
    compiled: bool = False
    channels_last: bool = True  # training: the trainer's default
    batch: int = 2
    pointwise: bool = True  # inference: 1x1 convolutions as products (Segmenter's default)
    recompute: bool = True  # training: BatchNorm->ReLU outputs recomputed (the eager default)

    @property
    def setting(self) -> str:
        words = [self.precision]
        if not self.channels_last:
            words.append("NCHW")
        if self.batch != 2:
            words.append(f"batch {self.batch}")
        if not self.pointwise:
            words.append("1x1 as convs")
        if not self.recompute and not self.compiled:
            words.append("norm-relu stored")
        if self.compiled:
            words.append("compiled")
        return " ".join(words)


def plan(presets: list[str], compile_all: bool = False, no_compile: bool = False) -> list[Job]:
    """The configurations in the order they are measured: every eager row first, then the
    compiled ones (R-50's bf16 inference and training, the targets, first): what the budget cuts
    is the slowest to measure. The first preset alone also trains NCHW (the baseline of the
    trainer's channels_last default) and at batch 8 (the one-GPU recipe)."""
    eager, compiled, compiled_later = [], [], []
    for index, name in enumerate(presets):
        first = index == 0
        for precision in ("fp32", "bf16", "fp16"):
            eager.append(Job(name, "infer", precision))
        if index < 2:  # the lever of emanet.fast.fusion.PointwiseConv, its baseline
            eager.append(Job(name, "infer", "bf16", pointwise=False))
        (compiled if first else compiled_later).append(Job(name, "infer", "bf16", compiled=True))
        for precision in ("bf16", "fp32"):
            eager.append(Job(name, "train", precision))
            if compile_all or first:
                later = not first or precision == "fp32"
                job = Job(name, "train", precision, compiled=True)
                (compiled_later if later else compiled).append(job)
        if first:  # the baseline of emanet.fast.recompute.RecomputeNormReLU
            eager.append(Job(name, "train", "bf16", recompute=False))
            eager.append(Job(name, "train", "fp32", recompute=False))
            eager.append(Job(name, "train", "bf16", channels_last=False))
            eager.append(Job(name, "train", "bf16", batch=8))
            compiled.append(Job(name, "train", "bf16", compiled=True, batch=8))
    return eager + ([] if no_compile else compiled + compiled_later)


@functools.cache
def counted_flops(preset: str, task: str, batch: int) -> int:
    """FLOPs of one image at the preset's test setting (``task`` "infer"), or of one training
    iteration at ``batch``, counted on the meta device (emanet.deploy.flops; any precision)."""
    if task == "infer":
        return model_cost(preset).flops
    return training_flops(preset, batch_size=batch)


def table(rows: list[Row]) -> str:
    lines = [
        "| preset | task | setting | ms | fps | TFLOP/s | peak GB | card fps (V100) | card mem GB "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        card_mem, card_fps = CARD.get(r.preset, (None, None))
        fps = f"{1e3 / r.ms:.2f}" if r.ms and r.task == "infer" else ""
        rate = f"{r.flops / r.ms / 1e9:.0f}" if r.ms and r.flops else ""
        lines.append(
            "| "
            + " | ".join(
                [
                    r.preset.replace("_80k_cityscapes", ""),
                    r.task,
                    r.setting,
                    f"{r.ms:.1f}" if r.ms is not None else "",
                    fps,
                    rate,
                    f"{r.peak_gb:.2f}" if r.peak_gb is not None else "",
                    f"{card_fps}" if r.task == "infer" and card_fps else "",
                    f"{card_mem}" if r.task == "train" and card_mem else "",
                    r.note,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(CARD), choices=list(CARD))
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for the models")
    parser.add_argument("--no-compile", action="store_true", help="skip compiled rows")
    parser.add_argument("--compile-all", action="store_true", help="compile every training row")
    parser.add_argument("--workers", type=int, default=4, help="loader workers to time")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--plan", action="store_true", help="list the configurations and stop")
    args = parser.parse_args()
    jobs = plan(args.presets, compile_all=args.compile_all, no_compile=args.no_compile)
    if args.plan:
        for job in jobs:
            print(f"{job.preset} {job.task} {job.setting}")
        return
    if not torch.cuda.is_available():
        sys.exit(
            "bench_gpu.py measures CUDA GPUs and this PyTorch sees none "
            "(torch.cuda.is_available() is False). On a CPU, use bench_model.py, "
            "bench_train.py and bench_loader.py."
        )
    device = resolve_device("cuda")
    torch.backends.cudnn.benchmark = True  # as the trainer sets it
    started = time.perf_counter()
    rows = []
    for job in jobs:
        row = Row(
            job.preset, job.task, job.setting, flops=counted_flops(job.preset, job.task, job.batch)
        )
        rows.append(row)
        if time.perf_counter() - started > args.budget:
            row.note = "skipped (time budget)"
            continue
        if job.task == "infer":
            work = partial(
                inference,
                job.preset,
                device,
                job.precision,
                job.compiled,
                pointwise=job.pointwise,
            )
        else:
            work = partial(
                training,
                job.preset,
                device,
                job.precision,
                job.compiled,
                channels_last=job.channels_last,
                batch_size=job.batch,
                recompute_norm_relu=job.recompute,
            )
        measure(row, device, lambda w=work: w(warmup=args.warmup, iters=args.iters))
        print(
            f"{time.perf_counter() - started:6.0f} s  {job.preset} {job.task} {row.setting}",
            flush=True,
        )
    order = {name: i for i, name in enumerate(args.presets)}
    rows.sort(key=lambda r: (order[r.preset], r.task))  # stable: settings keep their order
    loader, per_worker = loader_row(args.workers)
    rows.append(loader)
    props = torch.cuda.get_device_properties(device)
    print()
    print(
        f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; inference: one 2048x1024 image at the preset's test "
        "setting; training: batch 2 at the card's crop; card: mmsegmentation, V100, fp32"
    )
    print(table(rows))
    # Does the loader keep up with the one-GPU recipe (batch 8)?
    for row in rows:
        if row.task == "train" and "batch 8" in row.setting and row.ms and per_worker:
            needed = 8 / (row.ms / 1e3)
            print(
                f"{row.preset} {row.setting}: {row.ms:.0f} ms a step needs {needed:.0f} "
                f"images/s = {needed / per_worker:.1f} workers at {per_worker:.1f} each; "
                f"80k iterations take {80000 * row.ms / 3.6e6:.1f} h"
            )


if __name__ == "__main__":
    main()
