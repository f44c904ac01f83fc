"""Cityscapes: the official label table, palette, and a dataset over the official layout.

Files (cityscapesScripts' conventions, which ``torchvision.datasets.Cityscapes`` also reads)::

    ROOT/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png
    ROOT/gtFine/{split}/{city}/..._gtFine_labelTrainIds.png   (createTrainIdLabelImgs makes it)
    ROOT/gtFine/{split}/{city}/..._gtFine_instanceIds.png

``labelIds`` are the 34 annotation classes (0-33); networks predict the 19 *train* classes
(trainIds 0-18) and every other pixel is ignored (:data:`IGNORE_INDEX`, 255).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .segmentation import (
    IGNORE_INDEX,
    DatasetError,
    DatasetReport,
    SegmentationDataset,
    check_label_file,
    image_size,
)

__all__ = [
    "Label",
    "LABELS",
    "CLASSES",
    "PALETTE",
    "IGNORE_INDEX",
    "INSTANCE_CLASSES",
    "label_ids_to_train_ids",
    "palette_lut",
    "train_ids_to_label_ids",
    "CityscapesDataset",
    "DatasetError",
    "DatasetReport",
    "check_dataset",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Label:
    """One row of cityscapesScripts' ``helpers/labels.py`` (field names in snake_case)."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# The official table, row for row. 'license plate' keeps the official id and trainId -1: it is
# never written to labelIds images (json2labelImg skips negative ids, leaving the vehicle's id).
# fmt: off
LABELS: tuple[Label, ...] = (
    #     name                    id  trainId  category      catId  hasInst ignoreInEval color
    Label("unlabeled",             0, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("ego vehicle",           1, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("rectification border",  2, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("out of roi",            3, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("static",                4, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("dynamic",               5, 255, "void",         0, False, True,  (111, 74, 0)),
    Label("ground",                6, 255, "void",         0, False, True,  (81, 0, 81)),
    Label("road",                  7,   0, "flat",         1, False, False, (128, 64, 128)),
    Label("sidewalk",              8,   1, "flat",         1, False, False, (244, 35, 232)),
    Label("parking",               9, 255, "flat",         1, False, True,  (250, 170, 160)),
    Label("rail track",           10, 255, "flat",         1, False, True,  (230, 150, 140)),
    Label("building",             11,   2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall",                 12,   3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence",                13,   4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail",           14, 255, "construction", 2, False, True,  (180, 165, 180)),
    Label("bridge",               15, 255, "construction", 2, False, True,  (150, 100, 100)),
    Label("tunnel",               16, 255, "construction", 2, False, True,  (150, 120, 90)),
    Label("pole",                 17,   5, "object",       3, False, False, (153, 153, 153)),
    Label("polegroup",            18, 255, "object",       3, False, True,  (153, 153, 153)),
    Label("traffic light",        19,   6, "object",       3, False, False, (250, 170, 30)),
    Label("traffic sign",         20,   7, "object",       3, False, False, (220, 220, 0)),
    Label("vegetation",           21,   8, "nature",       4, False, False, (107, 142, 35)),
    Label("terrain",              22,   9, "nature",       4, False, False, (152, 251, 152)),
    Label("sky",                  23,  10, "sky",          5, False, False, (70, 130, 180)),
    Label("person",               24,  11, "human",        6, True,  False, (220, 20, 60)),
    Label("rider",                25,  12, "human",        6, True,  False, (255, 0, 0)),
    Label("car",                  26,  13, "vehicle",      7, True,  False, (0, 0, 142)),
    Label("truck",                27,  14, "vehicle",      7, True,  False, (0, 0, 70)),
    Label("bus",                  28,  15, "vehicle",      7, True,  False, (0, 60, 100)),
    Label("caravan",              29, 255, "vehicle",      7, True,  True,  (0, 0, 90)),
    Label("trailer",              30, 255, "vehicle",      7, True,  True,  (0, 0, 110)),
    Label("train",                31,  16, "vehicle",      7, True,  False, (0, 80, 100)),
    Label("motorcycle",           32,  17, "vehicle",      7, True,  False, (0, 0, 230)),
    Label("bicycle",              33,  18, "vehicle",      7, True,  False, (119, 11, 32)),
    Label("license plate",        -1,  -1, "vehicle",      7, False, True,  (0, 0, 142)),
)
# fmt: on

_TRAIN_LABELS: tuple[Label, ...] = tuple(
    sorted((lb for lb in LABELS if 0 <= lb.train_id < IGNORE_INDEX), key=lambda lb: lb.train_id)
)
#: The 19 train class names, indexed by trainId.
CLASSES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN_LABELS)
#: The official RGB colour of each train class, indexed by trainId.
PALETTE: tuple[tuple[int, int, int], ...] = tuple(lb.color for lb in _TRAIN_LABELS)
#: trainIds of the classes with instances (scored by iIoU): person ... bicycle.
INSTANCE_CLASSES: tuple[int, ...] = tuple(lb.train_id for lb in _TRAIN_LABELS if lb.has_instances)


def palette_lut(palette: Sequence[Sequence[int]] = PALETTE) -> np.ndarray:
    """``(256, 3)`` uint8 colour lookup: row ``i`` is ``palette[i]``, every other row black.

    ``palette_lut(palette)[ids]`` colours a uint8 id map ``(H, W)`` as ``(H, W, 3)``, with the
    ignore index (255) and ids beyond the palette in black.
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return lut


def _lookup_tables() -> tuple[np.ndarray, np.ndarray]:
    """(labelId -> trainId, trainId -> labelId), 256 uint8 entries each, read-only."""
    to_train = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    to_label = np.zeros(256, dtype=np.uint8)  # 255 and unknown trainIds -> 0 'unlabeled'
    for lb in LABELS:
        if lb.id >= 0:
            to_train[lb.id] = lb.train_id if 0 <= lb.train_id < IGNORE_INDEX else IGNORE_INDEX
    for lb in _TRAIN_LABELS:
        to_label[lb.train_id] = lb.id
    to_train.flags.writeable = False
    to_label.flags.writeable = False
    return to_train, to_label


_ID_TO_TRAIN_ID, _TRAIN_ID_TO_ID = _lookup_tables()


def _apply_lut(lut: np.ndarray, values, outside: int) -> np.ndarray:
    """``lut[values]`` for any integer array; values outside 0-255 give ``outside``.

    A plain cast to uint8 would wrap (263 -> 7 'road'), so other dtypes are masked first.
    """
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return np.take(lut, values)  # the same as lut[values], faster
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"label maps must hold integers, got dtype {values.dtype}")
    inside = (values >= 0) & (values <= 255)
    out = np.full(values.shape, outside, dtype=np.uint8)
    out[inside] = lut[values[inside]]
    return out


def label_ids_to_train_ids(label_ids) -> np.ndarray:
    """Map labelIds to trainIds through the official table.

    Args:
        label_ids: integer array of any shape, e.g. ``(H, W)`` read from ``_labelIds.png``.

    Returns:
        uint8 array of the same shape: 0-18, or 255 for ignored ids and ids not in the table.
    """
    return _apply_lut(_ID_TO_TRAIN_ID, label_ids, IGNORE_INDEX)


def train_ids_to_label_ids(train_ids) -> np.ndarray:
    """Map trainIds 0-18 back to labelIds (uint8, same shape); 255 and unknown values -> 0."""
    return _apply_lut(_TRAIN_ID_TO_ID, train_ids, 0)


_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
_TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"

_VALID_LABEL_IDS = np.zeros(256, dtype=bool)
_VALID_LABEL_IDS[[lb.id for lb in LABELS if lb.id >= 0]] = True
_VALID_TRAIN_IDS = np.zeros(256, dtype=bool)
_VALID_TRAIN_IDS[[*range(len(CLASSES)), IGNORE_INDEX]] = True
for _table in (_VALID_LABEL_IDS, _VALID_TRAIN_IDS):
    _table.flags.writeable = False


def _stem(image: Path) -> str:
    """``{city}_{seq}_{frame}`` of a ``_leftImg8bit.png`` path."""
    return image.name[: -len(_IMAGE_SUFFIX)]


def _gt_base(root: Path, split: str, image: Path) -> Path:
    """The gtFine path of ``image`` without its suffix (append e.g. ``_gtFine_labelIds.png``)."""
    return root / "gtFine" / split / image.parent.name / _stem(image)


def _with_suffix(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def _find_images(image_dir: Path) -> list[Path]:
    """All ``{city}/*_leftImg8bit.png`` under a split folder, sorted (deterministic order)."""
    return sorted(p for p in image_dir.glob(f"*/*{_IMAGE_SUFFIX}") if p.is_file())


class CityscapesDataset(SegmentationDataset):
    """Images and trainId labels of one split of a dataset in Cityscapes' layout.

    ``dataset[i]`` is ``(image, label)``: a PIL RGB image of size ``(W, H)`` and a PIL ``L``
    image of the same size holding trainIds (0-18, 255 = ignore), or ``transforms(image, label)``
    when ``transforms`` is given. ``_gtFine_labelTrainIds.png`` is used when present, else
    ``_gtFine_labelIds.png`` is mapped through the official label table.

    Attributes:
        root, split: as given (``root`` as a :class:`~pathlib.Path`).
        images: sorted ``_leftImg8bit.png`` paths.
        labels: the label file used for each image (labelTrainIds or labelIds).
        classes, palette: the 19 train classes and their official colours.

    Raises:
        FileNotFoundError: naming the folder or file, when the split folder is missing or holds
            no images, or an image has no label file.
    """

    format = "cityscapes"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transforms: Callable | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder")
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(
                f"{image_dir} does not exist: expected the Cityscapes layout "
                f"ROOT/leftImg8bit/{split}/CITY/CITY_SEQ_FRAME{_IMAGE_SUFFIX}"
            )
        images = _find_images(image_dir)
        if not images:
            raise FileNotFoundError(f"no *{_IMAGE_SUFFIX} files in the city folders of {image_dir}")
        labels: list[Path] = []
        for image in images:
            base = _gt_base(root, split, image)
            train_ids = _with_suffix(base, _TRAIN_IDS_SUFFIX)
            label_ids = _with_suffix(base, _LABEL_IDS_SUFFIX)
            if train_ids.is_file():
                labels.append(train_ids)
            elif label_ids.is_file():
                labels.append(label_ids)
            else:
                raise FileNotFoundError(
                    f"{image} has no label file: neither {label_ids} nor {train_ids.name} exists"
                )
        super().__init__(
            root, split, list(zip(images, labels, strict=True)), CLASSES, PALETTE, transforms
        )
        log.debug("%s/%s: %d images", self.root, split, len(self.images))

    def decode_label(self, values: np.ndarray, path: Path) -> np.ndarray:
        """trainIds of a labelTrainIds file (checked) or of a labelIds file (mapped).

        Raises:
            DatasetError: a labelTrainIds file holds values other than 0-18 and 255.
        """
        if path.name.endswith(_TRAIN_IDS_SUFFIX):
            if values.dtype == np.uint8:  # a histogram: one pass, no temporary masks
                present = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
                found = [int(v) for v in present if not _VALID_TRAIN_IDS[v]]
            else:
                bad = ~_VALID_TRAIN_IDS[np.clip(values, 0, 255)] | (values < 0) | (values > 255)
                found = sorted(int(v) for v in np.unique(values[bad]))
            if found:
                raise DatasetError(f"{path}: values {found[:10]} are not trainIds (0-18 or 255)")
            return values.astype(np.uint8, copy=False)
        return label_ids_to_train_ids(values)

    def instance_path(self, index: int) -> Path | None:
        """The ``_gtFine_instanceIds.png`` of image ``index`` if it exists, else ``None``."""
        path = _with_suffix(_gt_base(self.root, self.split, self.images[index]), _INSTANCE_SUFFIX)
        return path if path.is_file() else None


def _valid_values(valid: np.ndarray):
    def invalid(values: np.ndarray) -> list[int]:
        return [int(v) for v in np.unique(values) if not (0 <= v <= 255 and valid[v])]

    return invalid


def _check_split(root: Path, split: str, report: DatasetReport) -> None:
    image_dir = root / "leftImg8bit" / split
    images = _find_images(image_dir)
    keys = {(p.parent.name, _stem(p)) for p in images}
    pairs = 0
    for image in images:
        base = _gt_base(root, split, image)
        labels = [
            (path, valid, kind)
            for path, valid, kind in (
                (_with_suffix(base, _LABEL_IDS_SUFFIX), _VALID_LABEL_IDS, "Cityscapes labelIds"),
                (_with_suffix(base, _TRAIN_IDS_SUFFIX), _VALID_TRAIN_IDS, "trainIds"),
            )
            if path.is_file()
        ]
        if not labels:
            report.problems.append(
                f"{image}: no label file ({_with_suffix(base, _LABEL_IDS_SUFFIX)} is missing)"
            )
            continue
        pairs += 1
        size = image_size(image, report)
        for path, valid, kind in labels:
            report.problems += check_label_file(path, size, _valid_values(valid), kind)
    label_dir = root / "gtFine" / split
    for suffix in (_LABEL_IDS_SUFFIX, _TRAIN_IDS_SUFFIX):
        for path in sorted(label_dir.glob(f"*/*{suffix}")):
            if (path.parent.name, path.name[: -len(suffix)]) not in keys:
                report.problems.append(f"{path}: label without an image")
    report.counts[split] = pairs


def check_dataset(
    root: str | os.PathLike[str], splits: Sequence[str] = ("train", "val", "test")
) -> DatasetReport:
    """Check a dataset in Cityscapes' layout: pairing, readability, sizes and label values.

    Every image and label file is decoded fully, so this takes a while on the real dataset.
    Splits without a ``leftImg8bit/{split}`` folder are skipped (Cityscapes' test split is often
    left out); labels of such a split are still reported as labels without images.
    """
    root = Path(root)
    report = DatasetReport(root, classes=CLASSES)
    if not root.is_dir():
        report.problems.append(f"{root}: dataset root does not exist or is not a folder")
        return report
    for split in splits:
        if (root / "leftImg8bit" / split).is_dir() or (root / "gtFine" / split).is_dir():
            _check_split(root, split, report)
            log.info("checked %s/%s: %d pairs", root, split, report.counts[split])
    return report
