"""The trainer: mmsegmentation's 80k-iteration Cityscapes schedule, in one process or under
``torchrun`` (DDP), resumable exactly.

SGD (lr 0.01, momentum 0.9, weight decay 5e-4), a poly learning rate (power 0.9, down to 1e-4),
decode loss + 0.4 x auxiliary loss, ignore label 255. Read :func:`train` top to bottom: set up
the process, build the model, optimiser and data, then iterate :func:`train_step`, logging,
saving and validating on the way (the validation is ``emanet eval``'s loop).

``emanet train --help`` lists the options (see :mod:`emanet.training.config`); under ``torchrun``
every process runs ``python -m emanet.training`` with the same options.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from emanet.data.transforms import TrainTransform
from emanet.evaluation.evaluate import evaluate_segmenter
from emanet.fast.recompute import RecomputeNormReLU
from emanet.io.checkpoint import CLASSIFIER_KEYS, read_checkpoint, resolve_checkpoint
from emanet.io.keys import KeyReport
from emanet.io.pretrained import load_backbone
from emanet.models.presets import ModelPreset, get_preset
from emanet.models.segmentor import EMANet, build_model
from emanet.predict import Segmenter
from emanet.runtime.device import announce_compilation, compile_module, is_out_of_memory
from emanet.runtime.errors import OutOfMemory, UserError
from emanet.runtime.logs import configure_logging
from emanet.runtime.precision import autocast

from .config import NO_PRETRAINED, TrainConfig, build_parser, config_from_args
from .data import build_loaders, open_training_set
from .run import Run, setup_run
from .workdir import WorkDir, restore_state

__all__ = [
    "TrainingDiverged",
    "build_optimizer",
    "build_training_model",
    "init_from",
    "main",
    "poly_lr",
    "train",
    "train_step",
    "validate",
    "wrap_for_training",
]

log = logging.getLogger(__name__)


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(config: TrainConfig, progress: bool = True) -> tuple[EMANet, dict]:
    """Run (or resume) a training run; returns the trained model and the last validation
    metrics (empty without validation). Writes the files of :mod:`emanet.training.workdir`."""
    run = setup_run(config)
    preset = get_preset(config.preset)
    work_dir = WorkDir(config, run)
    resuming = config.resume and work_dir.latest.is_file()
    if config.resume and not resuming:
        log.info("--resume: no %s yet, starting from scratch", work_dir.latest)
    # The heads' outputs and the names and colours model.pth records: the training set's.
    train_set = open_training_set(config)
    classes, palette = train_set.classes, train_set.palette
    model = build_training_model(config, preset, run, resuming, classes)
    optimizer = build_optimizer(model, config, run)
    start = restore_state(work_dir.latest, model, optimizer, run) if resuming else 0
    work_dir.begin(start)
    net = wrap_for_training(model, config, run)  # what runs the step (DDP, compiled)
    loader, transform, val_set = build_loaders(config, preset, run, start)
    if config.snapshot_bases and start == 0:
        work_dir.save(model, optimizer, 0)
    last_val: dict = {}
    net.train()
    bar = tqdm(total=config.iters, initial=start, desc="train", dynamic_ncols=True,
               disable=not progress or run.rank != 0)  # fmt: skip
    tic, batches = time.perf_counter(), iter(loader)
    for iteration in range(start, config.iters):
        losses, lr = guarded_step(net, optimizer, transform, next(batches), iteration, config,
                                  run, work_dir)  # fmt: skip
        done = iteration + 1
        bar.update(1)
        if done % config.log_interval == 0 or done == config.iters:
            row = {"iter": done, "lr": lr, **{k: float(v) for k, v in losses.items()}}
            work_dir.log({**row, "time": time.perf_counter() - tic})
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
        if config.checkpoint_interval and done % config.checkpoint_interval == 0:
            work_dir.save(model, optimizer, done)
        if val_set is not None and (done % config.val_interval == 0 or done == config.iters):
            last_val = validate(model, val_set, run, config, progress)
            work_dir.log({"iter": done, **{k: last_val[k] for k in ("mIoU", "aAcc", "mAcc")}})
            net.train()
    bar.close()
    if work_dir.saved_at != config.iters:
        work_dir.save(model, optimizer, config.iters)
    work_dir.finish(model, config.iters, last_val, config.val_scale or preset.test_scale,
                    classes, palette)  # fmt: skip
    if run.world > 1:
        dist.barrier()
    return model, last_val


def build_training_model(
    config: TrainConfig,
    preset: ModelPreset,
    run: Run,
    resuming: bool,
    classes: tuple[str, ...] | None = None,
) -> EMANet:
    """The model this process trains: one output per class of ``classes`` (default: the
    training set's), seeded init, pretrained backbone, ``init`` weights, SyncBatchNorm under
    CUDA DDP, on the device, in the requested memory format."""
    torch.manual_seed(config.seed + run.rank)
    classes = classes or open_training_set(config).classes
    model = build_model(preset, num_classes=len(classes))
    source = pretrained_source(config, preset, resuming)
    if source is not None:
        load_backbone(model, source, progress=run.rank == 0)
    if config.init and not resuming:
        init_from(model, config.init, classes, progress=run.rank == 0)
    if run.world > 1 and run.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif run.world > 1:
        log.info("CPU/gloo run: SyncBatchNorm needs CUDA, BatchNorm statistics stay per process")
    model.to(run.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def init_from(
    model: EMANet, source: str, classes: tuple[str, ...], progress: bool = True
) -> KeyReport:
    """Start ``model`` from the checkpoint ``source`` (a path, URL, zoo or bundled name): every
    tensor whose name and shape fit is loaded (backbone, EM unit and its bases, the heads'
    convolutions); the classifiers keep their fresh initialisation when their shape differs
    or when the file names other classes. Logs what was reused and what is new."""
    checkpoint = read_checkpoint(resolve_checkpoint(source, progress=progress))
    state = dict(checkpoint.state_dict)
    dropped: tuple[str, ...] = ()
    if checkpoint.classes is not None and tuple(checkpoint.classes) != tuple(classes):
        dropped = tuple(key for key in CLASSIFIER_KEYS if key in state)
        for key in dropped:
            del state[key]
    report = KeyReport.compare(state, model.state_dict())
    model.load_state_dict({key: state[key] for key in report.loaded}, strict=False)
    log.info("--init %s", report.reuse_summary(str(checkpoint.path), dropped))
    return report


def pretrained_source(config: TrainConfig, preset: ModelPreset, resuming: bool) -> str | None:
    """The backbone weights a run starts from (``None``: none), as mmseg decides: the preset's
    ImageNet weights by default; none when ``init`` or a resumed state replaces them anyway;
    ``config.pretrained`` when given (``"none"`` for a random backbone)."""
    if config.pretrained is not None:
        return None if config.pretrained == NO_PRETRAINED else config.pretrained
    if config.init or resuming:
        return None
    return preset.pretrained


def build_optimizer(model: nn.Module, config: TrainConfig, run: Run) -> torch.optim.SGD:
    """mmseg's optimiser: SGD with momentum and weight decay over the trainable parameters (the
    learning rate is set at every step, see :func:`poly_lr`). On CUDA it is PyTorch's fused
    kernel: one launch updates every parameter, where the default runs several passes."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        fused=True if run.device.type == "cuda" else None,
    )


class TrainStep(nn.Module):
    """``forward`` = the model's losses: DDP synchronises gradients through ``__call__`` only.
    With ``recompute_norm_relu`` the pass stores less for backward (see emanet.fast.recompute)."""

    def __init__(self, model: EMANet, recompute_norm_relu: bool = False) -> None:
        super().__init__()
        self.model = model
        self.recompute_norm_relu = recompute_norm_relu

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.recompute_norm_relu and self.training and torch.is_grad_enabled():
            with RecomputeNormReLU(self.model):
                return self.model.forward_train(images, labels)
        return self.model.forward_train(images, labels)


def wrap_for_training(model: EMANet, config: TrainConfig, run: Run) -> nn.Module:
    """What :func:`train_step` calls: ``net(images, labels)`` -> the model's losses, under
    DistributedDataParallel in a distributed run, compiled with ``config.compile``, and in an
    eager run recomputing BatchNorm -> ReLU outputs with ``config.recompute_norm_relu``."""
    net: nn.Module = TrainStep(model, config.recompute_norm_relu and not config.compile)
    if run.world > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        net = DistributedDataParallel(net, device_ids=device_ids)
    if config.compile:
        compile_module(net)
        announce_compilation(f"the training step of {model.preset.name}")
    return net


def poly_lr(iteration: int, config: TrainConfig) -> float:
    """mmseg's PolyLR with ``eta_min``: ``(lr - min) * (1 - it / iters) ** power + min``."""
    progress = min(iteration, config.iters) / config.iters
    return (config.lr - config.min_lr) * (1.0 - progress) ** config.power + config.min_lr


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    transform: TrainTransform,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    iteration: int,
    config: TrainConfig,
    run: Run,
) -> tuple[dict[str, torch.Tensor], float]:
    """One SGD iteration on a loader batch, ``iteration`` iterations into the run: finish the
    augmentation on the device (uint8 crops; float crops were finished by the workers), set the
    poly learning rate, forward under autocast, refuse a non-finite loss, backward, step.

    Returns the losses (detached) and the learning rate used. Raises :class:`TrainingDiverged`
    when the loss is NaN or infinite (nothing was updated).
    """
    images, labels, params = (t.to(run.device, non_blocking=True) for t in batch)
    if images.dtype == torch.uint8:  # not finished in the workers (see build_loaders)
        images = transform.finish(images, params)
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    lr = poly_lr(iteration, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(run.precision, run.device):
        losses = net(images, labels.long())
    loss = losses["loss"]
    # Reading the loss waits for the GPU. In one process that wait comes after the backward pass
    # is queued, so the GPU never idles while the CPU launches it; several processes check
    # first, as a NaN loss would reach every rank's gradients through DDP's all-reduce.
    if run.world > 1:
        _check_finite(loss, iteration)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.world == 1:
        _check_finite(loss, iteration)
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}, lr


def _check_finite(loss: torch.Tensor, iteration: int) -> None:
    if not torch.isfinite(loss).item():
        raise TrainingDiverged(f"loss is {loss.item()} at iteration {iteration + 1}")


def guarded_step(net, optimizer, transform, batch, iteration, config, run, work_dir: WorkDir):
    """:func:`train_step`, with a diverged loss or an out-of-memory device turned into one line
    that says what is intact and what to do."""
    try:
        return train_step(net, optimizer, transform, batch, iteration, config, run)
    except TrainingDiverged as error:
        raise TrainingDiverged(
            f"{error}; {work_dir.intact()}: lower the learning rate or check the data"
        ) from None
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        crop = "x".join(map(str, batch[0].shape[-2:]))
        raise OutOfMemory(
            f"{run.device} ran out of memory in training iteration {iteration + 1} (a batch of "
            f"{len(batch[0])} crops of {crop}); {work_dir.intact()}. Use a smaller --batch-size or "
            "--crop-size (or free memory) and run again with --resume"
        ) from None


def validate(model: EMANet, dataset: Dataset, run: Run, config: TrainConfig, progress=True):
    """mIoU of ``model`` on ``dataset`` as ``emanet eval`` scores it, at the run's validation
    scale (``config.val_scale``, default the preset's), shared across ranks: the metrics of
    :func:`~emanet.evaluation.evaluate.evaluate_segmenter`."""
    segmenter = Segmenter(
        model, dataset.classes, dataset.palette, device=run.device, test_scale=config.val_scale
    )
    report = evaluate_segmenter(
        segmenter,
        dataset,
        max_images=config.val_max_images,
        progress=progress,
        rank=run.rank,
        world_size=run.world,
    )
    return report["metrics"]


def main(argv: list[str] | None = None) -> int:
    """``python -m emanet.training`` (what torchrun launches); ``emanet train`` is the same."""
    args = build_parser().parse_args(argv)
    configure_logging()
    return run_from_args(args)


def run_from_args(args: argparse.Namespace) -> int:
    """Train from parsed arguments; the process group (if any) is closed even on failure."""
    try:
        _, metrics = train(config_from_args(args))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if metrics:
        log.info("final mIoU %.2f", metrics["mIoU"])
    return 0
