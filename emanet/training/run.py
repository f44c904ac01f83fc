"""This process's place in a training run: its rank among the processes ``torchrun`` started,
its device and its precision."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from emanet.runtime.device import resolve_device
from emanet.runtime.precision import check_precision, default_precision

from .config import TRAIN_PRECISIONS, TrainConfig

__all__ = ["Run", "setup_run"]


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
