"""Cityscapes: the official label table, palette, and a dataset over the official layout.

Files (cityscapesScripts' conventions, also ``torchvision.datasets.Cityscapes``')::

    ROOT/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png
    ROOT/gtFine/{split}/{city}/..._gtFine_labelTrainIds.png   (made by createTrainIdLabelImgs)
    ROOT/gtFine/{split}/{city}/..._gtFine_instanceIds.png

Networks predict the 19 *train* classes (trainIds 0-18); every other label is ignored (255).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = [
    "Label",
    "LABELS",
    "CLASSES",
    "PALETTE",
    "IGNORE_INDEX",
    "INSTANCE_CLASSES",
    "label_ids_to_train_ids",
    "train_ids_to_label_ids",
    "CityscapesDataset",
    "DatasetReport",
    "check_dataset",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Label:
    """One row of cityscapesScripts' ``helpers/labels.py``."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# fmt: off
LABELS: tuple[Label, ...] = (
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
    Label("license plate",        -1, 255, "vehicle",      7, False, True,  (0, 0, 142)),
)
# fmt: on

_TRAIN_LABELS = sorted(
    (lb for lb in LABELS if lb.train_id != IGNORE_INDEX), key=lambda lb: lb.train_id
)
CLASSES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN_LABELS)
PALETTE: tuple[tuple[int, int, int], ...] = tuple(lb.color for lb in _TRAIN_LABELS)
INSTANCE_CLASSES: tuple[int, ...] = tuple(lb.train_id for lb in _TRAIN_LABELS if lb.has_instances)

_ID_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label in LABELS:
    if _label.id >= 0:
        _ID_TO_TRAIN[_label.id] = _label.train_id
_ID_TO_TRAIN.flags.writeable = False
_TRAIN_TO_ID = np.zeros(256, dtype=np.uint8)
for _label in _TRAIN_LABELS:
    _TRAIN_TO_ID[_label.train_id] = _label.id
_TRAIN_TO_ID.flags.writeable = False


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """labelIds (0-33; anything else counts as unlabeled) -> trainIds (0-18, 255), uint8."""
    return _ID_TO_TRAIN[np.asarray(label_ids).astype(np.uint8, copy=False)]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """trainIds (0-18) -> labelIds, uint8; 255 and unknown values -> 0 (unlabeled)."""
    return _TRAIN_TO_ID[np.asarray(train_ids).astype(np.uint8, copy=False)]


_IMAGE_SUFFIX = "_leftImg8bit.png"


def _stem(image: Path) -> str:
    return image.name[: -len(_IMAGE_SUFFIX)]


def _open(path: Path) -> Image.Image:
    """Decode a PNG fully, turning any failure into an error that names the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise OSError(f"cannot read {path}: {error}") from error


class CityscapesDataset(Dataset):
    """Images and trainId labels of one split of a dataset in Cityscapes' layout.

    ``dataset[i]`` is ``(image, label)``: a PIL RGB image and a PIL ``L`` image of trainIds
    (0-18, 255 = ignore), or ``transforms(image, label)`` when ``transforms`` is given.
    ``_gtFine_labelTrainIds.png`` is used when present, else ``_gtFine_labelIds.png`` is mapped
    through the official label table.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transforms: Callable | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(
                f"{image_dir} does not exist: expected the Cityscapes layout "
                f"ROOT/leftImg8bit/{split}/CITY/*{_IMAGE_SUFFIX}"
            )
        self.images = sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
        if not self.images:
            raise FileNotFoundError(f"no *{_IMAGE_SUFFIX} files under {image_dir}")
        self.labels: list[Path] = []
        self._label_is_train_id: list[bool] = []
        for image in self.images:
            base = self.root / "gtFine" / split / image.parent.name / _stem(image)
            train_ids = Path(f"{base}_gtFine_labelTrainIds.png")
            label_ids = Path(f"{base}_gtFine_labelIds.png")
            if train_ids.is_file():
                self.labels.append(train_ids)
                self._label_is_train_id.append(True)
            elif label_ids.is_file():
                self.labels.append(label_ids)
                self._label_is_train_id.append(False)
            else:
                raise FileNotFoundError(f"{image} has no label file ({label_ids} is missing)")

    def __len__(self) -> int:
        return len(self.images)

    def load_label(self, index: int) -> Image.Image:
        """The trainId map of image ``index`` as a PIL ``L`` image."""
        label = _open(self.labels[index])
        values = np.asarray(label)
        if values.ndim != 2:
            raise ValueError(f"{self.labels[index]}: a label map must have one channel")
        if not self._label_is_train_id[index]:
            values = label_ids_to_train_ids(values)
        return Image.fromarray(values.astype(np.uint8), mode="L")

    def __getitem__(self, index: int):
        image = _open(self.images[index]).convert("RGB")
        label = self.load_label(index)
        if image.size != label.size:
            raise ValueError(
                f"{self.images[index]} is {image.size} but its label {self.labels[index]} "
                f"is {label.size}"
            )
        if self.transforms is not None:
            return self.transforms(image, label)
        return image, label

    def instance_path(self, index: int) -> Path | None:
        """The ``_gtFine_instanceIds.png`` of image ``index``, if it exists."""
        image = self.images[index]
        path = (
            self.root
            / "gtFine"
            / self.split
            / image.parent.name
            / f"{_stem(image)}_gtFine_instanceIds.png"
        )
        return path if path.is_file() else None


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found: pairs per split and a list of problems (one per file)."""

    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and any(self.counts.values())

    def format(self) -> str:
        lines = [f"dataset {self.root}"]
        for split, count in self.counts.items():
            lines.append(f"  {split:6s} {count:6d} image/label pairs")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        elif not any(self.counts.values()):
            lines.append("no images found")
        else:
            lines.append("no problems found")
        return "\n".join(lines)


_VALID_LABEL_IDS = {lb.id for lb in LABELS if lb.id >= 0}
_VALID_TRAIN_IDS = set(range(len(CLASSES))) | {IGNORE_INDEX}


def check_dataset(
    root: str | os.PathLike[str], splits: Sequence[str] = ("train", "val", "test")
) -> DatasetReport:
    """Check a dataset in Cityscapes' layout: pairing, readability, sizes, label values."""
    root = Path(root)
    report = DatasetReport(root)
    if not root.is_dir():
        report.problems.append(f"{root}: not a folder")
        return report
    for split in splits:
        image_dir = root / "leftImg8bit" / split
        label_dir = root / "gtFine" / split
        if not image_dir.is_dir():
            continue
        images = {
            (p.parent.name, _stem(p)): p for p in sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
        }
        pairs = 0
        for (city, stem), image_path in images.items():
            base = label_dir / city / stem
            train_ids = Path(f"{base}_gtFine_labelTrainIds.png")
            label_ids = Path(f"{base}_gtFine_labelIds.png")
            label_path = train_ids if train_ids.is_file() else label_ids
            if not label_path.is_file():
                report.problems.append(f"{image_path}: no label file ({label_ids} is missing)")
                continue
            try:
                image_size = _open(image_path).size
                label = _open(label_path)
            except OSError as error:
                report.problems.append(str(error))
                continue
            values = np.unique(np.asarray(label))
            label_size = label.size
            if image_size != label_size:
                report.problems.append(
                    f"{label_path}: size {label_size} differs from its image {image_size}"
                )
            valid = _VALID_TRAIN_IDS if label_path == train_ids else _VALID_LABEL_IDS
            unknown = sorted(int(v) for v in values if int(v) not in valid)
            if unknown:
                report.problems.append(f"{label_path}: unknown label values {unknown}")
            pairs += 1
        if label_dir.is_dir():
            for label_path in sorted(label_dir.glob("*/*_gtFine_labelIds.png")):
                stem = label_path.name[: -len("_gtFine_labelIds.png")]
                if (label_path.parent.name, stem) not in images:
                    report.problems.append(f"{label_path}: label without an image")
        report.counts[split] = pairs
    return report
