"""Pascal VOC 2012 segmentation, in the devkit's layout (which torchvision's ``VOCSegmentation``
and mmsegmentation read too)::

    VOCdevkit/VOC2012/JPEGImages/{id}.jpg
    VOCdevkit/VOC2012/SegmentationClass/{id}.png          palette PNGs: index = class id
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    VOCdevkit/VOC2012/SegmentationClassAug/{id}.png       SBD-augmented labels (plain ids)
    VOCdevkit/VOC2012/ImageSets/Segmentation/aug.txt      their list (or train_aug.txt)

21 classes (0 = background), 255 = ignore (object borders). ROOT may be the ``VOC2012`` folder
or a folder holding ``VOCdevkit/VOC2012``. The split ``train_aug`` is the augmented list, each
label taken from ``SegmentationClassAug`` (from ``SegmentationClass`` where the augmented set
has none); it exists only where the list does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .segmentation import DatasetReport, SegmentationDataset, check_pairs

__all__ = [
    "AUG_SPLIT",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "VOCDataset",
    "check_voc",
    "is_voc",
    "voc_palette",
    "voc_root",
    "voc_splits",
]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

#: The split of the SBD-augmented training list.
AUG_SPLIT = "train_aug"
# The list's file name as mmsegmentation's converter writes it, then other common names.
_AUG_LISTS = ("aug.txt", "train_aug.txt", "trainaug.txt")


def voc_palette(count: int = 256) -> tuple[tuple[int, int, int], ...]:
    """The VOC devkit's colour map: the bits of each id spread over R, G and B, high bits first
    (id 1 is (128, 0, 0), id 255 is (224, 224, 192))."""
    colors = []
    for index in range(count):
        rgb, value = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        colors.append(tuple(rgb))
    return tuple(colors)


#: The colour of each of the 21 classes in the devkit's colour map.
VOC_PALETTE: tuple[tuple[int, int, int], ...] = voc_palette(len(VOC_CLASSES))


def voc_root(root: str | os.PathLike[str]) -> Path:
    """The ``VOC2012`` folder of ``root`` (itself, or ``root/VOCdevkit/VOC2012``)."""
    root = Path(root)
    for candidate in (root, root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (
            candidate / "ImageSets" / "Segmentation"
        ).is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root} is not a Pascal VOC 2012 folder: expected JPEGImages/ and "
        "ImageSets/Segmentation/ in it or in VOCdevkit/VOC2012/"
    )


def is_voc(root: str | os.PathLike[str]) -> bool:
    try:
        voc_root(root)
    except FileNotFoundError:
        return False
    return True


def _lists(voc: Path) -> dict[str, Path]:
    """Split name -> its list file (``train_aug`` for the augmented list)."""
    folder = voc / "ImageSets" / "Segmentation"
    lists = {path.stem: path for path in sorted(folder.glob("*.txt"))}
    for name in _AUG_LISTS:
        lists.pop(Path(name).stem, None)
    for name in _AUG_LISTS:
        if (folder / name).is_file():
            lists[AUG_SPLIT] = folder / name
            break
    return lists


def voc_splits(root: str | os.PathLike[str]) -> list[str]:
    """The splits whose list exists, ``train_aug`` included when the augmented list is there."""
    return list(_lists(voc_root(root)))


def _ids(path: Path) -> list[str]:
    # A line may hold "id" or, in some augmented lists, "/JPEGImages/id.jpg /Segm.../id.png".
    return [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]


def _pairs(voc: Path, split: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``(image, label)`` of every id of a split's list, and a problem per id without one."""
    lists = _lists(voc)
    if split not in lists:
        raise FileNotFoundError(
            f"{voc}/ImageSets/Segmentation has no list for split {split!r} "
            f"(lists: {', '.join(lists) or 'none'})"
        )
    folders = ["SegmentationClass"]
    if split == AUG_SPLIT:
        folders.insert(0, "SegmentationClassAug")
    pairs, problems = [], []
    for stem in _ids(lists[split]):
        image = voc / "JPEGImages" / f"{stem}.jpg"
        labels = [voc / folder / f"{stem}.png" for folder in folders]
        label = next((path for path in labels if path.is_file()), None)
        if not image.is_file():
            problems.append(f"{image}: listed in {lists[split].name} but missing")
        elif label is None:
            problems.append(f"{image}: no label file ({labels[-1]} is missing)")
        else:
            pairs.append((image, label))
    return pairs, problems


class VOCDataset(SegmentationDataset):
    """One split of Pascal VOC 2012 (``train``, ``val``, ``trainval``, ``train_aug``): the 21
    classes, labels as stored (palette indices or plain ids; 255 = ignore).

    Raises:
        FileNotFoundError: the folder is not VOC's, the split has no list, or an id of the list
            has no image or label (the message names it).
    """

    format = "voc"

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", transforms: Callable | None = None
    ) -> None:
        voc = voc_root(root)
        pairs, problems = _pairs(voc, split)
        if problems:
            raise FileNotFoundError(problems[0])
        super().__init__(voc, split, pairs, VOC_CLASSES, VOC_PALETTE, transforms)


def check_voc(root: str | os.PathLike[str]) -> DatasetReport:
    """Check every split with a list (``test`` has no labels and is skipped): listed files that
    are missing, unreadable files, sizes, label values (0-20, 255)."""
    report = DatasetReport(Path(root), layout="voc", classes=VOC_CLASSES)
    report.expected = "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}"
    try:
        voc = voc_root(root)
    except FileNotFoundError as error:
        report.problems.append(str(error))
        return report
    report.root = voc
    lists = _lists(voc)
    for split in lists:
        # test has no labels; trainval is train and val again.
        if split == "test" or (split == "trainval" and {"train", "val"} <= set(lists)):
            continue
        pairs, problems = _pairs(voc, split)
        report.problems += problems
        check_pairs(report, split, pairs, len(VOC_CLASSES))
    return report
