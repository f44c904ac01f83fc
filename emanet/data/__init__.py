"""Datasets: Cityscapes, Pascal VOC 2012, ADE20K and a plain folder format (each a reader of
its exact layout, told apart by :func:`detect_format`, checked by :func:`check_dataset`), the
training and test pipelines of mmsegmentation's config, and a synthetic city written in
Cityscapes' layout (or regrouped into the folder format).

May import :mod:`emanet.runtime`, :mod:`emanet.fast`, :mod:`emanet.models` and :mod:`emanet.io`
(image files are decoded and written by :mod:`emanet.io.images`). ``segmentation.py`` is what
every layout shares, ``cityscapes.py``, ``voc.py``, ``ade20k.py`` and ``folder.py`` the
layouts, ``formats.py`` their detection, ``transforms.py`` the pipelines, ``toycity.py`` the
synthetic city.
"""

from .ade20k import ADE20K_CLASSES, ADE20K_PALETTE, ADE20KDataset
from .cityscapes import (
    CLASSES,
    INSTANCE_CLASSES,
    LABELS,
    PALETTE,
    CityscapesDataset,
    Label,
    label_ids_to_train_ids,
    palette_lut,
    train_ids_to_label_ids,
)
from .folder import FolderDataset, read_classes_json, write_classes_json
from .formats import FORMATS, check_dataset, detect_format, open_dataset, train_split
from .segmentation import IGNORE_INDEX, DatasetError, DatasetReport, SegmentationDataset
from .toycity import generate_toy_folder, generate_toycity
from .voc import VOC_CLASSES, VOC_PALETTE, VOCDataset

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "CLASSES",
    "FORMATS",
    "IGNORE_INDEX",
    "INSTANCE_CLASSES",
    "LABELS",
    "PALETTE",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "ADE20KDataset",
    "CityscapesDataset",
    "DatasetError",
    "DatasetReport",
    "FolderDataset",
    "Label",
    "SegmentationDataset",
    "VOCDataset",
    "check_dataset",
    "detect_format",
    "generate_toy_folder",
    "generate_toycity",
    "label_ids_to_train_ids",
    "open_dataset",
    "palette_lut",
    "read_classes_json",
    "train_ids_to_label_ids",
    "train_split",
    "write_classes_json",
]
