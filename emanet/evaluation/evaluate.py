"""The evaluation loop of the package: ``emanet eval`` and validation during training both run
:func:`evaluate_segmenter`.

Every image of the dataset is decoded once, goes through the segmenter's own test pipeline
(:func:`~emanet.data.transforms.preprocess_test_image`, whole/slide, optional multi-scale +
flip, logits resized back to the image) and is compared with its full-resolution label by
:class:`~emanet.evaluation.metrics.IoUMetric`; :class:`~emanet.evaluation.metrics.InstanceIoUMetric`
adds iIoU when the dataset has ``gtFine_instanceIds`` files. Predictions can be written as
trainId PNGs and as labelId PNGs for the official scripts (:mod:`emanet.evaluation.results`).

Under torch.distributed rank ``r`` of ``world_size`` scores images ``r, r + world_size, ...``
and the counts are summed over the ranks, so every rank returns the scores of all images, each
counted once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from emanet.io.images import read_label

from .metrics import InstanceIoUMetric, IoUMetric
from .results import export_cityscapes_results, save_train_id_png

__all__ = ["evaluate_segmenter"]


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
    """Score a :class:`emanet.Segmenter` on a :class:`~emanet.data.CityscapesDataset` (whose
    ``transforms`` are not used: the segmenter applies its test pipeline).

    Args:
        mode, aug_test, num_iterations, inverse_temperature: as for the segmenter's call.
        max_images: score only the first this many images.
        save_pred: folder for trainId PNGs; cityscapes_format: folder for labelId PNGs.
        rank, world_size: this process's share of the images under torch.distributed.

    Returns:
        ``{"metrics": {...}, "table": str}``; ``metrics`` holds ``aAcc``, ``mIoU``, ``mAcc``,
        per-class ``IoU``/``Acc`` keyed by class name, ``images``, ``classes``, the
        ``confusion`` matrix (pixel counts summed over the ranks, rows = ground truth, columns
        = prediction, a list of lists in ``classes`` order) and ``iIoU`` when available.
    """
    options = dict(
        mode=mode,
        aug_test=aug_test,
        num_iterations=num_iterations,
        inverse_temperature=inverse_temperature,
    )
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
