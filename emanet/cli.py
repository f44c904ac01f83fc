"""The ``emanet`` command: predict, eval, train, toycity, data check, models, export.

Each subcommand is a thin layer over the library; ``emanet SUBCOMMAND --help`` lists options.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from emanet.data.cityscapes import DatasetError
from emanet.deploy.onnx import ExportError
from emanet.io.checkpoint import CheckpointError
from emanet.io.images import ImageLoadError
from emanet.runtime.device import add_runtime_arguments, check_runtime
from emanet.training.train import TrainingDiverged

__all__ = ["UsageError", "configure_logging", "main"]

log = logging.getLogger(__name__)


class UsageError(Exception):
    """An option this machine cannot honour (``--device cuda`` without a GPU, ...)."""


# What a person can fix (an option, a checkpoint, an image, a dataset, a path, an export, a
# diverged run): reported in one line, exit code 2. Anything else is a bug in this package and
# surfaces as a traceback.
USER_ERRORS = (
    UsageError,
    CheckpointError,
    ImageLoadError,
    DatasetError,
    ExportError,
    TrainingDiverged,
    OSError,
)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment images; write colour masks and overlays")
    p.add_argument(
        "images", nargs="+", help="image files, folders (recursive) or quoted globs ('a/**/*.jpg')"
    )
    p.add_argument("--model", help="zoo name, URL or checkpoint path (default: bundled model)")
    p.add_argument("--preset", help="preset for an mmsegmentation checkpoint file")
    p.add_argument("--out", required=True, help="output folder (mirrors the input folders)")
    p.add_argument("--iterations", type=int, help="EM iterations at test time")
    p.add_argument("--aug-test", action="store_true", help="multi-scale + flip")
    p.add_argument("--mode", choices=("whole", "slide"))
    p.add_argument("--opacity", type=float, default=0.5)
    p.add_argument(
        "--batch-size", type=int, help="images of one size per forward pass (default: by device)"
    )
    add_runtime_arguments(p)
    p.set_defaults(func=_predict)


def _segmenter(args):
    from emanet.predict import Segmenter

    return Segmenter.from_pretrained(
        args.model,
        preset=args.preset,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
    )


def _predict(args) -> int:
    from emanet.deploy.batch import find_images, predict_images

    try:
        jobs = find_images(args.images)
    except FileNotFoundError as error:
        raise SystemExit(f"emanet predict: {error}") from None
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit(f"emanet predict: --batch-size must be >= 1, got {args.batch_size}")
    segmenter = _segmenter(args)
    summary = predict_images(
        segmenter,
        jobs,
        args.out,
        batch_size=args.batch_size,
        num_iterations=args.iterations,
        aug_test=args.aug_test,
        mode=args.mode,
        opacity=args.opacity,
    )
    return 1 if summary.skipped else 0


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
    p.add_argument("--out", help="JSON file for the metrics (with the confusion matrix)")
    p.add_argument("--plots", help="folder for confusion.png and per_class_iou.png")
    add_runtime_arguments(p)
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from emanet.data.cityscapes import CityscapesDataset
    from emanet.evaluation.evaluate import evaluate_segmenter
    from emanet.io.atomic import atomic_write_text

    segmenter = _segmenter(args)
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
    metrics = report["metrics"]
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2))
    if args.plots:
        from emanet.evaluation.plots import write_eval_plots

        classes = metrics["classes"]
        iou = [metrics["IoU"][name] for name in classes]
        written = write_eval_plots(
            args.plots, metrics["confusion"], iou, classes, palette=segmenter.palette
        )
        log.info("plots written: %s", ", ".join(str(path) for path in written))
    return 0


def _add_train(sub) -> None:
    from emanet.training.train import build_parser, run_from_args

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
    from emanet.data.toycity import MIN_SIZE, generate_toycity

    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(
            f"emanet toycity: --size must look like 256x512, got {args.size!r}"
        ) from None
    if min(height, width) < MIN_SIZE:
        raise SystemExit(
            f"emanet toycity: --size must be at least {MIN_SIZE}x{MIN_SIZE}, got {args.size!r}"
        )
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
    from emanet.data.cityscapes import check_dataset

    report = check_dataset(args.root)
    print(report.format())
    return 0 if report.ok else 1


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list presets and official checkpoints")
    p.add_argument("names", nargs="*", help="presets to show (default: all)")
    p.add_argument(
        "--flops",
        action="store_true",
        help="parameters and GFLOPs at each preset's test setting, EM unit apart, non-local beside",
    )
    p.set_defaults(func=_models)


def _models(args) -> int:
    from emanet.models.presets import PRESETS, get_preset

    presets = [get_preset(name) for name in args.names] if args.names else list(PRESETS.values())
    for preset in presets:
        print(
            f"{preset.name:42s} crop {preset.crop_size[0]}x{preset.crop_size[1]:<5d} "
            f"{preset.test_mode:5s} {preset.url or '(bundled)'}"
        )
    if args.flops:
        from emanet.deploy.flops import format_costs, model_cost

        print()
        print(format_costs([model_cost(preset) for preset in presets]))
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (needs the 'export' extra)")
    p.add_argument("model", help="'bundled', a zoo name, a URL or a checkpoint path")
    p.add_argument("--preset", help="preset for an mmsegmentation checkpoint file")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--height", type=int, help="input height (default: the test setting's)")
    p.add_argument("--width", type=int, help="input width (default: the test setting's)")
    p.add_argument("--batch-size", type=int, default=1, help="input batch (static export)")
    p.add_argument("--dynamic", action="store_true", help="any batch, height and width")
    p.add_argument("--iterations", type=int, help="EM iterations unrolled into the graph")
    p.add_argument(
        "--mode", choices=("whole", "slide"), help="default: the preset's (slide cannot export)"
    )
    p.add_argument(
        "--no-check", action="store_true", help="skip the onnxruntime comparison after export"
    )
    p.set_defaults(func=_export)


def _export(args) -> int:
    import importlib.util

    import torch

    from emanet.deploy.onnx import default_export_size, export_onnx, onnxruntime_difference
    from emanet.predict import Segmenter

    if not args.verbose:
        # The exporter's passes log every rewrite at INFO.
        for name in ("onnxscript", "onnx_ir", "torch.onnx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    name = None if args.model == "bundled" else args.model
    segmenter = Segmenter.from_pretrained(name, preset=args.preset, device="cpu", fast=False)
    model = segmenter.model
    path = export_onnx(
        model,
        args.out,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        dynamic=args.dynamic,
        num_iterations=args.iterations,
        mode=args.mode,
        classes=segmenter.classes,
        palette=segmenter.palette,
    )
    log.info("wrote %s", path)
    if args.no_check or importlib.util.find_spec("onnxruntime") is None:
        return 0
    height, width = default_export_size(model.preset)
    images = torch.randn(args.batch_size, 3, args.height or height, args.width or width)
    difference = onnxruntime_difference(model, path, images, num_iterations=args.iterations)
    log.info("onnxruntime vs PyTorch on random input: max |diff| / max |logit| = %.2e", difference)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emanet", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_predict,
        _add_eval,
        _add_train,
        _add_toycity,
        _add_data,
        _add_models,
        _add_export,
    ):
        add(sub)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """The command-line format for every ``emanet.*`` (and ``app.*``) logger."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _check_runtime_options(args) -> None:
    """``--device`` and ``--precision`` (where a subcommand has them) must be runnable here."""
    device, precision = getattr(args, "device", None), getattr(args, "precision", None)
    if device is None and precision is None:
        return
    try:
        check_runtime(device, precision)
    except ValueError as error:
        raise UsageError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        _check_runtime_options(args)
        return args.func(args)
    except USER_ERRORS as error:
        # -v: the traceback too, for a report.
        log.error("%s", error, exc_info=args.verbose)
        return 2


if __name__ == "__main__":
    sys.exit(main())
