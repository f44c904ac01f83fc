"""Result files of an evaluation: trainId PNGs, and labelId PNGs for the official Cityscapes
evaluation and its test server.

:func:`export_cityscapes_results` writes one PNG of **labelIds** (not trainIds) per image, named
after the input image, e.g. ``frankfurt_000000_000294_leftImg8bit.png``. cityscapesScripts finds
the prediction of a ground-truth file by walking the results folder recursively for
``{city}_{seq}_{frame}*.png``, and fails when two files match, so the folder must contain
exactly one PNG per image (no colour renderings with the same prefix beside them). Keeping the
image's own basename, ``leftImg8bit`` included, is what mmsegmentation's ``format_only`` writes
and is accepted by the server.

Every file is written atomically (:func:`emanet.io.images.write_png`); parent folders are
created.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from emanet.data.cityscapes import train_ids_to_label_ids
from emanet.io.images import write_png

__all__ = ["export_cityscapes_results", "result_file_name", "save_train_id_png"]

_CS_NAME = re.compile(r"^([^_/\\]+)_(\d+)_(\d+)(_.*)?$")


def _to_uint8_map(pred, name: str) -> np.ndarray:
    arr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer ids, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"{name} has values outside 0-255")
    return arr.astype(np.uint8)


def save_train_id_png(pred, path: str | Path) -> Path:
    """Write ``(H, W)`` trainIds (0-18, 255) as an 8-bit grey PNG at ``path``; returns it."""
    return write_png(path, _to_uint8_map(pred, "pred"))


def result_file_name(image_path: str | Path) -> str:
    """Result file name for a Cityscapes image: its basename with a ``.png`` extension.

    ``.../frankfurt/frankfurt_000000_000294_leftImg8bit.png`` ->
    ``frankfurt_000000_000294_leftImg8bit.png``. Raises ``ValueError`` when the name does not
    start with ``{city}_{seq}_{frame}``, which the official evaluation matches on.
    """
    stem = Path(image_path).stem
    if not _CS_NAME.match(stem):
        raise ValueError(f"{image_path} is not named like a Cityscapes image (city_seq_frame_...)")
    return f"{stem}.png"


def export_cityscapes_results(pred_train_ids, image_path: str | Path, out_dir: str | Path) -> Path:
    """Write a prediction for the official evaluation / test server.

    Args:
        pred_train_ids: ``(H, W)`` predicted trainIds at the image's full resolution.
        image_path: path (or name) of the ``leftImg8bit`` image the prediction belongs to.
        out_dir: results folder (created); files go directly into it.

    Returns:
        the path written: ``out_dir / result_file_name(image_path)``, an 8-bit PNG of labelIds.
    """
    train_ids = _to_uint8_map(pred_train_ids, "pred_train_ids")
    label_ids = np.asarray(train_ids_to_label_ids(train_ids)).astype(np.uint8)
    return write_png(Path(out_dir) / result_file_name(image_path), label_ids)
