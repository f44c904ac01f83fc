"""The folder format: what to convert one's own data to. ::

    ROOT/classes.json                 {"classes": ["background", "leaf", ...],
                                       "palette": [[0, 0, 0], [40, 160, 40], ...]}
    ROOT/images/{train,val}/NAME.jpg  (or .jpeg, .png)
    ROOT/labels/{train,val}/NAME.png  one channel of class ids (grey or palette PNG), 255 = ignore

Images and labels pair by file name (stem). ``palette`` is optional (the VOC colour map is used
without it); a ``test`` split, or any other, is read the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from emanet.io.atomic import atomic_write_text

from .segmentation import (
    DatasetError,
    DatasetReport,
    SegmentationDataset,
    check_pairs,
    pair_by_stem,
)
from .voc import voc_palette

__all__ = [
    "CLASSES_FILE",
    "FolderDataset",
    "check_folder",
    "folder_splits",
    "is_folder_dataset",
    "read_classes_json",
    "write_classes_json",
]

CLASSES_FILE = "classes.json"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def is_folder_dataset(root: str | os.PathLike[str]) -> bool:
    root = Path(root)
    return (root / CLASSES_FILE).is_file() and (root / "images").is_dir()


def read_classes_json(
    root: str | os.PathLike[str],
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The class names and palette of ``ROOT/classes.json``.

    Raises:
        FileNotFoundError: there is no such file.
        DatasetError: it is not JSON of the documented form (the message says what is wrong).
    """
    path = Path(root) / CLASSES_FILE
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None
    classes = content.get("classes") if isinstance(content, dict) else None
    if not classes or not all(isinstance(name, str) for name in classes) or len(classes) > 255:
        raise DatasetError(f'{path}: "classes" must be a list of 1 to 255 names')
    palette = content.get("palette")
    if palette is None:
        return tuple(classes), voc_palette(len(classes))
    valid = isinstance(palette, list) and all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette
    )
    if not valid or len(palette) != len(classes):
        raise DatasetError(
            f'{path}: "palette" must hold one [r, g, b] of 0-255 ints per class '
            f"({len(classes)} classes)"
        )
    return tuple(classes), tuple(tuple(color) for color in palette)


def write_classes_json(
    root: str | os.PathLike[str], classes: Sequence[str], palette: Sequence[Sequence[int]]
) -> Path:
    """Write ``ROOT/classes.json`` (atomically); returns its path."""
    if len(classes) != len(palette):
        raise ValueError(f"{len(classes)} classes but {len(palette)} colours")
    content = {"classes": list(classes), "palette": [[int(v) for v in c] for c in palette]}
    return atomic_write_text(Path(root) / CLASSES_FILE, json.dumps(content, indent=1) + "\n")


def folder_splits(root: str | os.PathLike[str]) -> list[str]:
    """The splits with an ``images/`` folder (``train`` and ``val`` first)."""
    names = sorted(p.name for p in (Path(root) / "images").iterdir() if p.is_dir())
    return sorted(names, key=lambda name: (name not in ("train", "val"), name != "train", name))


class FolderDataset(SegmentationDataset):
    """One split of a dataset in the folder format, with the classes of its ``classes.json``.

    Raises:
        FileNotFoundError: the split folder is missing, or an image has no label file.
        DatasetError: ``classes.json`` is malformed.
    """

    format = "folder"

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", transforms: Callable | None = None
    ) -> None:
        root = Path(root)
        classes, palette = read_classes_json(root)
        image_dir = root / "images" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(
                f"{image_dir} does not exist: expected the folder format's "
                f"ROOT/images/{split}/ and ROOT/labels/{split}/"
            )
        pairs, problems = pair_by_stem(image_dir, root / "labels" / split, _IMAGE_SUFFIXES)
        unlabelled = [p for p in problems if "no label file" in p]
        if unlabelled:
            raise FileNotFoundError(unlabelled[0])
        super().__init__(root, split, pairs, classes, palette, transforms)


def check_folder(root: str | os.PathLike[str]) -> DatasetReport:
    """Check ``classes.json`` and every split: unpaired files, unreadable files, sizes, label
    values outside the classes."""
    root = Path(root)
    report = DatasetReport(root, layout="folder")
    report.expected = "ROOT/classes.json, ROOT/images/SPLIT/*.jpg, ROOT/labels/SPLIT/*.png"
    try:
        report.classes, _ = read_classes_json(root)
    except (OSError, DatasetError) as error:
        report.problems.append(str(error))
        return report
    if not (root / "images").is_dir():
        report.problems.append(f"{root / 'images'} does not exist")
        return report
    for split in folder_splits(root):
        pairs, problems = pair_by_stem(
            root / "images" / split, root / "labels" / split, _IMAGE_SUFFIXES
        )
        report.problems += problems
        check_pairs(report, split, pairs, len(report.classes))
    return report
