"""Iteration-based trainer, single process or ``torchrun`` DDP, with exact resume.

mmsegmentation's 80k Cityscapes schedule: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), poly
learning rate (power 0.9, down to 1e-4), decode loss + 0.4 x auxiliary loss, ignore label 255.

Reproducibility is designed in rather than hoped for: the order of samples is a function of
``(seed, epoch)`` and every sample's augmentation is drawn from its own seed, a function of
``(seed, epoch, position)``. Together with the saved model, optimiser and RNG states this makes a
run that is interrupted and resumed produce the same weights as one that never stopped, whatever
the number of DataLoader workers.

Run ``python -m emanet.training.train --help`` (or ``emanet train``); under ``torchrun`` every
process
runs the same command and the ranks are read from the environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from emanet.data.cityscapes import CLASSES, PALETTE, CityscapesDataset
from emanet.data.transforms import TrainTransform
from emanet.evaluation.evaluate import evaluate_segmenter
from emanet.fast.recompute import RecomputeNormReLU
from emanet.io.atomic import atomic_save
from emanet.io.checkpoint import load_checkpoint, save_checkpoint
from emanet.io.pretrained import load_backbone
from emanet.models.presets import ModelPreset, get_preset
from emanet.models.segmentor import EMANet, build_model
from emanet.predict import Segmenter
from emanet.runtime.device import announce_compilation, compile_module, resolve_device, usable_cpus
from emanet.runtime.precision import autocast, check_precision, default_precision

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "build_loaders",
    "build_training_model",
    "default_workers",
    "main",
    "poly_lr",
    "restore_state",
    "save_state",
    "train",
    "train_step",
    "wrap_for_training",
]

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything a training run needs, and the one place of every default (``emanet train``'s
    options take theirs from here). Paths are strings so that it round-trips as JSON."""

    preset: str
    data_root: str
    work_dir: str
    iters: int = 80_000
    batch_size: int = 2
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    min_lr: float = 1e-4
    # None: the preset's (mmseg's) values; set them smaller for small data.
    crop_size: tuple[int, int] | None = None
    train_scale: tuple[int, int] | None = None
    ratio_range: tuple[float, float] = (0.5, 2.0)
    val_scale: tuple[int, int] | None = None
    checkpoint_interval: int = 1000
    val_interval: int = 0
    val_max_images: int | None = None
    log_interval: int = 10
    # None: min(8, the CPU cores this process may use), see default_workers().
    num_workers: int | None = None
    seed: int = 0
    # None: the preset's ImageNet backbone (mmseg's init), unless ``init`` is given or the run
    # resumes; "none": a random backbone; else a source for emanet.load_backbone.
    pretrained: str | None = None
    init: str | None = None
    resume: bool = False
    device: str | None = None
    # None: bf16 autocast on CUDA, fp32 elsewhere (see emanet.runtime.precision).
    precision: str | None = None
    # NHWC model and images: GPU tensor cores (bf16; TF32 for fp32 convolutions) and oneDNN's
    # CPU kernels convolve NHWC natively; given NCHW, cuDNN transposes around every convolution,
    # forward and backward. R-50 512x1024 batch 2 on 2 CPU cores: 16 % (bf16) and 10 % (fp32)
    # less time a step than NCHW (README, "Data, training and evaluation").
    channels_last: bool = True
    compile: bool = False
    # Eager runs recompute BatchNorm -> ReLU outputs in the backward pass instead of storing
    # them (emanet.fast.recompute); compiled runs leave that choice to the compiler.
    recompute_norm_relu: bool = True
    snapshot_bases: bool = False


#: ``TrainConfig.pretrained`` value that asks for a randomly initialised backbone.
NO_PRETRAINED = "none"

#: Training precisions: fp16 would need loss scaling, which bf16 (same speed) does not.
TRAIN_PRECISIONS = ("bf16", "fp32")


def default_workers() -> int:
    """DataLoader workers per process: ``min(8, usable CPU cores per process)``."""
    return min(8, usable_cpus())


def poly_lr(iteration: int, config: TrainConfig) -> float:
    """mmseg's PolyLR with ``eta_min``: ``(lr - min) * (1 - it / iters) ** power + min``."""
    progress = min(iteration, config.iters) / config.iters
    return (config.lr - config.min_lr) * (1.0 - progress) ** config.power + config.min_lr


class _EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` for this rank, epoch after epoch, from a start position.

    The permutation of epoch ``e`` comes from ``seed + e``; each rank takes every
    ``world``-th index of it (padding by wrap-around so that ranks have equal counts, as
    DistributedSampler does). ``start`` is the number of samples this rank already consumed.
    """

    def __init__(self, size: int, seed: int, rank: int, world: int, start: int = 0) -> None:
        self.size, self.seed, self.rank, self.world, self.start = size, seed, rank, world, start
        self.per_rank = math.ceil(size / world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, position = divmod(self.start, self.per_rank)
        while True:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
            order += order[: self.per_rank * self.world - self.size]
            mine = order[self.rank :: self.world]
            for pos in range(position, self.per_rank):
                serial = epoch * self.per_rank + pos
                yield mine[pos], (self.seed * 1_000_003 + serial * self.world + self.rank)
            epoch, position = epoch + 1, 0

    def __len__(self) -> int:  # an endless stream; DataLoader only needs a number
        return 2**62


class _SeededSamples(Dataset):
    """Item ``(index, sample_seed)``: ``transform.sample`` of ``dataset.load_pair(index)`` with
    the torch RNG seeded per sample, so every random draw (the crop as well as the colours
    applied later) is a function of the sample's seed alone.

    ``finish``: also apply ``transform.finish`` here, in the worker (for CPU training, where the
    main process's cores are the bottleneck; the result is the same, bit for bit). Otherwise
    the images stay uint8 and the training step finishes the batch on its device.
    """

    def __init__(
        self, dataset: CityscapesDataset, transform: TrainTransform, finish: bool = False
    ) -> None:
        self.dataset, self.transform, self.finish = dataset, transform, finish

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, sample_seed = item
        image, label = self.dataset.load_pair(index)
        # fork_rng: the main process's generator (dropout) is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            image, label, params = self.transform.sample(image, label)
        if self.finish:
            image = self.transform.finish(image[None], params[None])[0]
        return image, label, params


@dataclass(frozen=True)
class Run:
    """This process's place in a (possibly distributed) run."""

    rank: int
    world: int
    device: torch.device
    precision: str


def setup_run(config: TrainConfig) -> Run:
    """Read the ranks torchrun set, pick the device, open the process group (NCCL on CUDA,
    gloo elsewhere) and check the precision."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # Fixed crop sizes: let cuDNN pick its fastest kernels once (mmseg's cudnn_benchmark).
        torch.backends.cudnn.benchmark = True
    precision = check_precision(config.precision or default_precision(device), device)
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(
            f"training runs in {' or '.join(TRAIN_PRECISIONS)}, not {precision} (fp16 would "
            "need loss scaling; bf16 is as fast)"
        )
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Run(rank=rank, world=world, device=device, precision=precision)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    # Generator states are CPU byte tensors whatever device the checkpoint was mapped to.
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class _TrainStep(nn.Module):
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
    net: nn.Module = _TrainStep(model, config.recompute_norm_relu and not config.compile)
    if run.world > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        net = DistributedDataParallel(net, device_ids=device_ids)
    if config.compile:
        compile_module(net)
        announce_compilation(f"the training step of {model.preset.name}")
    return net


def _config_to_json(config: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def pretrained_source(config: TrainConfig, preset: ModelPreset, resuming: bool) -> str | None:
    """The backbone weights a run starts from (``None``: none), as mmseg decides: the preset's
    ImageNet weights by default; none when ``init`` or a resumed state replaces them anyway;
    ``config.pretrained`` when given (``"none"`` for a random backbone)."""
    if config.pretrained is not None:
        return None if config.pretrained == NO_PRETRAINED else config.pretrained
    if config.init or resuming:
        return None
    return preset.pretrained


def build_training_model(
    config: TrainConfig, preset: ModelPreset, run: Run, resuming: bool
) -> EMANet:
    """The model this process trains: seeded init, pretrained backbone, ``init`` weights,
    SyncBatchNorm under CUDA DDP, on the device, in the requested memory format."""
    torch.manual_seed(config.seed + run.rank)
    model = build_model(preset)
    source = pretrained_source(config, preset, resuming)
    if source is not None:
        load_backbone(model, source, progress=run.rank == 0)
    if config.init:
        load_checkpoint(model, config.init, strict=False)
    if run.world > 1 and run.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif run.world > 1:
        log.info("CPU/gloo run: SyncBatchNorm needs CUDA, BatchNorm statistics stay per process")
    model.to(run.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


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


def build_loaders(
    config: TrainConfig, preset: ModelPreset, run: Run, start: int = 0
) -> tuple[DataLoader, TrainTransform, Dataset | None]:
    """The endless training loader from iteration ``start`` on (items: crops, labels and
    augmentation parameters, see :meth:`TrainTransform.sample`), the transform whose
    :meth:`~TrainTransform.finish` completes its batches, and the validation set (``None``
    without periodic validation). For a GPU the crops are uint8 and the step finishes them
    there; for the CPU the workers finish them (float32), beside the main process."""
    transform = TrainTransform(
        crop_size=tuple(config.crop_size or preset.crop_size),
        scale=tuple(config.train_scale or preset.train_scale),
        ratio_range=tuple(config.ratio_range),
    )
    train_set = _SeededSamples(
        CityscapesDataset(config.data_root, "train"),
        transform,
        finish=run.device.type == "cpu",  # on a GPU, colours and normalisation run there
    )
    sampler = _EpochSampler(
        len(train_set), config.seed, run.rank, run.world, start * config.batch_size
    )
    workers = default_workers() if config.num_workers is None else config.num_workers
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=run.device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(config.seed),
    )
    val_set = None
    if config.val_interval:
        val_set = CityscapesDataset(config.data_root, "val")
    return loader, transform, val_set


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    transform: TrainTransform,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    iteration: int,
    config: TrainConfig,
    run: Run,
) -> tuple[dict[str, torch.Tensor], float]:
    """One SGD iteration on a loader batch: finish the augmentation on the device (uint8
    crops; float crops were finished by the workers), set the poly learning rate, forward
    under autocast, refuse a non-finite loss, backward, step.

    Returns the losses (detached) and the learning rate used.

    Raises:
        TrainingDiverged: the loss is NaN or infinite (nothing was updated).
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


def save_state(
    path: Path,
    model: EMANet,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    config: TrainConfig,
    run: Run,
) -> None:
    """Write the full training state (model, optimiser, iteration, every rank's RNG states)
    atomically to ``path``; collective under DDP (every rank calls it, rank 0 writes)."""
    rngs = [_rng_state(run.device)]
    if run.world > 1:
        gathered = [None] * run.world
        dist.all_gather_object(gathered, {k: v.cpu() for k, v in rngs[0].items()})
        rngs = gathered
    if run.rank == 0:
        atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
                "rng": rngs,
                "preset": model.preset.name,
                "config": _config_to_json(config),
            },
            path,
        )
        if config.snapshot_bases:
            bases = model.em_unit.bases.detach().cpu().clone()
            atomic_save(bases, path.parent / "bases" / f"iter_{iteration:07d}.pth")


def restore_state(path: Path, model: EMANet, optimizer: torch.optim.Optimizer, run: Run) -> int:
    """Load a :func:`save_state` file into ``model`` and ``optimizer``, restore this rank's RNG
    states, and return the iteration it was saved at."""
    state = torch.load(path, map_location=run.device, weights_only=True)
    model.load_state_dict(state["model"])
    # How the update runs (the fused kernel on CUDA) is this run's device's choice, not the
    # saving run's: load_state_dict would bring back the saved flags with the momenta.
    implementation = [
        {key: group[key] for key in ("fused", "foreach") if key in group}
        for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(state["optimizer"])
    for group, keys in zip(optimizer.param_groups, implementation, strict=True):
        group.update(keys)
    rngs = state["rng"]
    _set_rng_state(rngs[run.rank] if run.rank < len(rngs) else rngs[0], run.device)
    start = int(state["iteration"])
    log.info("resumed from %s at iteration %d", path, start)
    return start


def validate(
    model: EMANet,
    dataset: Dataset,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    max_images: int | None = None,
    progress: bool = True,
    scale: tuple[int, int] | None = None,
) -> dict:
    """mIoU of ``model`` on ``dataset`` as ``emanet eval`` scores it (shared across ranks).

    ``scale``: the test scale (default: the preset's). Returns the metrics of
    :func:`~emanet.evaluation.evaluate.evaluate_segmenter`.
    """
    segmenter = Segmenter(model, CLASSES, PALETTE, device=device, test_scale=scale)
    return evaluate_segmenter(
        segmenter, dataset, max_images=max_images, progress=progress, rank=rank, world_size=world
    )["metrics"]


def train(config: TrainConfig, progress: bool = True) -> tuple[EMANet, dict]:
    """Run (or resume) a training run; returns the trained model and the last validation
    metrics (empty without validation).

    Writes into ``work_dir``: ``config.json``, ``latest.pth`` (full training state, atomic,
    every ``checkpoint_interval`` iterations and at the end), ``model.pth`` (weights in our
    format, at the end), ``metrics.jsonl`` and ``curves.png``.
    """
    run = setup_run(config)
    preset = get_preset(config.preset)
    work_dir = Path(config.work_dir)
    if run.rank == 0:
        work_dir.mkdir(parents=True, exist_ok=True)
    latest = work_dir / "latest.pth"
    resuming = config.resume and latest.is_file()
    if config.resume and not resuming:
        log.info("--resume: no %s yet, starting from scratch", latest)

    raw_model = build_training_model(config, preset, run, resuming)
    optimizer = build_optimizer(raw_model, config, run)
    start = restore_state(latest, raw_model, optimizer, run) if resuming else 0
    # raw_model: the EMANet (saved, validated); net: what runs the step (DDP, compiled).
    net = wrap_for_training(raw_model, config, run)
    loader, transform, val_set = build_loaders(config, preset, run, start)

    metrics_path = work_dir / "metrics.jsonl"
    if run.rank == 0:
        (work_dir / "config.json").write_text(json.dumps(_config_to_json(config), indent=2))
        if start == 0 and metrics_path.exists():
            metrics_path.unlink()

    def log_row(row: dict) -> None:
        if run.rank == 0:
            _append_row(metrics_path, row)

    last_val: dict = {}
    bar = tqdm(
        total=config.iters,
        initial=start,
        desc="train",
        disable=not progress or run.rank != 0,
        dynamic_ncols=True,
    )
    if config.snapshot_bases and start == 0:
        (work_dir / "bases").mkdir(exist_ok=True)
        save_state(latest, raw_model, optimizer, 0, config, run)
    net.train()
    tic = time.perf_counter()
    iteration = start
    batches = iter(loader)
    while iteration < config.iters:
        try:
            losses, lr = train_step(
                net, optimizer, transform, next(batches), iteration, config, run
            )
        except TrainingDiverged as error:
            where = (
                f"the last good checkpoint is {latest}" if latest.exists() else "no checkpoint yet"
            )
            raise TrainingDiverged(
                f"{error} ({where}); lower the learning rate or check the data"
            ) from None
        iteration += 1
        bar.update(1)
        if iteration % config.log_interval == 0 or iteration == config.iters:
            row = {
                "iter": iteration,
                "lr": lr,
                **{k: float(v) for k, v in losses.items()},
                "time": time.perf_counter() - tic,
            }
            log_row(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
        if config.checkpoint_interval and iteration % config.checkpoint_interval == 0:
            save_state(latest, raw_model, optimizer, iteration, config, run)
        if val_set is not None and (
            iteration % config.val_interval == 0 or iteration == config.iters
        ):
            last_val = validate(
                raw_model,
                val_set,
                run.device,
                run.rank,
                run.world,
                config.val_max_images,
                progress,
                scale=config.val_scale,
            )
            log_row(
                {
                    "iter": iteration,
                    "mIoU": last_val["mIoU"],
                    "aAcc": last_val["aAcc"],
                    "mAcc": last_val["mAcc"],
                }
            )
            net.train()
    bar.close()
    if config.checkpoint_interval == 0 or iteration % config.checkpoint_interval:
        save_state(latest, raw_model, optimizer, iteration, config, run)
    if run.rank == 0:
        _write_results(work_dir, raw_model, config, iteration, last_val, metrics_path)
    if run.world > 1:
        dist.barrier()
    return raw_model, last_val


def _append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _write_results(
    work_dir: Path,
    model: EMANet,
    config: TrainConfig,
    iteration: int,
    last_val: dict,
    metrics_path: Path,
) -> None:
    """``model.pth`` (our format) and ``curves.png`` of a finished run."""
    save_checkpoint(
        work_dir / "model.pth",
        model,
        preset=model.preset.name,
        classes=list(CLASSES),
        palette=[tuple(c) for c in PALETTE],
        meta={"iterations": iteration, "config": _config_to_json(config), "val": last_val},
    )
    try:
        from emanet.viz import plot_training_curves

        plot_training_curves(metrics_path).savefig(work_dir / "curves.png", dpi=100)
    except Exception as error:  # a plot must never lose a finished run
        log.warning("could not draw the training curves: %s", error)


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``emanet train``'s options; every default is :class:`TrainConfig`'s and each option's
    ``dest`` is the field it sets."""
    parser = parser or argparse.ArgumentParser(prog="emanet train", description=__doc__)
    d = _DEFAULTS
    parser.add_argument("--preset", required=True, help="preset name, e.g. emanet_r18-d8_toycity")
    parser.add_argument(
        "--data", dest="data_root", required=True, help="Cityscapes root (leftImg8bit/, gtFine/)"
    )
    parser.add_argument("--work-dir", required=True, help="checkpoints, logs and curves go here")
    parser.add_argument("--iters", type=int, default=d["iters"], help=f"default {d['iters']}")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=d["batch_size"],
        help=f"per process (default {d['batch_size']})",
    )
    parser.add_argument("--lr", type=float, default=d["lr"], help=f"default {d['lr']}")
    parser.add_argument(
        "--crop-size", type=int, nargs=2, metavar=("H", "W"), help="default: the preset's"
    )
    parser.add_argument(
        "--scale",
        dest="train_scale",
        type=int,
        nargs=2,
        metavar=("LONG", "SHORT"),
        help="random-resize base scale (default: the preset's, 2048 1024)",
    )
    parser.add_argument("--val-scale", type=int, nargs=2, metavar=("LONG", "SHORT"))
    parser.add_argument(
        "--checkpoint-interval",
        type=int,
        default=d["checkpoint_interval"],
        help=f"iterations between latest.pth saves (default {d['checkpoint_interval']})",
    )
    parser.add_argument(
        "--val-interval",
        type=int,
        default=d["val_interval"],
        help=f"iterations between validations, 0: none (default {d['val_interval']})",
    )
    parser.add_argument("--val-max-images", type=int, default=d["val_max_images"])
    parser.add_argument(
        "--log-interval", type=int, default=d["log_interval"], help=f"default {d['log_interval']}"
    )
    parser.add_argument(
        "--workers",
        dest="num_workers",
        type=int,
        default=d["num_workers"],
        help="DataLoader workers per process (default: min(8, usable CPU cores per process))",
    )
    parser.add_argument("--seed", type=int, default=d["seed"], help=f"default {d['seed']}")
    parser.add_argument(
        "--pretrained",
        default=d["pretrained"],
        help="backbone weights: open-mmlab://resnet50_v1c, a URL or a path, or 'none' "
        "(default: the preset's ImageNet backbone, none with --init or when resuming)",
    )
    parser.add_argument("--init", help="initial weights: path, URL or zoo name (non-strict)")
    parser.add_argument("--resume", action="store_true", help="continue from work-dir/latest.pth")
    parser.add_argument(
        "--device", help="cpu, cuda (this process's GPU: LOCAL_RANK's under torchrun), cuda:N"
    )
    parser.add_argument(
        "--precision",
        choices=TRAIN_PRECISIONS,
        default=d["precision"],
        help="autocast precision (default: bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=d["channels_last"],
        help="channels_last (NHWC) memory format (default on; --no-channels-last: NCHW)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step (the first iterations compile)",
    )
    parser.add_argument(
        "--recompute-norm-relu",
        action=argparse.BooleanOptionalAction,
        default=d["recompute_norm_relu"],
        help="recompute BatchNorm->ReLU outputs in the backward pass instead of storing them "
        "(less memory, one more elementwise pass; eager runs only; default on)",
    )
    parser.add_argument(
        "--snapshot-bases",
        action="store_true",
        help="save the EM bases at every checkpoint (for the tutorials)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed :func:`build_parser` options (lists become tuples)."""
    values = {}
    for f in fields(TrainConfig):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """``python -m emanet.training.train`` (what torchrun launches); ``emanet train`` is the
    same."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    raise SystemExit(main())
