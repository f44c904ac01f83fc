"""EM attention unit speed against this machine's matmul floor and mmsegmentation's einsum unit.

The unit is (2T + 1) matrix products of 2*B*N*C*K flops each. We time each product shape alone
(the floor), the unit (its default fast implementation, emanet.fast.em), the plain
emanet.models.ema.em_attention, and mmsegmentation's einsum formulation of the same maths, all in
one run, and print ratios:

    floor ratio = floor time / unit time     (target >= 0.90)
    mmseg ratio = unit time / einsum time    (target <= 0.95)

On CUDA it also times the unit with TF32 matmuls (what bf16/fp16 runs use, see
emanet/precision.py; the unit then splits its operands into TF32-exact parts, see emanet/ema.py),
the plain em_attention, whose products are plain unsplit TF32 ones (the lever's baseline),
and compiled with torch.compile, and reports each variant's error relative to a float64 run of
the same maths: max |variant - float64| / max |float64| (target <= 1e-3). The R-50 head at
2048x1024 is ``--batch 2 --height 128 --width 256`` (issue target: <= 1.5 ms).

Usage: python benchmarks/bench_ema.py [--device cuda] [--batch 2 --channels 512 ...]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import median_time

from emanet import EMAttention, EMTrace
from emanet.models.ema import em_attention
from emanet.runtime.precision import tf32_matmuls


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return ((result.double() - reference).abs().max() / reference.abs().max()).item()


def einsum_em(x, bases, steps):
    b, c, h, w = x.shape
    feats = x.view(b, c, h * w)
    mu = bases.repeat(b, 1, 1)
    with torch.no_grad():
        for _ in range(steps):
            z = F.softmax(torch.einsum("bcn,bck->bnk", feats, mu), dim=2)
            z_normed = F.normalize(z, dim=1, p=1)
            mu = F.normalize(torch.einsum("bcn,bnk->bck", feats, z_normed), dim=1, p=2)
    return torch.einsum("bck,bnk->bcn", mu, z).view(b, c, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--bases", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    b, c, k, t = args.batch, args.channels, args.bases, args.iterations
    n = args.height * args.width
    torch.manual_seed(0)
    x = torch.randn(b, c, args.height, args.width, device=device)
    unit = EMAttention(c, num_bases=k, num_iterations=t).to(device).eval()

    # The three product shapes of the unit, each timed alone in both operand layouts (contiguous
    # or transposed view), its output allocated as the unit must; the faster layout counts.
    xc = torch.randn(b, c, n, device=device)
    xt = xc.transpose(1, 2).contiguous()
    mu = torch.randn(b, c, k, device=device)
    z = torch.randn(b, n, k, device=device)
    zt = z.transpose(1, 2).contiguous()

    def best(*fns):
        return min(median_time(fn, device, args.repeat) for fn in fns)

    t_e = best(lambda: torch.bmm(xt, mu), lambda: torch.bmm(xc.transpose(1, 2), mu))
    t_m = best(lambda: torch.bmm(xc, z), lambda: torch.bmm(xt.transpose(1, 2), z))
    t_r = best(lambda: torch.bmm(mu, zt), lambda: torch.bmm(mu, z.transpose(1, 2)))
    flops_one = 2 * b * n * c * k
    floor = t * (t_e + t_m) + t_r
    best_rate = flops_one / min(t_e, t_m, t_r)

    with torch.inference_mode():
        t_unit = median_time(lambda: unit(x), device, args.repeat)
        t_trace = median_time(lambda: unit(x, trace=EMTrace()), device, args.repeat)
        plain = lambda: em_attention(x, unit.bases.expand(b, -1, -1), t)  # noqa: E731
        t_plain = median_time(plain, device, args.repeat)
        t_einsum = median_time(lambda: einsum_em(x, unit.bases, t), device, args.repeat)
        same = torch.allclose(unit(x), einsum_em(x, unit.bases, t), rtol=1e-4, atol=1e-5)

    total = (2 * t + 1) * flops_one
    print(f"device {device}, threads {torch.get_num_threads()}, B={b} C={c} N={n} K={k} T={t}")
    print(f"unit flops            {total / 1e9:.2f} GFLOP")
    print(f"matmul rate (best)    {best_rate / 1e9:.1f} GFLOP/s")
    print(f"matmul floor          {floor * 1e3:.2f} ms")
    print(f"unit                  {t_unit * 1e3:.2f} ms  ({total / t_unit / 1e9:.1f} GFLOP/s)")
    print(f"unit with trace       {t_trace * 1e3:.2f} ms")
    print(f"plain em_attention    {t_plain * 1e3:.2f} ms")
    print(f"einsum (mmseg)        {t_einsum * 1e3:.2f} ms")
    print(f"same results          {same}")
    print(f"floor ratio (floor/unit)  {floor / t_unit:.3f}  (target >= 0.90)")
    print(f"mmseg ratio (unit/einsum) {t_unit / t_einsum:.3f}  (target <= 0.95)")
    print(f"plain/einsum              {t_plain / t_einsum:.3f}")

    with torch.inference_mode():
        reference = unit.double()(x.double())
        unit.float()
        variants = {"strict fp32": (unit, False)}
        if device.type == "cuda":
            variants["tf32 (split)"] = (unit, True)
            variants["tf32 unsplit"] = (
                lambda v: em_attention(v, unit.bases.expand(b, -1, -1), t)[0],
                True,
            )
            compiled = torch.compile(unit)
            variants["compiled fp32"] = (compiled, False)
            variants["compiled tf32"] = (compiled, True)
        print("variant           ms      rel. error vs float64")
        for name, (fn, tf32) in variants.items():
            with tf32_matmuls() if tf32 else torch.no_grad():
                ms = median_time(lambda f=fn: f(x), device, args.repeat, warmup=3) * 1e3
                error = relative_error(fn(x), reference)
            print(f"{name:15s} {ms:7.3f}  {error:.2e}")


if __name__ == "__main__":
    main()
