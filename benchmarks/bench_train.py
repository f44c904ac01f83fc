"""Training throughput as `emanet train` runs it, and whether its loader keeps up.

Builds everything with the trainer's own functions (emanet.training: build_training_model,
build_loaders, wrap_for_training, train_step), on a toy city (generated into a temporary folder
unless --data is given), and measures in one run:

    loader   images/s of the trainer's DataLoader alone (decode, windowed resize, crop, flip,
             colour parameters per sample)
    step     images/s of train_step on ready batches (colours + normalisation on the device,
             forward, backward, SGD step)
    train    images/s of the two together, as the training loop runs them

and prints loader/step (images/s): above 1 the loader keeps up (with that many workers).
Usage: python benchmarks/bench_train.py [--data ROOT] [--batch-size 8] [--workers 1]
       [--device cpu] [--precision fp32] [--compile]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from emanet.data.toycity import generate_toycity
from emanet.models.presets import get_preset
from emanet.training.config import TrainConfig
from emanet.training.data import build_loaders
from emanet.training.loop import (
    build_optimizer,
    build_training_model,
    train_step,
    wrap_for_training,
)
from emanet.training.run import setup_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--preset", default="emanet_r18-d8_toycity")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=(128, 256))
    parser.add_argument("--scale", type=int, nargs=2, default=(512, 256))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"))
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or generate_toycity(tmp, train=24, val=0, size=(256, 512), seed=0)
        config = TrainConfig(
            preset=args.preset,
            data_root=str(root),
            work_dir=tmp,
            batch_size=args.batch_size,
            crop_size=tuple(args.crop),
            train_scale=tuple(args.scale),
            num_workers=args.workers,
            pretrained="none",
            device=args.device,
            precision=args.precision,
            compile=args.compile,
        )
        preset = get_preset(config.preset)
        run = setup_run(config)
        model = build_training_model(config, preset, run, resuming=False)
        net = wrap_for_training(model, config, run).train()
        optimizer = build_optimizer(model, config, run)
        loader, transform, _ = build_loaders(config, preset, run)
        batches = iter(loader)

        def sync():
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)

        def step(batch, iteration=0):
            train_step(net, optimizer, transform, batch, iteration, config, run)

        step(next(batches))  # start-up costs (workers, allocator, compilation) out of the way
        start = time.perf_counter()
        ready = [next(batches) for _ in range(args.steps)]
        t_loader = time.perf_counter() - start
        sync()
        start = time.perf_counter()
        for batch in ready:
            step(batch)
        sync()
        t_step = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            step(next(batches))
        sync()
        t_train = time.perf_counter() - start
    n = args.steps * args.batch_size
    print(
        f"{args.preset} on {run.device} ({run.precision}{', compiled' if args.compile else ''}), "
        f"batch {args.batch_size}, crop {args.crop[0]}x{args.crop[1]}, "
        f"{loader.num_workers} loader worker(s), {torch.get_num_threads()} threads"
    )
    print(f"loader  {n / t_loader:7.2f} images/s")
    print(f"step    {n / t_step:7.2f} images/s  ({t_step / args.steps * 1e3:.1f} ms per step)")
    print(f"train   {n / t_train:7.2f} images/s")
    print(f"loader/step ratio {t_step / t_loader:.2f}  (>= 1: loading keeps up)")


if __name__ == "__main__":
    main()
