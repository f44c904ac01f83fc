"""Attention sharpness over training: the attention table of a run's saved training states.

The trainer's ``latest.pth`` (a full training state: ``{"model", "iteration", "preset", ...}``)
holds the weights at one iteration; copies of it kept along a run give the run's history. For
each state, on toy-city scenes of an unseen seed (as ``bench_attention.py``) at T EM iterations:

    iter   entropy/lnK   max resp   active   |cos|   photos (entropy/lnK)   |x|   cos(xi,xj)

where the last two describe the features that reach the EM unit on the toy-city scenes: their
median length (the temperature of mmsegmentation's E-step ``softmax(x^T mu)``) and the mean
cosine between two pixels (their common component).

A state names its preset; a run trained with a variant of it (e.g. the small preset with
mmsegmentation's EM unit, as in notebook 03) is measured with the same overrides.

Usage:
    python benchmarks/bench_attention_over_training.py runs/ours/keep_*.pth
    python benchmarks/bench_attention_over_training.py runs/mmseg/keep_*.pth \\
        --inverse-temperature 1 --no-centered-cosine
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_attention import photos, toycity_scenes

from emanet import Segmenter, build_model
from emanet.models.attention import measure_attention
from emanet.models.presets import get_preset


def mean_pair_cos(feats: torch.Tensor) -> float:
    """Mean cosine over the distinct pairs of pixels of ``feats`` ``(C, N)``, in O(N C)."""
    n = feats.shape[1]
    total = F.normalize(feats, dim=0).sum(dim=1)
    return float((total.square().sum() - n) / (n * (n - 1)))


def measure_state(path: str, overrides: dict, scenes, pictures, steps: int) -> dict:
    """The measures of one training-state file (see the module docstring)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    preset = get_preset(state["preset"]).with_overrides(**overrides)
    model = build_model(preset)
    model.load_state_dict(state["model"])
    segmenter = Segmenter(model, fast=False)  # the plain model: the hook sees the unit
    inputs = []
    hook = model.em_unit.register_forward_pre_hook(
        lambda module, args: inputs.append(args[0][0].flatten(1).float())
    )
    try:
        toy = measure_attention(segmenter, scenes, steps)
    finally:
        hook.remove()
    return {
        "iteration": int(state["iteration"]),
        "preset": preset,
        **toy,
        "photos": measure_attention(segmenter, pictures, steps)["entropy"],
        "length": sum(float(x.norm(dim=0).median()) for x in inputs) / len(inputs),
        "common": sum(mean_pair_cos(x) for x in inputs) / len(inputs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("states", nargs="+", help="training-state files (latest.pth copies)")
    parser.add_argument("--iterations", type=int, default=3, help="EM iterations T")
    parser.add_argument("--seed", type=int, default=7, help="toy-city seed (training used 0)")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--inverse-temperature", type=float, help="override the preset's lambda")
    parser.add_argument(
        "--centered-cosine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override the preset's centred cosine",
    )
    args = parser.parse_args()

    overrides = {}
    if args.inverse_temperature is not None:
        overrides["inverse_temperature"] = args.inverse_temperature
    if args.centered_cosine is not None:
        overrides["centered_cosine"] = args.centered_cosine
    scenes = toycity_scenes(args.seed, args.scenes, (256, 512))
    pictures = photos()
    rows = [measure_state(p, overrides, scenes, pictures, args.iterations) for p in args.states]
    rows.sort(key=lambda row: row["iteration"])
    preset = rows[0]["preset"]
    print(
        f"preset {preset.name} with lambda={preset.inverse_temperature:g}, "
        f"centered_cosine={preset.centered_cosine}; T={args.iterations}, "
        f"{len(scenes)} toy-city scenes of seed {args.seed}, {len(pictures)} photos"
    )
    print(
        f"{'iter':>6} {'entropy/lnK':>11} {'max resp':>9} {'active':>7} {'|cos|':>6} "
        f"{'photos':>7} {'|x|':>7} {'cos(xi,xj)':>10}"
    )
    for row in rows:
        print(
            f"{row['iteration']:6d} {row['entropy']:11.3f} {row['max_responsibility']:9.3f} "
            f"{row['active_bases']:7.1f} {row['mean_abs_cos']:6.3f} {row['photos']:7.3f} "
            f"{row['length']:7.2f} {row['common']:10.3f}"
        )


if __name__ == "__main__":
    main()
