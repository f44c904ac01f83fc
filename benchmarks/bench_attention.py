"""Is the EM attention of a model alive? The attention table, for any model, re-measurable.

For each number of EM iterations T, on toy-city scenes drawn from a seed the bundled model never
saw in training or validation, and on real photographs (scikit-image's data module):

    entropy   mean responsibility entropy / ln K      (1 = uniform, every base 1/K)
    max       mean per-pixel largest responsibility    (1/K when uniform)
    active    bases that are the argmax of >= 2 % of the pixels
    |cos|     mean |cos| between the final bases       (1 = all bases the same)

and, with --data, the mIoU on that toy city's (or Cityscapes') val split at each T.

Usage:
    python benchmarks/bench_attention.py                        # the bundled model
    python benchmarks/bench_attention.py --model emanet_r50-d8_512x1024_80k_cityscapes
    python benchmarks/bench_attention.py --data /work/toycity --iterations 1 3 5
    python benchmarks/bench_attention.py --lambda-scale 0.02    # what-if: lambda x 0.02
"""

from __future__ import annotations

import argparse

import numpy as np

from emanet import Segmenter
from emanet.data.toycity import render_scene
from emanet.models.attention import measure_attention

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def toycity_scenes(seed: int, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``count`` toy-city images from ``seed`` (split index 9: no generated split uses it)."""
    height, width = size
    return [
        render_scene(height, width, np.random.default_rng([seed, 9, index]))[0]
        for index in range(count)
    ]


def photos() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in PHOTOS:
        image = getattr(data, name)()
        out.append(np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="zoo name or checkpoint (default: the bundled model)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--seed", type=int, default=7, help="toy-city seed (training used 0)")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    parser.add_argument("--no-photos", action="store_true")
    parser.add_argument(
        "--lambda-scale", type=float, default=1.0, help="multiply the model's own lambda (what-if)"
    )
    parser.add_argument("--data", help="a Cityscapes-layout root: adds val mIoU at each T")
    parser.add_argument("--max-images", type=int, help="val images for the mIoU (default: all)")
    args = parser.parse_args()

    segmenter = Segmenter.from_pretrained(args.model, progress=True)
    unit = segmenter.model.em_unit
    lam = unit.inverse_temperature * args.lambda_scale
    print(
        f"model {segmenter.preset.name}: K={unit.num_bases}, lambda={lam:g} "
        f"(model's own {unit.inverse_temperature:g}), centered_cosine={unit.centered_cosine}"
    )
    sets = {f"toy city seed {args.seed}": toycity_scenes(args.seed, args.scenes, args.size)}
    if not args.no_photos:
        sets["photos"] = photos()
    dataset = None
    if args.data:
        from emanet.data import CityscapesDataset
        from emanet.evaluation.evaluate import evaluate_segmenter

        dataset = CityscapesDataset(args.data, "val")
    header = (
        f"{'images':<22} {'T':>2} {'entropy/lnK':>11} {'max resp':>9} {'active':>7} {'|cos|':>6}"
    )
    print(header + ("  val mIoU" if dataset is not None else ""))
    for steps in args.iterations:
        miou = ""
        if dataset is not None:
            result = evaluate_segmenter(
                segmenter,
                dataset,
                num_iterations=steps,
                max_images=args.max_images,
                progress=False,
                inverse_temperature=lam,
            )
            miou = f"  {result['metrics']['mIoU']:8.2f}"
        for name, images in sets.items():
            stats = measure_attention(segmenter, images, steps, inverse_temperature=lam)
            print(
                f"{name:<22} {steps:>2} {stats['entropy']:>11.3f} "
                f"{stats['max_responsibility']:>9.3f} {stats['active_bases']:>7.1f} "
                f"{stats['mean_abs_cos']:>6.3f}{miou}"
            )
            miou = ""


if __name__ == "__main__":
    main()
