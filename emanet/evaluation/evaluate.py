"""The evaluation loop of the package: ``emanet eval`` and validation during training both run
:func:`evaluate_segmenter`.

Every image of the dataset is decoded once, goes through the segmenter's own test pipeline
(:func:`~emanet.data.transforms.preprocess_test_image`, whole/slide, optional multi-scale +
flip, logits resized back to the image) and is compared with its full-resolution label by
:class:`~emanet.evaluation.metrics.IoUMetric`; :class:`~emanet.evaluation.metrics.InstanceIoUMetric`
adds iIoU when the dataset has ``gtFine_instanceIds`` files (Cityscapes only). Predictions can
be written as class-id PNGs and as labelId PNGs for the official scripts
(:mod:`emanet.evaluation.results`).

Under torch.distributed rank ``r`` of ``world_size`` scores images ``r, r + world_size, ...``
and the counts are summed over the ranks, so every rank returns the scores of all images, each
counted once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emanet.io.images import read_label
from emanet.runtime.errors import UserError

from .metrics import InstanceIoUMetric, IoUMetric
from .results import export_cityscapes_results, save_train_id_png

__all__ = ["ClassMismatch", "evaluate_segmenter"]

log = logging.getLogger(__name__)


class ClassMismatch(UserError, ValueError):
    """The model predicts other classes than the dataset has, or a Cityscapes-only output was
    asked of another dataset."""


def check_classes(segmenter, dataset, cityscapes_format) -> None:
    """Refuse a model whose number of classes is not the dataset's, and the Cityscapes result
    export for other datasets; warn when the names differ."""
    model_classes, data_classes = tuple(segmenter.classes), tuple(dataset.classes)
    if len(model_classes) != len(data_classes):
        raise ClassMismatch(
            f"the model predicts {len(model_classes)} classes but {dataset.root} has "
            f"{len(data_classes)}: evaluate a model trained on this dataset's classes"
        )
    if model_classes != data_classes:
        log.warning("the model's class names differ from the dataset's; scoring by position")
    if cityscapes_format is not None and getattr(dataset, "format", None) != "cityscapes":
        raise ClassMismatch("--cityscapes-format writes Cityscapes labelIds: Cityscapes data only")


def evaluate_segmenter(
    segmenter,
    dataset,
    *,
    mode: str | None = None,
    aug_test: bool = False,
    num_iterations: int | None = None,
    inverse_temperature: float | None = None,
    max_images: int | None = None,
    save_pred: str | Path | None = None,
    cityscapes_format: str | Path | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Score a :class:`emanet.Segmenter` on a dataset of any layout (see
    :func:`emanet.data.open_dataset`; its ``transforms`` are not used: the segmenter applies
    its test pipeline). iIoU is Cityscapes' alone: it needs the instance files.

    Args:
        mode, aug_test, num_iterations, inverse_temperature: as for the segmenter's call.
        max_images: score only the first this many images.
        save_pred: folder for class-id PNGs; cityscapes_format: folder for labelId PNGs
            (Cityscapes data only).
        rank, world_size: this process's share of the images under torch.distributed.

    Returns:
        ``{"metrics": {...}, "table": str}``; ``metrics`` holds ``aAcc``, ``mIoU``, ``mAcc``,
        per-class ``IoU``/``Acc`` keyed by class name, ``images``, ``classes``, the
        ``confusion`` matrix (pixel counts summed over the ranks, rows = ground truth, columns
        = prediction, a list of lists in ``classes`` order) and ``iIoU`` when available.
    """
    options = dict(mode=mode, aug_test=aug_test, num_iterations=num_iterations,
                   inverse_temperature=inverse_temperature)  # fmt: skip
    check_classes(segmenter, dataset, cityscapes_format)
    classes = list(segmenter.classes)
    metric, instance_metric = IoUMetric(num_classes=len(classes)), InstanceIoUMetric()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    # Decided from the file listing, the same on every rank (each then takes part in the
    # same all_reduce calls).
    has_instances = any(dataset.instance_path(index) is not None for index in range(count))
    indices = range(rank, count, world_size)
    for index in tqdm(indices, desc="eval", unit="image", disable=not progress or rank != 0):
        image, label = dataset.load_pair(index)  # the only decode of the image
        target = label.numpy().astype(np.int64)
        labels = segmenter(image.permute(1, 2, 0).numpy(), **options).labels
        metric.update(labels, target)
        instance_path = dataset.instance_path(index)
        if instance_path is not None:
            instance_metric.update(labels, target, read_label(instance_path).astype(np.int64))
        image_path = Path(dataset.images[index])
        if save_pred is not None:
            save_train_id_png(labels, Path(save_pred) / f"{image_path.stem}.png")
        if cityscapes_format is not None:
            export_cityscapes_results(labels, image_path, cityscapes_format)
    metric.all_reduce()
    return _report(metric, instance_metric.all_reduce() if has_instances else None, classes, count)


def _report(
    metric: IoUMetric, instance_metric: InstanceIoUMetric | None, classes: list[str], count: int
) -> dict:
    """``{"metrics": ..., "table": ...}`` of the metrics over all ranks; ``instance_metric`` is
    ``None`` when the dataset has no instance files."""
    scores = metric.compute()
    metrics = {
        "aAcc": scores["aAcc"],
        "mIoU": scores["mIoU"],
        "mAcc": scores["mAcc"],
        "IoU": dict(zip(classes, scores["IoU"], strict=True)),
        "Acc": dict(zip(classes, scores["Acc"], strict=True)),
        "images": count,
        "classes": classes,
        "confusion": metric.confusion.tolist(),
    }
    table = metric.format_table(classes)
    if instance_metric is not None:
        metrics["iIoU"] = instance_metric.compute()["iIoU"]
        table += "\n\n" + instance_metric.format_table(classes)
    return {"metrics": metrics, "table": table}
