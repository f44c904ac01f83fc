"""ADE20K, as the SceneParsing benchmark ships it (``ADEChallengeData2016``)::

    ADEChallengeData2016/images/{training,validation}/ADE_{split}_{n:08d}.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{split}_{n:08d}.png

Annotations store the 150 classes as 1-150 and 0 for "other", which is not scored: read as
mmsegmentation reads them with ``reduce_zero_label`` (0 -> 255, every other id - 1), so class
``i`` of :data:`ADE20K_CLASSES` is stored as ``i + 1``. ROOT may be ``ADEChallengeData2016`` or
the folder holding it; ``train``/``val`` name ``training``/``validation``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .segmentation import (
    DatasetError,
    DatasetReport,
    SegmentationDataset,
    check_pairs,
    pair_by_stem,
    reduce_zero_label,
)
from .voc import voc_palette

__all__ = ["ADE20K_CLASSES", "ADE20K_PALETTE", "ADE20KDataset", "ade20k_root", "check_ade20k"]

# The benchmark's objectInfo150 names (the first of each entry's synonyms), in id order.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)  # fmt: skip

#: A colour per class: the VOC colour map from its second entry (not mmsegmentation's palette).
ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = voc_palette(len(ADE20K_CLASSES) + 1)[1:]

_FOLDER = "ADEChallengeData2016"
_SPLITS = {"train": "training", "val": "validation"}


def ade20k_root(root: str | os.PathLike[str]) -> Path:
    """The ``ADEChallengeData2016`` folder of ``root`` (itself, or the folder in it)."""
    root = Path(root)
    for candidate in (root, root / _FOLDER):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root} is not ADE20K SceneParsing: expected images/ and annotations/ in it or in "
        f"{_FOLDER}/"
    )


def _split_pairs(ade: Path, split: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    folder = _SPLITS.get(split, split)
    image_dir = ade / "images" / folder
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir} does not exist (ADE20K splits: training, validation)")
    return pair_by_stem(image_dir, ade / "annotations" / folder, (".jpg", ".jpeg", ".png"))


class ADE20KDataset(SegmentationDataset):
    """One split of ADE20K SceneParsing: 150 classes, ``reduce_zero_label`` applied.

    Raises:
        FileNotFoundError: the folder is not ADE20K's, or an image has no annotation.
    """

    format = "ade20k"

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", transforms: Callable | None = None
    ) -> None:
        ade = ade20k_root(root)
        pairs, problems = _split_pairs(ade, split)
        unlabelled = [p for p in problems if "no label file" in p]
        if unlabelled:
            raise FileNotFoundError(unlabelled[0])
        classes, palette = ADE20K_CLASSES, ADE20K_PALETTE
        super().__init__(ade, split, pairs, classes, palette, transforms)

    def decode_label(self, values: np.ndarray, path: Path) -> np.ndarray:
        """0 -> 255, ``v`` -> ``v - 1``; stored values above 150 are an error."""
        if values.size and (int(values.min()) < 0 or int(values.max()) > len(self.classes)):
            found = sorted(int(v) for v in np.unique(values) if not 0 <= v <= len(self.classes))
            raise DatasetError(f"{path}: values {found[:10]} are not ADE20K ids (0-150)")
        return reduce_zero_label(values)


def check_ade20k(root: str | os.PathLike[str]) -> DatasetReport:
    """Check ``training`` and ``validation``: unpaired files, unreadable files, sizes, values
    (stored 0-150)."""
    report = DatasetReport(Path(root), layout="ade20k", classes=ADE20K_CLASSES)
    report.expected = f"{_FOLDER}/{{images,annotations}}/{{training,validation}}/"
    try:
        ade = ade20k_root(root)
    except FileNotFoundError as error:
        report.problems.append(str(error))
        return report
    report.root = ade
    for split in _SPLITS.values():
        if (ade / "images" / split).is_dir():
            pairs, problems = _split_pairs(ade, split)
            report.problems += problems
            check_pairs(report, split, pairs, len(ADE20K_CLASSES), decode=reduce_zero_label)
    return report
