"""The ``emanet`` command: predict, eval, train, toycity, data check, models.

Each subcommand is a thin layer over the library; ``emanet SUBCOMMAND --help`` lists options.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("emanet")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment images; write colour masks and overlays")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", help="zoo name, URL or checkpoint path (default: bundled model)")
    p.add_argument("--preset", help="preset for an mmsegmentation checkpoint file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--iterations", type=int, help="EM iterations at test time")
    p.add_argument("--aug-test", action="store_true", help="multi-scale + flip")
    p.add_argument("--mode", choices=("whole", "slide"))
    p.add_argument("--opacity", type=float, default=0.5)
    p.add_argument("--device")
    p.set_defaults(func=_predict)


def _image_files(items: list[str]) -> list[Path]:
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    files = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.suffix.lower() in suffixes)
        elif path.exists():
            files.append(path)
        else:
            raise SystemExit(f"emanet predict: no such file or folder: {item}")
    return files


def _predict(args) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from .imageio import ImageLoadError
    from .predict import Segmenter

    segmenter = Segmenter.from_pretrained(args.model, preset=args.preset, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = _image_files(args.images)
    failures = 0
    for path in tqdm(files, desc="predict", unit="image"):
        try:
            result = segmenter(
                path, num_iterations=args.iterations, aug_test=args.aug_test, mode=args.mode
            )
        except ImageLoadError as error:
            log.error("%s", error)
            failures += 1
            continue
        Image.fromarray(result.color_mask()).save(out / f"{path.stem}_mask.png")
        Image.fromarray(result.overlay(args.opacity)).save(out / f"{path.stem}_overlay.png")
        Image.fromarray(result.labels.astype(np.uint8)).save(out / f"{path.stem}_trainIds.png")
    log.info("wrote %d results to %s", len(files) - failures, out)
    return 1 if failures else 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="mIoU (and iIoU) on a Cityscapes-layout dataset")
    p.add_argument("--model", help="zoo name, URL or checkpoint path (default: bundled model)")
    p.add_argument("--preset", help="preset for an mmsegmentation checkpoint file")
    p.add_argument("--data", required=True, help="dataset root (leftImg8bit/, gtFine/)")
    p.add_argument("--split", default="val")
    p.add_argument("--mode", choices=("whole", "slide"))
    p.add_argument("--aug-test", action="store_true", help="multi-scale + flip")
    p.add_argument("--iterations", type=int, help="EM iterations at test time")
    p.add_argument("--max-images", type=int)
    p.add_argument("--save-pred", help="folder for trainId PNGs")
    p.add_argument("--cityscapes-format", help="folder for labelId PNGs (official scripts)")
    p.add_argument("--out", help="JSON file for the metrics")
    p.add_argument("--device")
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from .data.cityscapes import CityscapesDataset
    from .evaluate import evaluate_segmenter
    from .predict import Segmenter

    segmenter = Segmenter.from_pretrained(args.model, preset=args.preset, device=args.device)
    dataset = CityscapesDataset(args.data, args.split)
    report = evaluate_segmenter(
        segmenter,
        dataset,
        mode=args.mode,
        aug_test=args.aug_test,
        num_iterations=args.iterations,
        max_images=args.max_images,
        save_pred=args.save_pred,
        cityscapes_format=args.cityscapes_format,
    )
    print(report["table"])
    if args.out:
        Path(args.out).write_text(json.dumps(report["metrics"], indent=2))
    return 0


def _add_train(sub) -> None:
    from .train import build_parser, run_from_args

    p = sub.add_parser("train", help="train a preset (single process or under torchrun)")
    build_parser(p)
    p.set_defaults(func=run_from_args)


def _add_toycity(sub) -> None:
    p = sub.add_parser("toycity", help="write a synthetic street-scene dataset (Cityscapes layout)")
    p.add_argument("root")
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--val", type=int, default=50)
    p.add_argument("--test", type=int, default=0)
    p.add_argument("--size", default="256x512", help="HxW")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_toycity)


def _toycity(args) -> int:
    from .data.toycity import generate_toycity

    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(
            f"emanet toycity: --size must look like 256x512, got {args.size!r}"
        ) from None
    root = generate_toycity(
        args.root,
        train=args.train,
        val=args.val,
        test=args.test,
        size=(height, width),
        seed=args.seed,
    )
    log.info("synthetic toy city written to %s", root)
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="report split sizes and problems of a dataset")
    check.add_argument("root")
    check.set_defaults(func=_data_check)


def _data_check(args) -> int:
    from .data.cityscapes import check_dataset

    report = check_dataset(args.root)
    print(report.format())
    return 0 if report.ok else 1


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list presets and official checkpoints")
    p.set_defaults(func=_models)


def _models(args) -> int:
    from .presets import PRESETS

    for preset in PRESETS.values():
        print(
            f"{preset.name:42s} crop {preset.crop_size[0]}x{preset.crop_size[1]:<5d} "
            f"{preset.test_mode:5s} {preset.url or '(bundled)'}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emanet", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_predict, _add_eval, _add_train, _add_toycity, _add_data, _add_models):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .checkpoint import CheckpointError

    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
