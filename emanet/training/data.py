"""The training data stream: an endless, seeded sample order for each process and the loader
that augments the samples.

The order of samples is a function of ``(seed, epoch)`` and every sample's augmentation is drawn
from its own seed, a function of ``(seed, epoch, position)``. With the saved model, optimiser and
RNG states, a run that is interrupted and resumed therefore sees the same batches as one that
never stopped, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from emanet.data.formats import open_dataset, train_split
from emanet.data.segmentation import SegmentationDataset
from emanet.data.transforms import TrainTransform
from emanet.models.presets import ModelPreset
from emanet.runtime.device import usable_cpus

from .config import TrainConfig
from .run import Run

__all__ = [
    "EpochSampler",
    "SeededSamples",
    "build_loaders",
    "default_workers",
    "open_training_set",
]


def default_workers() -> int:
    """DataLoader workers per process: ``min(8, usable CPU cores per process)``."""
    return min(8, usable_cpus())


class EpochSampler(Sampler):
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


class SeededSamples(Dataset):
    """Item ``(index, sample_seed)``: ``transform.sample`` of ``dataset.load_pair(index)`` with
    the torch RNG seeded per sample, so every random draw (the crop as well as the colours
    applied later) is a function of the sample's seed alone.

    ``finish``: also apply ``transform.finish`` here, in the worker (for CPU training, where the
    main process's cores are the bottleneck; the result is the same, bit for bit). Otherwise
    the images stay uint8 and the training step finishes the batch on its device.
    """

    def __init__(
        self, dataset: SegmentationDataset, transform: TrainTransform, finish: bool = False
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


def open_training_set(config: TrainConfig) -> SegmentationDataset:
    """The split a run trains on (``config.train_split``, default
    :func:`~emanet.data.formats.train_split`), in the dataset's layout; its ``classes`` and
    ``palette`` are the model's."""
    split = config.train_split or train_split(config.data_root, config.data_format)
    return open_dataset(config.data_root, split, config.data_format)


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
    on_cpu = run.device.type == "cpu"  # on a GPU, colours and normalisation run there
    train_set = SeededSamples(open_training_set(config), transform, on_cpu)
    sampler = EpochSampler(
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
        val_set = open_dataset(config.data_root, "val", config.data_format)
    return loader, transform, val_set
