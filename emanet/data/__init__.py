"""Cityscapes data: the label table, a dataset over the official layout, the training and test
pipelines of mmsegmentation's config, and a synthetic city written in that layout.

May import :mod:`emanet.runtime`, :mod:`emanet.fast`, :mod:`emanet.models` and :mod:`emanet.io`
(image files are decoded and written by :mod:`emanet.io.images`). ``cityscapes.py`` is the
label table and the dataset, ``transforms.py`` the pipelines, ``toycity.py`` the synthetic city.
"""

from .cityscapes import (
    CLASSES,
    IGNORE_INDEX,
    INSTANCE_CLASSES,
    LABELS,
    PALETTE,
    CityscapesDataset,
    DatasetError,
    DatasetReport,
    Label,
    check_dataset,
    label_ids_to_train_ids,
    palette_lut,
    train_ids_to_label_ids,
)
from .toycity import generate_toycity

__all__ = [
    "CLASSES",
    "IGNORE_INDEX",
    "INSTANCE_CLASSES",
    "LABELS",
    "PALETTE",
    "CityscapesDataset",
    "DatasetError",
    "DatasetReport",
    "Label",
    "check_dataset",
    "generate_toycity",
    "label_ids_to_train_ids",
    "palette_lut",
    "train_ids_to_label_ids",
]
