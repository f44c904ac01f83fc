"""Cityscapes data: label table, dataset over the official layout, pipelines, a synthetic city."""

from emanet.data.cityscapes import (
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
from emanet.data.toycity import generate_toycity

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
