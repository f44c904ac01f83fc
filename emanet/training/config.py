"""What a training run needs: :class:`TrainConfig`, the one place of every default, and the
``emanet train`` command line, generated from its fields and their documentation.

Every field becomes one option: ``--name-with-dashes`` (or the flag its metadata names),
``type`` from its annotation, ``nargs=2`` for pairs, ``--x/--no-x`` for booleans that default
to on, and its help text. So the command line and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields

__all__ = [
    "NO_PRETRAINED",
    "TRAIN_PRECISIONS",
    "TrainConfig",
    "build_parser",
    "config_from_args",
    "config_to_json",
]

#: ``TrainConfig.pretrained`` value that asks for a randomly initialised backbone.
NO_PRETRAINED = "none"

#: Training precisions: fp16 would need loss scaling, which bf16 (as fast) does not.
TRAIN_PRECISIONS = ("bf16", "fp32")


def _option(help: str, default=MISSING, **argparse_options) -> typing.Any:
    """A dataclass field documented by ``help``; ``argparse_options`` (``flag``, ``metavar``,
    ``choices``) shape its command-line option."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class TrainConfig:
    """Everything a training run needs. The defaults are mmsegmentation's 80k Cityscapes
    schedule. Paths are strings so that the config round-trips through JSON."""

    preset: str = _option("model preset, e.g. emanet_r18-d8_toycity (see `emanet models`)")
    data_root: str = _option(
        "dataset root: Cityscapes, Pascal VOC, ADE20K or the folder format (see `emanet data "
        "check`); the heads get one output per class of the dataset",
        flag="data",
        metavar="ROOT",
    )
    work_dir: str = _option("folder for checkpoints, logs, curves and model.pth", metavar="DIR")
    data_format: str | None = _option(
        "dataset layout: cityscapes, voc, ade20k or folder (default: detected)",
        None,
        flag="format",
    )
    train_split: str | None = _option(
        "split to train on (default: train; train_aug for VOC with the augmented list)", None
    )
    iters: int = _option("training iterations", 80_000)
    batch_size: int = _option("images per iteration and process", 2)
    lr: float = _option("initial learning rate (SGD)", 0.01)
    momentum: float = _option("SGD momentum", 0.9)
    weight_decay: float = _option("SGD weight decay", 5e-4)
    power: float = _option("power of the poly learning-rate decay", 0.9)
    min_lr: float = _option("learning rate at the last iteration", 1e-4)
    crop_size: tuple[int, int] | None = _option(
        "training crop (default: the preset's)", None, metavar=("H", "W")
    )
    train_scale: tuple[int, int] | None = _option(
        "random-resize base scale (default: the preset's, e.g. 2048 1024)",
        None,
        flag="scale",
        metavar=("LONG", "SHORT"),
    )
    ratio_range: tuple[float, float] = _option(
        "range of the random resize's ratio", (0.5, 2.0), metavar=("LOW", "HIGH")
    )
    val_scale: tuple[int, int] | None = _option(
        "test scale of validation, recorded in model.pth (default: the preset's)",
        None,
        metavar=("LONG", "SHORT"),
    )
    checkpoint_interval: int = _option("iterations between latest.pth saves", 1000)
    val_interval: int = _option("iterations between validations (0: none)", 0)
    val_max_images: int | None = _option("validate on the first N images only", None)
    log_interval: int = _option("iterations between rows of metrics.jsonl", 10)
    num_workers: int | None = _option(
        "DataLoader workers per process (default: min(8, usable CPU cores per process))",
        None,
        flag="workers",
        metavar="N",
    )
    seed: int = _option("seed of the initialisation, sample order and augmentation", 0)
    pretrained: str | None = _option(
        "backbone weights: open-mmlab://resnet50_v1c, a URL, a path, or 'none' (default: the "
        "preset's ImageNet backbone; none with --init or when resuming)",
        None,
    )
    init: str | None = _option(
        "initial weights: path, URL, zoo or bundled name; every tensor whose shape fits is "
        "loaded, classifiers of other classes are initialised afresh (a report is logged)",
        None,
    )
    resume: bool = _option("continue from work-dir/latest.pth", False)
    device: str | None = _option(
        "cpu, cuda (this process's GPU: LOCAL_RANK's under torchrun) or cuda:N", None
    )
    precision: str | None = _option(
        "autocast precision (default: bf16 on CUDA, fp32 on CPU)", None, choices=TRAIN_PRECISIONS
    )
    channels_last: bool = _option(
        "channels_last (NHWC) model and images: the layout GPU tensor cores and oneDNN convolve "
        "natively (--no-channels-last: NCHW)",
        True,
    )
    compile: bool = _option("torch.compile the training step (the first iterations compile)", False)
    recompute_norm_relu: bool = _option(
        "recompute BatchNorm->ReLU outputs in backward instead of storing them (less memory; "
        "eager runs only)",
        True,
    )
    snapshot_bases: bool = _option("save the EM bases at every checkpoint (tutorials)", False)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``emanet train``'s options, one per :class:`TrainConfig` field (``dest`` = the field)."""
    parser = parser or argparse.ArgumentParser(
        prog="emanet train", description="Train an EMANet preset (one process, or under torchrun)."
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        options = dict(f.metadata)
        flag = "--" + options.pop("flag", f.name).replace("_", "-")
        options.update(_argparse_type(hints[f.name], f.default))
        if f.default is MISSING:
            options["required"] = True
        elif f.default is not None and "action" not in options:
            options["help"] += f" (default: {_shown(f.default)})"
        parser.add_argument(flag, dest=f.name, default=_default(f.default), **options)
    return parser


def _argparse_type(hint, default) -> dict:
    """``type`` / ``nargs`` / ``action`` of an option from its field's annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) is not tuple else hint
    if base is bool:
        return {"action": argparse.BooleanOptionalAction if default else "store_true"}
    if typing.get_origin(base) is tuple:
        return {"type": typing.get_args(base)[0], "nargs": len(typing.get_args(base))}
    return {"type": base}


def _default(default):
    return None if default is MISSING else default


def _shown(default) -> str:
    return " ".join(map(str, default)) if isinstance(default, tuple) else str(default)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed :func:`build_parser` options (lists become tuples)."""
    values = {}
    for f in fields(TrainConfig):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**values)


def config_to_json(config: TrainConfig) -> dict:
    """The config as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(asdict(config)))
