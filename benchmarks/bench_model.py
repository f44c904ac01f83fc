"""Eval-time speed of whole-image inference at 512x1024: plain vs optimised, same labels.

plain:     eager, NCHW, BatchNorm unfolded, under torch.no_grad (how a model is usually run)
optimised: emanet.fast.fusion.optimize_for_inference (BN folded, channels_last) under inference_mode

Prints both times, the speed-up (target >= 1.2) and the share of identical labels.
Usage: python benchmarks/bench_model.py [--preset NAME] [--height 512 --width 1024] [--device cuda]
"""

from __future__ import annotations

import argparse

import torch
from timing import median_time

from emanet import build_model
from emanet.fast.fusion import optimize_for_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="emanet_r18-d8_toycity")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.preset).to(device).eval()
    # Non-trivial BN statistics, so that folding is really exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    fast = optimize_for_inference(model)
    x = torch.randn(1, 3, args.height, args.width, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def plain():
        with torch.no_grad():
            return model.inference(x)

    def optimised():
        with torch.inference_mode():
            return fast.inference(x_cl)

    t_plain = median_time(plain, device, args.repeat)
    t_fast = median_time(optimised, device, args.repeat)
    same = (plain().argmax(1) == optimised().argmax(1)).float().mean().item()
    print(
        f"{args.preset} on {device} ({torch.get_num_threads()} threads), "
        f"input {args.height}x{args.width}"
    )
    print(f"plain      {t_plain * 1e3:8.1f} ms")
    print(f"optimised  {t_fast * 1e3:8.1f} ms")
    print(f"speed-up   {t_plain / t_fast:8.2f}x  (target >= 1.20)")
    print(f"same labels {same * 100:.3f}% of pixels")


if __name__ == "__main__":
    main()
