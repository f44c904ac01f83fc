"""Where the GPU time (and memory) goes: the CUDA kernels of ``Segmenter.infer`` on a 2048x1024
image, heaviest first (torch.profiler), for one preset and precision; with ``--train``, those of
the trainer's ``train_step`` (batch 2 at the preset's crop), and the operators whose outputs take
the most GPU memory (what a smaller training peak would have to cut).

Usage: python benchmarks/profile_gpu.py [--preset NAME] [--precision bf16] [--rows 15] [--train]
       [--no-channels-last] [--device cuda]   (--device cpu: the same tables for the CPU)
"""

from __future__ import annotations

import argparse
import sys

import torch
from bench_gpu import inference_step, training_step
from torch.profiler import ProfilerActivity, profile

from emanet.models.presets import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="emanet_r50-d8_512x1024_80k_cityscapes", choices=PRESETS
    )
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--train", action="store_true", help="profile a training step")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(training) channels_last, the trainer's default (--no-channels-last: NCHW)",
    )
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("profile_gpu.py profiles a CUDA GPU and this PyTorch sees none (--device cpu?)")
    if args.train and args.precision == "fp16":
        sys.exit("training runs in bf16 or fp32")
    on_gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    if args.train:
        step = training_step(args.preset, device, args.precision, channels_last=args.channels_last)
    else:
        step = inference_step(args.preset, device, args.precision)

    def sync():
        if on_gpu:
            torch.cuda.synchronize(device)

    for _ in range(5):
        step()
    sync()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    # Operators (CPU events) are what memory is attributed to; kernels are the GPU's time.
    activities = [ProfilerActivity.CUDA] if on_gpu else []
    if args.train or not on_gpu:
        activities.append(ProfilerActivity.CPU)
    with profile(activities=activities, profile_memory=args.train) as prof:
        for _ in range(5):
            step()
        sync()
    what = "train_step, batch 2" if args.train else "inference"
    layout = "" if args.channels_last else " NCHW"
    print(f"{args.preset} {args.precision}{layout} {what} on {device}, 5 calls")
    if on_gpu:
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB")
    averages = prof.key_averages()
    time_key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    print(averages.table(sort_by=time_key, row_limit=args.rows, max_name_column_width=70))
    if args.train:
        memory_key = "self_device_memory_usage" if on_gpu else "self_cpu_memory_usage"
        print("operators by the memory their outputs take (5 steps)")
        print(averages.table(sort_by=memory_key, row_limit=args.rows, max_name_column_width=50))


if __name__ == "__main__":
    main()
