"""CPU inference: torch plain and fast against onnxruntime fp32 and int8, interleaved; labels.

For each model -- a random-weight R-50-D8 at 512x1024 (whole) and the bundled model at its test
size (256x512) -- four ways to run one forward pass on one image:

torch plain  the model as built: NCHW, BatchNorm unfolded, under torch.no_grad
torch fast   emanet.fast.fusion.optimize_for_inference (BN folded, channels_last), inference_mode
             (what Segmenter(backend="torch") runs)
ort fp32     Segmenter(backend="onnxruntime"): the cached ONNX graph run by onnxruntime
ort int8     the same graph statically quantised (QDQ, per-channel weights; calibrated on
             toy-city scenes)

Each round calls every path once, in turn, so load from other processes falls on all of them;
the median over the rounds is printed with its ratio to torch fast and torch plain, and the
share of labels equal to torch plain's (the bundled model on an unseen toy-city scene; R-50's
random weights on random input make near-ties, so there the share of int8 says little). The
ONNX files are exported on the first run into the cache ($EMANET_CACHE, else beside
torch.hub's) and reused afterwards.

Targets (issue 25): R-50 ort fp32 <= 0.75x torch fast, int8 <= 0.3x; bundled ort fp32 <= 0.6x
torch fast, int8 <= 0.4x.
Usage: python benchmarks/bench_model.py [--models r50 bundled] [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from emanet import Segmenter, build_model
from emanet.data.toycity import render_scene
from emanet.fast.fusion import optimize_for_inference
from emanet.predict.int8 import toycity_calibration

R50 = "emanet_r50-d8_512x1024_80k_cityscapes"


def paths(name: str) -> tuple[dict, torch.Tensor]:
    """``{path: fn() -> logits}`` for one model, and its input ``(1, 3, H, W)``."""
    if name == "r50":
        torch.manual_seed(0)
        # Random weights; the test scale (1024, 512) makes 512x1024 inputs.
        options = dict(test_scale=(1024, 512))
        model = build_model(R50).eval()
        x = torch.randn(1, 3, 512, 1024)
    else:
        # A toy-city scene none of the paths has seen (int8 is calibrated on others).
        options = {}
        segmenter = Segmenter.from_pretrained(device="cpu", fast=False)
        model = segmenter.model
        scene = render_scene(256, 512, np.random.default_rng([99, 0]))[0]
        x = segmenter.preprocess(Image.fromarray(scene))
    fast = optimize_for_inference(model)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    if name == "r50":
        calibrate = dict(calibration=toycity_calibration())
        ort32 = Segmenter(model, backend="onnxruntime", **options)
        ort8 = Segmenter(model, backend="onnxruntime", precision="int8", **options, **calibrate)
    else:
        ort32 = Segmenter.from_pretrained(backend="onnxruntime")
        ort8 = Segmenter.from_pretrained(backend="onnxruntime", precision="int8")

    def plain():
        with torch.no_grad():
            return model.inference(x)

    def optimised():
        with torch.inference_mode():
            return fast.inference(x_cl)

    return {
        "torch plain": plain,
        "torch fast": optimised,
        "ort fp32": lambda: ort32.infer(x),
        "ort int8": lambda: ort8.infer(x),
    }, x


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function over ``rounds`` rounds that call each once in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(values)) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r50", "bundled"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        fns, x = paths(name)
        labels = {key: fn().argmax(1) for key, fn in fns.items()}  # also the first (export) runs
        medians = interleaved(fns, args.rounds)
        fast, plain = medians["torch fast"], medians["torch plain"]
        print(f"\n{name}: input {x.shape[2]}x{x.shape[3]}, {args.threads} threads, cpu")
        print(f"{'path':12s} {'ms':>8s} {'vs fast':>8s} {'vs plain':>9s} {'same labels':>12s}")
        for key, seconds in medians.items():
            same = (labels[key] == labels["torch plain"]).float().mean().item()
            print(
                f"{key:12s} {seconds * 1e3:8.1f} {seconds / fast:7.2f}x {seconds / plain:8.2f}x "
                f"{same * 100:11.2f}%"
            )


if __name__ == "__main__":
    main()
