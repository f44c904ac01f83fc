"""Tiny datasets in the exact layouts of Pascal VOC 2012 and ADE20K SceneParsing, drawn from the
toy city's scenes with its classes regrouped (the folder format has its package writer,
:func:`emanet.data.generate_toy_folder`). Written here, independently of the readers, from the
layouts as their documentation gives them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from emanet.data.cityscapes import CLASSES, label_ids_to_train_ids
from emanet.data.toycity import render_scene

# The 21 VOC classes and the devkit's colour map (bitwise, written out here for the test).
VOC_NAMES = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor"
).split()


def devkit_colormap() -> list[int]:
    """The flat 768-entry palette of the VOC devkit's ``labelcolormap``."""
    flat = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        flat += [r, g, b]
    return flat


# Cityscapes train class -> VOC class (the rest is background).
_TO_VOC = {
    "person": "person", "rider": "person", "car": "car", "truck": "car", "bus": "bus",
    "train": "train", "motorcycle": "motorbike", "bicycle": "bicycle",
}  # fmt: skip
# Cityscapes train class -> ADE20K name (stored as its index + 1; the rest is 0, "other").
_TO_ADE = {
    "road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "wall",
    "fence": "fence", "pole": "pole", "traffic light": "traffic light",
    "traffic sign": "signboard", "vegetation": "tree", "terrain": "grass", "sky": "sky",
    "person": "person", "rider": "person", "car": "car", "truck": "truck", "bus": "bus",
    "motorcycle": "minibike", "bicycle": "bicycle",
}  # fmt: skip


def _lut(mapping: dict[str, int], other: int) -> np.ndarray:
    """trainId -> new id (ignored pixels, 255, -> 255)."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[: len(CLASSES)] = [mapping.get(name, other) for name in CLASSES]
    return lut


def scene(size, seed, index) -> tuple[np.ndarray, np.ndarray]:
    """A toy-city image ``(H, W, 3)`` and its trainIds ``(H, W)``."""
    image, label_ids, _ = render_scene(*size, np.random.default_rng([seed, index]))
    return image, label_ids_to_train_ids(label_ids)


def write_voc(root: Path, train=3, val=2, aug=0, size=(48, 64), seed=0) -> Path:
    """``root/VOCdevkit/VOC2012`` with JPEG images, palette labels, the split lists and, with
    ``aug`` > 0, ``SegmentationClassAug`` (plain ids) for the train images and ``aug`` more,
    listed in ``aug.txt``. Returns ``root``."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    lut = _lut({k: VOC_NAMES.index(v) for k, v in _TO_VOC.items()}, other=0)
    ids = [f"2007_{i:06d}" for i in range(train + val + aug)]
    for index, stem in enumerate(ids):
        image, train_ids = scene(size, seed, index)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{stem}.jpg", quality=95)
        label = Image.fromarray(lut[train_ids], "P")
        label.putpalette(devkit_colormap())
        if index < train + val:
            label.save(voc / "SegmentationClass" / f"{stem}.png")
        if aug and (index < train or index >= train + val):
            (voc / "SegmentationClassAug").mkdir(exist_ok=True)
            Image.fromarray(lut[train_ids], "L").save(voc / "SegmentationClassAug" / f"{stem}.png")
    lists = {
        "train": ids[:train],
        "val": ids[train : train + val],
        "trainval": ids[: train + val],
    }
    if aug:
        lists["aug"] = ids[:train] + ids[train + val :]
    for name, stems in lists.items():
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(stems) + "\n")
    return root


def write_ade(root: Path, ade_classes, train=3, val=2, size=(48, 64), seed=0) -> Path:
    """``root/ADEChallengeData2016`` with JPEG images and annotations storing class ``i`` as
    ``i + 1`` and 0 for "other". Returns that folder."""
    ade = root / "ADEChallengeData2016"
    lut = _lut({k: ade_classes.index(v) + 1 for k, v in _TO_ADE.items()}, other=0)
    lut[255] = 0  # ignored pixels are "other"
    for split, count, offset in (("training", train, 0), ("validation", val, 100)):
        (ade / "images" / split).mkdir(parents=True, exist_ok=True)
        (ade / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, train_ids = scene(size, seed, offset + index)
            stem = f"ADE_{split[:5] if split == 'training' else 'val'}_{index + 1:08d}"
            Image.fromarray(image).save(ade / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(lut[train_ids], "L").save(ade / "annotations" / split / f"{stem}.png")
    return ade
