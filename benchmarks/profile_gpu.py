"""Where the GPU time (and memory) goes: the CUDA kernels of ``Segmenter.infer`` on a 2048x1024
image, heaviest first (torch.profiler), for one preset and precision; with ``--train``, those of
the trainer's ``train_step`` (batch 2 at the preset's crop), and the operators whose outputs take
the most GPU memory (what a smaller training peak would have to cut).

Usage: python benchmarks/profile_gpu.py [--preset NAME] [--precision bf16] [--rows 15] [--train]
       [--channels-last] [--device cuda]   (--device cpu: the same tables for the CPU)
"""

from __future__ import annotations

import argparse
import sys

import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from emanet import build_model
from emanet.data.transforms import TrainTransform
from emanet.predict import Segmenter
from emanet.presets import PRESETS, get_preset
from emanet.train import Run, TrainConfig, build_training_model, train_step, wrap_for_training


def inference_step(preset: str, precision: str, device: torch.device):
    """One ``Segmenter.infer`` of a random 2048x1024 image, as bench_gpu.py times it."""
    segmenter = Segmenter(build_model(preset).eval(), device=device, precision=precision)
    image = torch.randint(0, 256, (1024, 2048, 3), dtype=torch.uint8).numpy()
    x = segmenter.preprocess(Image.fromarray(image))
    return lambda: segmenter.infer(x)


def training_step(preset_name: str, precision: str, channels_last: bool, device: torch.device):
    """One ``train_step`` at batch 2 on Cityscapes-size samples, as bench_gpu.py times it."""
    preset = get_preset(preset_name)
    config = TrainConfig(
        preset=preset_name,
        data_root="",
        work_dir="",
        batch_size=2,
        precision=precision,
        pretrained="none",
        channels_last=channels_last,
    )
    run = Run(rank=0, world=1, device=device, precision=precision)
    model = build_training_model(config, preset, run, resuming=False)
    net = wrap_for_training(model, config, run).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    transform = TrainTransform(crop_size=preset.crop_size, scale=preset.train_scale)
    samples = []
    for seed in range(2):
        torch.manual_seed(seed)
        image = torch.randint(0, 256, (3, 1024, 2048), dtype=torch.uint8)
        label = torch.randint(0, 19, (1024, 2048), dtype=torch.uint8)
        samples.append(transform.sample(image, label))
    batch = tuple(torch.stack(parts) for parts in zip(*samples, strict=True))
    return lambda: train_step(net, optimizer, transform, batch, 0, config, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="emanet_r50-d8_512x1024_80k_cityscapes", choices=PRESETS
    )
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--train", action="store_true", help="profile a training step")
    parser.add_argument("--channels-last", action="store_true", help="(training) channels_last")
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
        step = training_step(args.preset, args.precision, args.channels_last, device)
    else:
        step = inference_step(args.preset, args.precision, device)

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
    layout = " channels_last" if args.channels_last else ""
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
