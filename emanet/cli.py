"""The ``emanet`` command: predict, eval, train, toycity, data check, models, export, app.

Each subcommand is a thin layer over the library and imports what it needs when it runs;
``emanet SUBCOMMAND --help`` lists its options. Errors a person can fix (an option, a file, a
full disk, a batch too large for the device) are one line and exit status 2; any other error is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from emanet.runtime.backends import add_backend_arguments
from emanet.runtime.device import add_runtime_arguments, check_runtime, is_out_of_memory
from emanet.runtime.errors import UserError
from emanet.runtime.logs import configure_logging
from emanet.training.config import build_parser as build_train_parser

__all__ = ["UsageError", "build_parser", "main"]

log = logging.getLogger(__name__)


class UsageError(UserError):
    """An option this machine cannot honour (``--device cuda`` without a GPU, ...)."""


def _add_model_options(p) -> None:
    """The options of every subcommand that runs a model."""
    p.add_argument("--model", help="zoo name, URL or checkpoint path (default: bundled model)")
    p.add_argument("--preset", help="preset for an mmsegmentation checkpoint file")
    p.add_argument(
        "--scale",
        type=int,
        nargs=2,
        metavar=("LONG", "SHORT"),
        help="test scale (default: the one the checkpoint records, else its preset's)",
    )
    p.add_argument("--iterations", type=int, help="EM iterations at test time")
    p.add_argument("--aug-test", action="store_true", help="multi-scale + flip")
    p.add_argument("--mode", choices=("whole", "slide"))
    add_runtime_arguments(p)
    add_backend_arguments(p)


def _segmenter(args):
    from emanet.predict import Segmenter

    return Segmenter.from_pretrained(
        args.model,
        preset=args.preset,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        test_scale=args.scale,
        backend=args.backend,
        calibration=args.calibration,
    )


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment images; write colour masks and overlays")
    p.add_argument(
        "images", nargs="+", help="image files, folders (recursive) or quoted globs ('a/**/*.jpg')"
    )
    p.add_argument("--out", help="output folder (mirrors the input folders)")
    p.add_argument(
        "--trace",
        metavar="OUT.npz",
        help="write one image's EM trace (emanet.load_trace reads it back); --out optional",
    )
    _add_model_options(p)
    p.add_argument("--opacity", type=float, default=0.5)
    p.add_argument(
        "--batch-size", type=int, help="images of one size per forward pass (default: by device)"
    )
    p.set_defaults(func=_predict)


def _group_device(args) -> str | None:
    """The device a torchrun process takes: onnxruntime runs on the CPU whatever GPUs exist."""
    return "cpu" if getattr(args, "backend", None) == "onnxruntime" else args.device


def _predict_trace(args) -> None:
    """``--trace OUT.npz``: one image segmented with its EM trace, written for later study."""
    from emanet.io.trace import save_trace

    if len(args.images) != 1 or not Path(args.images[0]).is_file():
        raise UsageError("emanet predict: --trace takes exactly one image file")
    segmenter = _segmenter(args)
    prediction = segmenter(
        args.images[0],
        trace=True,
        num_iterations=args.iterations,
        aug_test=args.aug_test,
        mode=args.mode,
    )
    lam = segmenter.model.em_unit.inverse_temperature
    name = args.model or "bundled"
    p = prediction
    save_trace(args.trace, p.trace, p.labels, p.image, p.classes, name, lam)
    log.info("wrote %s (%d EM iterations)", args.trace, p.trace.num_iterations)


def _predict(args) -> int:
    from emanet.deploy.batch import find_images, predict_images, torchrun_group

    if args.out is None and args.trace is None:
        raise UsageError("emanet predict: give --out FOLDER, --trace OUT.npz or both")
    if args.trace is not None:
        _predict_trace(args)
        if args.out is None:
            return 0
    try:
        jobs = find_images(args.images)
    except FileNotFoundError as error:
        raise UsageError(f"emanet predict: {error}") from None
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"emanet predict: --batch-size must be >= 1, got {args.batch_size}")
    with torchrun_group(_group_device(args)) as (rank, world, args.device):  # images shared out
        summary = predict_images(
            _segmenter(args),
            jobs,
            args.out,
            batch_size=args.batch_size,
            num_iterations=args.iterations,
            aug_test=args.aug_test,
            mode=args.mode,
            opacity=args.opacity,
            rank=rank,
            world=world,
        )
    return 1 if summary.skipped else 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="mIoU (and Cityscapes' iIoU) on a dataset (any layout)")
    p.add_argument("--data", required=True, help="dataset root (see `emanet data check`)")
    _add_format_option(p)
    p.add_argument("--split", default="val")
    _add_model_options(p)
    p.add_argument("--max-images", type=int)
    p.add_argument("--save-pred", help="folder for class-id PNGs")
    p.add_argument("--cityscapes-format", help="folder for labelId PNGs (official scripts)")
    p.add_argument("--out", help="JSON file for the metrics (with the confusion matrix)")
    p.add_argument("--plots", help="folder for confusion.png and per_class_iou.png")
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from emanet.data.formats import open_dataset
    from emanet.deploy.batch import torchrun_group
    from emanet.evaluation.evaluate import evaluate_segmenter
    from emanet.io.atomic import atomic_write_text

    dataset = open_dataset(args.data, args.split, args.data_format)
    with torchrun_group(_group_device(args)) as (rank, world, args.device):  # images shared out
        segmenter = _segmenter(args)
        report = evaluate_segmenter(
            segmenter, dataset, mode=args.mode, aug_test=args.aug_test,
            num_iterations=args.iterations, max_images=args.max_images, save_pred=args.save_pred,
            cityscapes_format=args.cityscapes_format, rank=rank, world_size=world,
        )  # fmt: skip
    if rank != 0:  # one summary: rank 0's
        return 0
    print(report["table"])
    metrics = report["metrics"]
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2))
    if args.plots:
        from emanet.evaluation.plots import write_eval_plots

        iou = [metrics["IoU"][name] for name in metrics["classes"]]
        written = write_eval_plots(
            args.plots, metrics["confusion"], iou, metrics["classes"], palette=segmenter.palette
        )
        log.info("plots written: %s", ", ".join(str(path) for path in written))
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a preset (single process or under torchrun)")
    build_train_parser(p)
    p.set_defaults(func=_train)


def _train(args) -> int:
    from emanet.training.loop import run_from_args

    return run_from_args(args)


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
        raise UsageError(
            f"emanet toycity: --size must look like 256x512, got {args.size!r}"
        ) from None
    if min(height, width) < MIN_SIZE:
        raise UsageError(
            f"emanet toycity: --size must be at least {MIN_SIZE}x{MIN_SIZE}, got {args.size!r}"
        )
    root = generate_toycity(
        args.root, train=args.train, val=args.val, test=args.test, size=(height, width),
        seed=args.seed,
    )  # fmt: skip
    log.info("synthetic toy city written to %s", root)
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="report split sizes and problems of a dataset")
    check.add_argument("root")
    _add_format_option(check)
    check.set_defaults(func=_data_check)


def _add_format_option(p) -> None:
    p.add_argument(
        "--format",
        dest="data_format",
        help="dataset layout: cityscapes, voc, ade20k or folder (default: detected)",
    )


def _data_check(args) -> int:
    from emanet.data.formats import check_dataset

    report = check_dataset(args.root, args.data_format)
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
    from emanet.io.hub import BUNDLED_DIR
    from emanet.models.presets import PRESETS, get_preset

    presets = [get_preset(name) for name in args.names] if args.names else list(PRESETS.values())
    for preset in presets:
        bundled = (BUNDLED_DIR / f"{preset.name}.pth").is_file()
        weights = preset.url or ("(bundled)" if bundled else "(no checkpoint: a recipe to train)")
        print(
            f"{preset.name:42s} crop {preset.crop_size[0]}x{preset.crop_size[1]:<5d} "
            f"{preset.test_mode:5s} {weights}"
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

    if not args.verbose:  # the exporter's passes log every rewrite at INFO
        for name in ("onnxscript", "onnx_ir", "torch.onnx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    name = None if args.model == "bundled" else args.model
    segmenter = Segmenter.from_pretrained(name, preset=args.preset, device="cpu", fast=False)
    model = segmenter.model
    path = export_onnx(
        model, args.out, height=args.height, width=args.width, batch_size=args.batch_size,
        dynamic=args.dynamic, num_iterations=args.iterations, mode=args.mode,
        classes=segmenter.classes, palette=segmenter.palette,
    )  # fmt: skip
    log.info("wrote %s", path)
    if args.no_check or importlib.util.find_spec("onnxruntime") is None:
        return 0
    height, width = default_export_size(model.preset)
    images = torch.randn(args.batch_size, 3, args.height or height, args.width or width)
    difference = onnxruntime_difference(model, path, images, num_iterations=args.iterations)
    log.info("onnxruntime vs PyTorch on random input: max |diff| / max |logit| = %.2e", difference)
    return 0


def _add_app(sub) -> None:
    # The app's own options (see `emanet app --help`): it parses them itself.
    p = sub.add_parser(
        "app",
        help="the segmentation and EM attention explorer in a browser ('app' extra)",
        add_help=False,
    )
    p.set_defaults(func=_app)


def _app(args) -> int:
    try:
        from emanet.app.__main__ import main as app_main
    except ImportError as error:
        raise UsageError(
            f"emanet app needs the app's packages ({error}): pip install 'emanet[app]'"
        ) from None
    app_main(args.argv, prog="emanet app")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emanet", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_predict, _add_eval, _add_train, _add_toycity, _add_data, _add_models, _add_export,
        _add_app,
    ):  # fmt: skip
        add(sub)
    return parser


def _check_runtime_options(args) -> None:
    """``--device`` and ``--precision`` (where a subcommand has them) must be runnable here."""
    device, precision = getattr(args, "device", None), getattr(args, "precision", None)
    if device is None and precision is None:
        return
    try:
        check_runtime(device, precision, getattr(args, "backend", None))
    except ValueError as error:
        raise UsageError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "app":
        args.argv = rest  # the app parses its own options
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    configure_logging(args.verbose)
    try:
        _check_runtime_options(args)
        return args.func(args)
    except (UserError, OSError) as error:
        log.error("%s", error, exc_info=args.verbose)  # -v: the traceback too, for a report
        return 2
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        log.error(
            "out of memory in `emanet %s` (%s); use a smaller --batch-size or --scale, or free "
            "memory", args.command, str(error).splitlines()[0][:200],
        )  # fmt: skip
        return 2


if __name__ == "__main__":
    sys.exit(main())
