"""Batch prediction throughput: images/s of Segmenter.predict_batch at batch 1 and batch 8.

Each timed call segments a set of same-size images (default: Cityscapes frames, 1024x2048)
through the whole test pipeline (resize to the preset's test scale, network, logits resized
back, argmax), in batches of the given size; file decoding and PNG writing are left out (they
run in background threads in `emanet predict`). Runs on CPU, and on CUDA when there is one.

Usage: python benchmarks/bench_predict.py [--preset NAME] [--images 16] [--size 1024x2048]
(default: the bundled model; a preset name builds that model with random weights).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import median_time

from emanet import build_model
from emanet.predict import Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", help="random-weight preset (default: the bundled model)")
    parser.add_argument("--images", type=int, default=16, help="images per timed call")
    parser.add_argument("--size", default="1024x2048", help="HxW of the images")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--devices", default="cpu,cuda")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    batch_sizes = [int(v) for v in args.batch_sizes.split(",")]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(args.images)]
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        device = torch.device(name)
        if args.preset:
            torch.manual_seed(0)
            segmenter = Segmenter(build_model(args.preset), device=device)
        else:
            segmenter = Segmenter.from_pretrained(device=device)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(
            f"{segmenter.preset.name} on {where} ({torch.get_num_threads()} threads), "
            f"{args.images} images {height}x{width} -> input "
            f"{tuple(segmenter.predict_batch(images[:1])[0].input_size)}"
        )
        rates = {}
        for batch_size in batch_sizes:

            def run(batch_size=batch_size, segmenter=segmenter):
                for start in range(0, len(images), batch_size):
                    segmenter.predict_batch(images[start : start + batch_size])

            seconds = median_time(run, device, args.repeat, warmup=1)
            rates[batch_size] = len(images) / seconds
            print(f"  batch {batch_size:3d}: {rates[batch_size]:7.2f} images/s")
        first, last = batch_sizes[0], batch_sizes[-1]
        print(f"  batch {last} / batch {first}: {rates[last] / rates[first]:.2f}x")


if __name__ == "__main__":
    main()
