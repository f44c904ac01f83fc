"""What every dataset format shares: a dataset of image/label file pairs with its class names
and palette, the report of :func:`emanet.data.check_dataset`, and the checks of one pair.

A label file holds one channel of class ids (grey or palette PNG: the palette indices are the
ids), ``255`` = ignore. A format whose files store ids otherwise converts them in
:meth:`SegmentationDataset.decode_label` (Cityscapes' labelIds, ADE20K's ``reduce_zero_label``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from emanet.io.images import read_label, read_rgb
from emanet.runtime.errors import UserError

__all__ = [
    "IGNORE_INDEX",
    "DatasetError",
    "DatasetReport",
    "SegmentationDataset",
    "check_pairs",
    "pair_by_stem",
    "reduce_zero_label",
]

log = logging.getLogger(__name__)

#: The class id of every pixel that is not scored (loss and metrics skip it).
IGNORE_INDEX = 255


class DatasetError(UserError, ValueError):
    """A dataset file holds what it must not (a label map of the wrong kind or size);
    the message names the file. Missing or unreadable files raise ``OSError`` instead."""


def reduce_zero_label(values: np.ndarray) -> np.ndarray:
    """mmsegmentation's ``reduce_zero_label``: 0 ("other") -> 255, every other id - 1 (uint8)."""
    values = np.asarray(values).astype(np.int64)
    return np.where(values == 0, IGNORE_INDEX, values - 1).clip(0, 255).astype(np.uint8)


def _invalid_values(values: np.ndarray, num_classes: int) -> list[int]:
    """The values of a label map that are neither class ids ``0 .. num_classes - 1`` nor 255."""
    present = np.unique(values)
    return [int(v) for v in present if not (0 <= v < num_classes or v == IGNORE_INDEX)]


class SegmentationDataset(Dataset):
    """Images and class-id labels of one split: ``dataset[i]`` is ``(image, label)``, a PIL RGB
    image and a PIL ``L`` image of the same size (ids, 255 = ignore), or
    ``transforms(image, label)`` when ``transforms`` is given.

    Attributes:
        root, split: where the pairs come from.
        images, labels: the files of the ``pairs`` given, pair by pair.
        classes, palette: the class names and their ``(r, g, b)`` colours, in id order.
        format: the layout's name (``"cityscapes"``, ``"voc"``, ``"ade20k"``, ``"folder"``).
    """

    format = "pairs"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        pairs: Sequence[tuple[Path, Path]],
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        transforms: Callable | None = None,
    ) -> None:
        self.root, self.split, self.transforms = Path(root), split, transforms
        self.images = [image for image, _ in pairs]
        self.labels = [label for _, label in pairs]
        self.classes = tuple(classes)
        self.palette = tuple(tuple(int(v) for v in color) for color in palette)
        if not self.images:
            raise FileNotFoundError(f"no image/label pairs in split {split!r} of {self.root}")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}) [{len(self)}]"

    def decode_label(self, values: np.ndarray, path: Path) -> np.ndarray:
        """The class ids of a label file's stored values (here: checked, as they are)."""
        found = _invalid_values(values, len(self.classes))
        if found:
            raise DatasetError(
                f"{path}: values {found[:10]} are not class ids (0-{len(self.classes) - 1} or 255)"
            )
        return values.astype(np.uint8, copy=False)

    def load_label(self, index: int) -> np.ndarray:
        """The ``(H, W)`` uint8 class ids of image ``index``.

        Raises:
            OSError: the file cannot be decoded (the message names it).
            DatasetError: the map has several channels or holds values that are no class id.
        """
        path = self.labels[index]
        values = read_label(path)
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.integer):
            raise DatasetError(
                f"{path}: a label map must be one channel of integers, "
                f"got shape {values.shape} of {values.dtype}"
            )
        return self.decode_label(values, path)

    def load_pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``index`` as ``(3, H, W)`` uint8 RGB and its ``(H, W)`` uint8 class ids, as
        tensors (what the trainer and the evaluation read).

        Raises:
            OSError, DatasetError: as :meth:`load_label`, or the two sizes differ.
        """
        image = read_rgb(self.images[index])
        label = self.load_label(index)
        if tuple(image.shape[1:]) != label.shape:
            raise DatasetError(
                f"{self.images[index]} is {image.shape[2]}x{image.shape[1]} but its label "
                f"{self.labels[index]} is {label.shape[1]}x{label.shape[0]}"
            )
        return image, torch.from_numpy(label)

    def __getitem__(self, index: int):
        image, label = self.load_pair(index)
        image = Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")
        label = Image.fromarray(label.numpy(), "L")
        if self.transforms is not None:
            return self.transforms(image, label)
        return image, label

    def instance_path(self, index: int) -> Path | None:
        """The instance-id file of image ``index`` (Cityscapes only; ``None`` here)."""
        return None


@dataclass
class DatasetReport:
    """What :func:`emanet.data.check_dataset` found.

    Attributes:
        root: the dataset folder.
        counts: image/label pairs per split that exists (splits without a folder are absent).
        problems: one line per problem, each naming the file it is about.
        layout: the format that was checked; classes: its class names.
        expected: the layout in one line, said when no pair is found.
    """

    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    layout: str = "cityscapes"
    classes: tuple[str, ...] = ()
    expected: str = "ROOT/leftImg8bit/SPLIT/CITY/..."

    @property
    def ok(self) -> bool:
        """No problems, and at least one image/label pair."""
        return not self.problems and sum(self.counts.values()) > 0

    def format(self) -> str:
        """A human-readable, multi-line report."""
        lines = [f"dataset {self.root} ({self.layout}, {len(self.classes)} classes)"]
        for split, count in self.counts.items():
            lines.append(f"  {split:<10s} {count:6d} image/label pairs")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {problem}" for problem in self.problems]
        elif not sum(self.counts.values()):
            lines.append(f"no image/label pairs found (expected {self.expected})")
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def check_label_file(
    path: Path,
    image_size: tuple[int, int] | None,
    valid: Callable[[np.ndarray], list[int]],
    kind: str,
) -> list[str]:
    """Problems of one label file: unreadable, not one channel, of another size than its image
    (``(H, W)``, ``None`` if unknown), values that ``valid`` rejects (it returns them)."""
    try:
        values = read_label(path)
    except OSError as error:
        return [str(error)]
    if values.ndim != 2:
        return [f"{path}: a label map must have one channel, got shape {values.shape}"]
    problems = []
    if image_size is not None and values.shape != image_size:
        problems.append(
            f"{path}: size {values.shape[1]}x{values.shape[0]} differs from its image "
            f"({image_size[1]}x{image_size[0]})"
        )
    bad = valid(values)
    if bad:
        problems.append(f"{path}: values {bad[:20]} are not valid {kind}")
    return problems


def image_size(path: Path, report: DatasetReport) -> tuple[int, int] | None:
    """``(H, W)`` of an image file, or ``None`` with its problem added to ``report``."""
    try:
        return tuple(read_rgb(path).shape[1:])
    except OSError as error:
        report.problems.append(str(error))
        return None


def check_pairs(
    report: DatasetReport,
    split: str,
    pairs: Sequence[tuple[Path, Path]],
    num_classes: int,
    decode: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Add a split's pair count and the problems of its pairs to ``report``: unreadable files,
    sizes that differ, label values that are no class id (after ``decode``, e.g.
    :func:`reduce_zero_label`; ids ``0 .. num_classes - 1`` and 255 are valid)."""

    def invalid(values: np.ndarray) -> list[int]:
        if decode is None:
            return _invalid_values(values, num_classes)
        bad = decode(values) if np.issubdtype(values.dtype, np.integer) else values
        # Name the stored values, which is what a person finds in the file.
        wrong = np.isin(bad, [*range(num_classes), IGNORE_INDEX], invert=True)
        return sorted(int(v) for v in np.unique(values[wrong]))

    for image, label in pairs:
        size = image_size(image, report)
        report.problems += check_label_file(
            label, size, invalid, f"class ids (0-{num_classes - 1} or 255)"
        )
    report.counts[split] = len(pairs)
    log.info("checked %s/%s: %d pairs", report.root, split, len(pairs))


def pair_by_stem(
    image_dir: Path, label_dir: Path, image_suffixes: Sequence[str]
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``(image, label)`` pairs of the files of two folders with the same stem (labels are
    ``.png``), sorted, and one problem per file without its partner."""
    images = {
        p.stem: p
        for p in sorted(image_dir.glob("*"))
        if p.suffix.lower() in image_suffixes and p.is_file()
    }
    labels = {p.stem: p for p in sorted(label_dir.glob("*.png")) if p.is_file()}
    pairs = [(images[stem], labels[stem]) for stem in sorted(images) if stem in labels]
    problems = [
        f"{images[stem]}: no label file ({label_dir / stem}.png is missing)"
        for stem in sorted(images)
        if stem not in labels
    ]
    problems += [
        f"{labels[stem]}: label without an image" for stem in sorted(labels) if stem not in images
    ]
    return pairs, problems
