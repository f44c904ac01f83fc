"""Where one inference's GPU time goes: the CUDA kernels of ``Segmenter.infer`` on a 2048x1024
image, heaviest first (torch.profiler), for one preset and precision.

Usage: python benchmarks/profile_gpu.py [--preset NAME] [--precision bf16] [--rows 15]
"""

from __future__ import annotations

import argparse
import sys

import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from emanet import build_model
from emanet.predict import Segmenter
from emanet.presets import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="emanet_r50-d8_512x1024_80k_cityscapes", choices=PRESETS
    )
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_gpu.py profiles a CUDA GPU and this PyTorch sees none")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    segmenter = Segmenter(build_model(args.preset).eval(), device="cuda", precision=args.precision)
    image = torch.randint(0, 256, (1024, 2048, 3), dtype=torch.uint8).numpy()
    x = segmenter.preprocess(Image.fromarray(image))
    for _ in range(5):
        segmenter.infer(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            segmenter.infer(x)
        torch.cuda.synchronize()
    print(f"{args.preset} {args.precision}, 5 calls")
    print(
        prof.key_averages().table(
            sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=70
        )
    )


if __name__ == "__main__":
    main()
