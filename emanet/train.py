"""Iteration-based trainer, single process or ``torchrun`` DDP, with exact resume.

mmsegmentation's 80k Cityscapes schedule: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), poly
learning rate (power 0.9, down to 1e-4), decode loss + 0.4 x auxiliary loss, ignore label 255.

Reproducibility is designed in rather than hoped for: the order of samples is a function of
``(seed, epoch)`` and every sample's augmentation is drawn from its own seed, a function of
``(seed, epoch, position)``. Together with the saved model, optimiser and RNG states this makes a
run that is interrupted and resumed produce the same weights as one that never stopped, whatever
the number of DataLoader workers.

Run ``python -m emanet.train --help`` (or ``emanet train``); under ``torchrun`` every process
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .checkpoint import atomic_save, load_checkpoint, save_checkpoint
from .data.cityscapes import CLASSES, PALETTE, CityscapesDataset
from .data.transforms import TestTransform, TrainTransform
from .evaluate import IoUMetric
from .precision import autocast, check_precision, default_precision
from .presets import get_preset
from .segmentor import EMANet, build_model

__all__ = ["TrainConfig", "train", "poly_lr", "main", "TrainingDiverged"]

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Paths are strings so that it round-trips as JSON."""

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
    num_workers: int = 2
    seed: int = 0
    init: str | None = None
    resume: bool = False
    device: str | None = None
    # None: bf16 autocast on CUDA, fp32 elsewhere (see emanet.precision).
    precision: str | None = None
    channels_last: bool = False
    snapshot_bases: bool = False
    extra: dict = field(default_factory=dict)


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


class _SeededTransform(Dataset):
    """Applies ``transform`` to ``dataset[index]`` with the torch RNG seeded per sample."""

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, sample_seed = item
        image, label = self.dataset[index]
        # fork_rng: the main process's generator (dropout) is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.transform(image, label)


def _setup_distributed(device: str | None) -> tuple[int, int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, local_rank, dev


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _TrainStep(nn.Module):
    """``forward`` = the model's losses: DDP synchronises gradients through ``__call__`` only."""

    def __init__(self, model: EMANet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_train(images, labels)


def _unwrap(net: nn.Module) -> EMANet:
    if isinstance(net, DistributedDataParallel):
        net = net.module
    return net.model if isinstance(net, _TrainStep) else net


def _config_to_json(config: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


@torch.no_grad()
def validate(
    model: EMANet,
    dataset: Dataset,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """mIoU of ``model`` on ``dataset`` (items from ``TestTransform``), shared across ranks."""
    model.eval()
    metric = IoUMetric(num_classes=model.num_classes)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = range(rank, count, world)
    for index in tqdm(indices, desc="val", disable=not progress or rank != 0, leave=False):
        image, label = dataset[index]
        logits = model.inference(image.unsqueeze(0).to(device))
        logits = nn.functional.interpolate(
            logits.float(),
            size=label.shape[-2:],
            mode="bilinear",
            align_corners=model.align_corners,
        )
        metric.update(logits.argmax(1).cpu(), label.unsqueeze(0))
    metric.all_reduce()
    return metric.compute()


def train(config: TrainConfig, progress: bool = True) -> tuple[EMANet, dict]:
    """Run (or resume) a training run; returns the trained model and the last validation
    metrics (empty without validation).

    Writes into ``work_dir``: ``config.json``, ``latest.pth`` (full training state, atomic,
    every ``checkpoint_interval`` iterations and at the end), ``model.pth`` (weights in our
    format, at the end), ``metrics.jsonl`` and ``curves.png``.
    """
    rank, world, _, device = _setup_distributed(config.device)
    preset = get_preset(config.preset)
    work_dir = Path(config.work_dir)
    if rank == 0:
        work_dir.mkdir(parents=True, exist_ok=True)
    latest = work_dir / "latest.pth"

    torch.manual_seed(config.seed + rank)
    model = build_model(preset)
    if config.init:
        load_checkpoint(model, config.init, strict=False)
    if world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif world > 1:
        log.info("CPU/gloo run: SyncBatchNorm needs CUDA, BatchNorm statistics stay per process")
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    precision = check_precision(config.precision or default_precision(device), device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    start = 0
    if config.resume and latest.is_file():
        state = torch.load(latest, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0], device)
        log.info("resumed from %s at iteration %d", latest, start)
    elif config.resume:
        log.info("--resume: no %s yet, starting from scratch", latest)
    net: nn.Module = _TrainStep(model)
    if world > 1:
        net = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    crop = tuple(config.crop_size or preset.crop_size)
    scale = tuple(config.train_scale or preset.train_scale)
    train_set = _SeededTransform(
        CityscapesDataset(config.data_root, "train"),
        TrainTransform(crop_size=crop, scale=scale, ratio_range=tuple(config.ratio_range)),
    )
    sampler = _EpochSampler(len(train_set), config.seed, rank, world, start * config.batch_size)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(config.seed),
    )
    val_set = None
    if config.val_interval:
        val_set = CityscapesDataset(
            config.data_root,
            "val",
            transforms=TestTransform(scale=tuple(config.val_scale or preset.test_scale)),
        )

    metrics_path = work_dir / "metrics.jsonl"
    if rank == 0:
        (work_dir / "config.json").write_text(json.dumps(_config_to_json(config), indent=2))
        if start == 0 and metrics_path.exists():
            metrics_path.unlink()

    def log_row(row: dict) -> None:
        if rank == 0:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def save_state(iteration: int) -> None:
        rngs = [_rng_state(device)]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, {k: v.cpu() for k, v in rngs[0].items()})
            rngs = gathered
        if rank == 0:
            atomic_save(
                {
                    "model": _unwrap(net).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "iteration": iteration,
                    "rng": rngs,
                    "preset": preset.name,
                    "config": _config_to_json(config),
                },
                latest,
            )
        if config.snapshot_bases and rank == 0:
            bases = _unwrap(net).em_unit.bases.detach().cpu().clone()
            atomic_save(bases, work_dir / "bases" / f"iter_{iteration:07d}.pth")

    last_val: dict = {}
    bar = tqdm(
        total=config.iters,
        initial=start,
        desc="train",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    if config.snapshot_bases and start == 0:
        (work_dir / "bases").mkdir(exist_ok=True)
        save_state(0)
    net.train()
    tic = time.perf_counter()
    iteration = start
    data_iter = iter(loader)
    while iteration < config.iters:
        images, labels = next(data_iter)
        images = images.to(device, non_blocking=True)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        lr = poly_lr(iteration, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(precision, device):
            losses = net(images, labels)
        loss = losses["loss"]
        if not torch.isfinite(loss).item():
            where = (
                f"the last good checkpoint is {latest}" if latest.exists() else "no checkpoint yet"
            )
            raise TrainingDiverged(
                f"loss is {loss.item()} at iteration {iteration + 1} ({where}); "
                "lower the learning rate or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        iteration += 1
        bar.update(1)
        if iteration % config.log_interval == 0 or iteration == config.iters:
            elapsed = time.perf_counter() - tic
            row = {
                "iter": iteration,
                "lr": lr,
                **{k: float(v.detach()) for k, v in losses.items()},
                "time": elapsed,
            }
            log_row(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
        if config.checkpoint_interval and iteration % config.checkpoint_interval == 0:
            save_state(iteration)
        if val_set is not None and (
            iteration % config.val_interval == 0 or iteration == config.iters
        ):
            last_val = validate(
                _unwrap(net), val_set, device, rank, world, config.val_max_images, progress
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
        save_state(iteration)
    if rank == 0:
        save_checkpoint(
            work_dir / "model.pth",
            _unwrap(net),
            preset=preset.name,
            classes=list(CLASSES),
            palette=[tuple(c) for c in PALETTE],
            meta={"iterations": iteration, "config": _config_to_json(config), "val": last_val},
        )
        try:
            from .viz import plot_training_curves

            plot_training_curves(metrics_path).savefig(work_dir / "curves.png", dpi=100)
        except Exception as error:  # a plot must never lose a finished run
            log.warning("could not draw the training curves: %s", error)
    if world > 1:
        dist.barrier()
    return _unwrap(net), last_val


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="emanet train", description=__doc__)
    parser.add_argument("--preset", required=True, help="preset name, e.g. emanet_r18-d8_toycity")
    parser.add_argument("--data", required=True, help="Cityscapes root (leftImg8bit/, gtFine/)")
    parser.add_argument("--work-dir", required=True, help="checkpoints, logs and curves go here")
    parser.add_argument("--iters", type=int, default=80_000)
    parser.add_argument("--batch-size", type=int, default=2, help="per process")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument(
        "--scale",
        type=int,
        nargs=2,
        metavar=("LONG", "SHORT"),
        help="random-resize base scale (default: the preset's, 2048 1024)",
    )
    parser.add_argument("--val-scale", type=int, nargs=2, metavar=("LONG", "SHORT"))
    parser.add_argument("--checkpoint-interval", type=int, default=1000)
    parser.add_argument("--val-interval", type=int, default=0, help="0: no periodic validation")
    parser.add_argument("--val-max-images", type=int)
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", help="initial weights: path, URL or zoo name (non-strict)")
    parser.add_argument("--resume", action="store_true", help="continue from work-dir/latest.pth")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        help="autocast precision (default: bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last memory format (faster convolutions on CPU and on GPUs in bf16)",
    )
    parser.add_argument(
        "--snapshot-bases",
        action="store_true",
        help="save the EM bases at every checkpoint (for the tutorials)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        preset=args.preset,
        data_root=args.data,
        work_dir=args.work_dir,
        iters=args.iters,
        batch_size=args.batch_size,
        lr=args.lr,
        crop_size=tuple(args.crop_size) if args.crop_size else None,
        train_scale=tuple(args.scale) if args.scale else None,
        val_scale=tuple(args.val_scale) if args.val_scale else None,
        checkpoint_interval=args.checkpoint_interval,
        val_interval=args.val_interval,
        val_max_images=args.val_max_images,
        log_interval=args.log_interval,
        num_workers=args.workers,
        seed=args.seed,
        init=args.init,
        resume=args.resume,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        snapshot_bases=args.snapshot_bases,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m emanet.train`` (what torchrun launches); ``emanet train`` is the same."""
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
