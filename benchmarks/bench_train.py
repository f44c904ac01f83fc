"""Training throughput of the small preset on this machine, and whether data loading keeps up.

Measures, in one run, on a toy city (generated into a temporary folder unless --data is given):

    loader   images/s of the DataLoader alone (decode + the full mmseg train pipeline)
    step     images/s of forward + backward + SGD step on ready tensors
    train    images/s of the two together, as `emanet train` runs them

and prints loader/step: above 1 the loader keeps up (with that many workers).
Usage: python benchmarks/bench_train.py [--data ROOT] [--batch-size 8] [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from emanet import build_model
from emanet.data import CityscapesDataset
from emanet.data.toycity import generate_toycity
from emanet.data.transforms import TrainTransform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--preset", default="emanet_r18-d8_toycity")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=(128, 256))
    parser.add_argument("--scale", type=int, nargs=2, default=(512, 256))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or generate_toycity(tmp, train=24, val=0, size=(256, 512), seed=0)
        dataset = CityscapesDataset(
            root,
            "train",
            transforms=TrainTransform(crop_size=tuple(args.crop), scale=tuple(args.scale)),
        )
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            drop_last=True,
            persistent_workers=False,
        )
        model = build_model(args.preset).train()
        optimizer = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
        )

        def step(images, labels):
            loss = model.forward_train(images, labels)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def batches(n):
            out = []
            while len(out) < n:
                for batch in loader:
                    out.append(batch)
                    if len(out) == n:
                        break
            return out

        batches(1)  # start-up cost out of the way
        start = time.perf_counter()
        ready = batches(args.steps)
        t_loader = time.perf_counter() - start
        step(*ready[0])
        start = time.perf_counter()
        for images, labels in ready:
            step(images, labels)
        t_step = time.perf_counter() - start
        start = time.perf_counter()
        for images, labels in batches(args.steps):
            step(images, labels)
        t_train = time.perf_counter() - start
    n = args.steps * args.batch_size
    print(
        f"{args.preset}, batch {args.batch_size}, crop {args.crop[0]}x{args.crop[1]}, "
        f"{args.workers} loader worker(s), {torch.get_num_threads()} threads"
    )
    print(f"loader  {n / t_loader:7.2f} images/s")
    print(f"step    {n / t_step:7.2f} images/s  ({t_step / args.steps:.2f} s per step)")
    print(f"train   {n / t_train:7.2f} images/s")
    print(f"loader/step ratio {t_step / t_loader:.2f}  (>= 1: loading keeps up)")


if __name__ == "__main__":
    main()
