"""The dataset layouts emanet reads, told apart by their folders: :func:`detect_format`,
:func:`open_dataset` (one split, whatever the layout) and :func:`check_dataset` (``emanet data
check``).

=============  ==============================================================  =============
format         what marks it                                                   classes
=============  ==============================================================  =============
cityscapes     ``leftImg8bit/`` and ``gtFine/``                                19
voc            ``JPEGImages/`` + ``ImageSets/Segmentation/`` (or in            21
               ``VOCdevkit/VOC2012/``)
ade20k         ``images/`` + ``annotations/`` (or in ``ADEChallengeData2016/``)  150
folder         ``classes.json`` + ``images/`` (+ ``labels/``)                  its own
=============  ==============================================================  =============

Splits are called ``train`` and ``val`` in every layout (ADE20K's ``training`` and
``validation`` too); VOC adds ``trainval`` and ``train_aug``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .ade20k import ADE20KDataset, ade20k_root, check_ade20k
from .cityscapes import CLASSES, PALETTE, CityscapesDataset
from .cityscapes import check_dataset as check_cityscapes
from .folder import FolderDataset, check_folder, is_folder_dataset
from .segmentation import DatasetError, DatasetReport, SegmentationDataset
from .voc import AUG_SPLIT, VOCDataset, check_voc, is_voc, voc_palette, voc_splits

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "check_dataset",
    "class_names",
    "detect_format",
    "open_dataset",
    "train_split",
]

#: format -> its dataset class.
FORMATS: dict[str, type[SegmentationDataset]] = {
    "cityscapes": CityscapesDataset,
    "voc": VOCDataset,
    "ade20k": ADE20KDataset,
    "folder": FolderDataset,
}

_CHECKS: dict[str, Callable[[Path], DatasetReport]] = {
    "cityscapes": check_cityscapes,
    "voc": check_voc,
    "ade20k": check_ade20k,
    "folder": check_folder,
}


def _is_ade20k(root: Path) -> bool:
    try:
        ade20k_root(root)
    except FileNotFoundError:
        return False
    return True


def detect_format(root: str | os.PathLike[str]) -> str:
    """The layout of the dataset at ``root`` (one of :data:`FORMATS`).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        DatasetError: no layout matches (the message lists what each one needs).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder")
    if is_folder_dataset(root):  # first: its own classes.json says what it is
        return "folder"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if is_voc(root):
        return "voc"
    if _is_ade20k(root):
        return "ade20k"
    raise DatasetError(
        f"{root}: no dataset layout recognised. Expected one of: Cityscapes (leftImg8bit/, "
        "gtFine/), Pascal VOC (VOCdevkit/VOC2012/ or JPEGImages/ + ImageSets/Segmentation/), "
        "ADE20K (ADEChallengeData2016/ or images/ + annotations/), or the folder format "
        "(classes.json, images/SPLIT/, labels/SPLIT/)"
    )


def _format(root: str | os.PathLike[str], format: str | None) -> str:
    if format is None:
        return detect_format(root)
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; known: {', '.join(FORMATS)}")
    return format


def open_dataset(
    root: str | os.PathLike[str],
    split: str = "train",
    format: str | None = None,
    transforms: Callable | None = None,
) -> SegmentationDataset:
    """One split of the dataset at ``root``, its layout detected (or ``format``); the result has
    ``classes`` and ``palette``, and reads pairs as :class:`SegmentationDataset` documents."""
    return FORMATS[_format(root, format)](root, split, transforms=transforms)


def train_split(root: str | os.PathLike[str], format: str | None = None) -> str:
    """The split a training run reads: ``train_aug`` for a VOC folder with the augmented list
    (mmsegmentation's and the paper's choice), else ``train``."""
    if _format(root, format) == "voc" and AUG_SPLIT in voc_splits(root):
        return AUG_SPLIT
    return "train"


def check_dataset(root: str | os.PathLike[str], format: str | None = None) -> DatasetReport:
    """Check the dataset at ``root`` in its layout (detected, or ``format``): split sizes,
    unpaired files, unreadable files, sizes that differ, label values outside the classes. A
    folder whose layout cannot be recognised is a report with that one problem."""
    try:
        name = _format(root, format)
    except (OSError, DatasetError) as error:
        report = DatasetReport(Path(root), layout=format or "unknown")
        report.problems.append(str(error))
        return report
    report = _CHECKS[name](Path(root))
    report.layout = name
    return report


def class_names(
    num_classes: int,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    source: str = "the model",
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and colours for a model with ``num_classes`` outputs: ``classes`` and
    ``palette`` where they are given and fit (one each per output), else the Cityscapes ones
    for 19 outputs, else ``class 0``, ``class 1``, ... in the VOC colour map. What does not fit
    is said in a logged warning naming ``source``."""
    if classes is not None and len(classes) != num_classes:
        log.warning(
            "%s: %d class names for %d outputs; ignoring them", source, len(classes), num_classes
        )
        classes = None
    if palette is not None and len(palette) != num_classes:
        log.warning(
            "%s: %d colours for %d outputs; ignoring them", source, len(palette), num_classes
        )
        palette = None
    cityscapes = num_classes == len(CLASSES)
    if classes is None:
        classes = CLASSES if cityscapes else tuple(f"class {i}" for i in range(num_classes))
    if palette is None:
        palette = PALETTE if cityscapes and tuple(classes) == CLASSES else voc_palette(num_classes)
    return tuple(classes), tuple(tuple(int(v) for v in color) for color in palette)
