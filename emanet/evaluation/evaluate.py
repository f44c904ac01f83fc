"""Cityscapes evaluation: IoU / accuracy from a confusion matrix, the official iIoU, and export.

Metrics follow the official Cityscapes rules (cityscapesScripts
``evalPixelLevelSemanticLabeling``), written in trainId space:

* pixels whose ground truth is ignored (``ignore_index``) never count;
* ``IoU = TP / (TP + FP + FN)`` per class, NaN only when ``TP + FP + FN = 0`` -- a class absent
  from the ground truth but predicted scores 0 and counts in the mean;
* ``Acc = TP / (TP + FN)``, NaN when the class is absent from the ground truth;
* mIoU / mAcc are means over the non-NaN classes; all numbers are reported in percent, as
  mmsegmentation does.

iIoU (:class:`InstanceIoUMetric`) weights each ground-truth instance's TP and FN pixels by
``average instance size of its class / its size``, so that small objects count as much as
large ones; FP stays unweighted (it cannot be attributed to an instance).

Result files for the official evaluation and the test server
(:func:`export_cityscapes_results`): one PNG of **labelIds** (not trainIds) per image, named
after the input image, e.g. ``frankfurt_000000_000294_leftImg8bit.png``. cityscapesScripts finds
the prediction of a ground-truth file by walking the results folder recursively for
``{city}_{seq}_{frame}*.png``, and fails when two files match, so the folder must contain
exactly one PNG per image (no colour renderings with the same prefix beside them). Keeping the
image's own basename, ``leftImg8bit`` included, is what mmsegmentation's ``format_only`` writes
and is accepted by the server.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from emanet.data.cityscapes import IGNORE_INDEX, INSTANCE_CLASSES, train_ids_to_label_ids

__all__ = [
    "CITYSCAPES_AVG_INSTANCE_SIZE",
    "evaluate_segmenter",
    "IoUMetric",
    "InstanceIoUMetric",
    "export_cityscapes_results",
    "result_file_name",
    "save_train_id_png",
]

# cityscapesScripts' ``avgClassSize``: mean instance size in pixels of each instance class over
# the Cityscapes train set (fixed constants of the official iIoU), keyed by trainId.
CITYSCAPES_AVG_INSTANCE_SIZE: Mapping[int, float] = {
    11: 3462.4756337644,  # person
    12: 3930.4788056518,  # rider
    13: 12794.0202738185,  # car
    14: 27855.1264367816,  # truck
    15: 35732.1511111111,  # bus
    16: 67583.7075812274,  # train
    17: 6298.7200839748,  # motorcycle
    18: 4314.2740141851,  # bicycle
}

# Instance ids in gtFine_instanceIds are labelId * 1000 + index; smaller values are plain
# labelIds (stuff, or crowd regions without instances), which iIoU does not look at.
_INSTANCE_ID_OFFSET = 1000


def _as_int_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray) and x.dtype.kind == "u" and x.dtype != np.uint8:
        x = x.astype(np.int64)  # torch's uint16/32/64 support few ops
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got {t.dtype}")
    return t


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~torch.isnan(values)]
    return float(valid.mean()) if valid.numel() else math.nan


def _all_reduce_sum_(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` in place over all ranks when torch.distributed is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    device = tensor.device
    if dist.get_backend() == "nccl":  # NCCL only reduces CUDA tensors
        device = torch.device("cuda", torch.cuda.current_device())
    buf = tensor.to(device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    tensor.copy_(buf.to(tensor.device))


def _percent(x: torch.Tensor) -> list[float]:
    return [float(v) * 100.0 for v in x]


class IoUMetric:
    """Accumulates a confusion matrix and reports aAcc, mIoU, mAcc and per-class IoU / Acc.

    Attributes:
        confusion: int64 CPU tensor ``(num_classes, num_classes)``; ``confusion[t, p]`` counts
            pixels with ground truth ``t`` predicted as ``p`` (ignored pixels excluded).

    Under DDP each rank updates with its own images; call :meth:`all_reduce` once before
    :meth:`compute` (every rank then holds the global matrix). Images duplicated by a
    DistributedSampler's padding are counted twice; keep them out if exact numbers matter.
    """

    def __init__(self, num_classes: int = 19, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError("num_classes must be positive")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred, target) -> None:
        """Add one batch (or one image).

        Args:
            pred: integer tensor or array of predicted trainIds, any shape, e.g. ``(B, H, W)``.
            target: ground-truth trainIds of the same shape; ``ignore_index`` pixels are skipped.
        """
        pred = _as_int_tensor(pred, "pred")
        target = _as_int_tensor(target, "target").to(pred.device)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        valid = target != self.ignore_index
        t = target[valid].long()
        p = pred[valid].long()
        n = self.num_classes
        if t.numel():
            # Anything out of range at a labelled pixel is a bug upstream (wrong label encoding,
            # labelIds instead of trainIds, ...): fail loudly rather than drop pixels.
            if int(t.min()) < 0 or int(t.max()) >= n:
                raise ValueError(f"target has ids outside [0, {n}) besides {self.ignore_index}")
            if int(p.min()) < 0 or int(p.max()) >= n:
                raise ValueError(f"pred has ids outside [0, {n}) at labelled pixels")
        counts = torch.bincount(t * n + p, minlength=n * n).view(n, n)
        self.confusion += counts.cpu()

    def all_reduce(self) -> IoUMetric:
        """Sum the confusion matrix over all ranks (no-op without torch.distributed)."""
        _all_reduce_sum_(self.confusion)
        return self

    def compute(self) -> dict:
        """Scores in percent.

        Returns:
            ``{"aAcc": float, "mIoU": float, "mAcc": float, "IoU": [num_classes floats],
            "Acc": [num_classes floats]}``; NaN entries as described in the module docstring.
        """
        cm = self.confusion.double()
        tp = cm.diagonal()
        gt = cm.sum(dim=1)
        predicted = cm.sum(dim=0)
        union = gt + predicted - tp
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        total = float(gt.sum())
        return {
            "aAcc": float(tp.sum()) / total * 100.0 if total > 0 else math.nan,
            "mIoU": _nanmean(iou) * 100.0,
            "mAcc": _nanmean(acc) * 100.0,
            "IoU": _percent(iou),
            "Acc": _percent(acc),
        }

    def format_table(self, class_names: Sequence[str] | None = None) -> str:
        """Per-class text table (IoU, Acc in percent) followed by the summary scores."""
        names = list(class_names) if class_names is not None else None
        if names is None:
            names = [f"class {i}" for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        res = self.compute()
        width = max(len("Class"), *(len(n) for n in names))
        lines = [
            f"{'Class':<{width}} | {'IoU':>6} | {'Acc':>6}",
            f"{'-' * width}-+--------+-------",
        ]
        for name, iou, acc in zip(names, res["IoU"], res["Acc"], strict=True):
            lines.append(f"{name:<{width}} | {iou:6.2f} | {acc:6.2f}")
        lines.append(f"{'-' * width}-+--------+-------")
        lines.append(f"aAcc {res['aAcc']:.2f}  mIoU {res['mIoU']:.2f}  mAcc {res['mAcc']:.2f}")
        return "\n".join(lines)


class InstanceIoUMetric:
    """Cityscapes' instance-level IoU (iIoU) of the instance classes.

    For every ground-truth instance ``i`` of class ``c`` (from ``gtFine_instanceIds``: ids
    ``labelId * 1000 + k``) with ``n_i`` pixels of which ``tp_i`` are predicted as ``c``, and
    weight ``w_i = avg_size[c] / n_i``::

        iTP_c = sum_i w_i tp_i,   iFN_c = sum_i w_i (n_i - tp_i)
        FP_c  = pixels predicted c whose ground truth is another, non-ignored class
        iIoU_c = iTP_c / (iTP_c + FP_c + iFN_c)      (NaN when the denominator is 0)

    ``iIoU`` is the mean over the non-NaN classes, in percent. Crowd regions (instance ids
    below 1000) and instances of classes outside ``instance_classes`` (caravan, trailer) are
    not instances for this score, as in cityscapesScripts.

    Args:
        num_classes: number of trainIds (19).
        ignore_index: ignored ground-truth trainId.
        instance_classes: trainIds scored (default: the 8 Cityscapes instance classes).
        avg_sizes: trainId -> average instance size; default the official train-set constants.
    """

    def __init__(
        self,
        num_classes: int = 19,
        ignore_index: int = IGNORE_INDEX,
        instance_classes: Sequence[int] = INSTANCE_CLASSES,
        avg_sizes: Mapping[int, float] | None = None,
    ):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.instance_classes = [int(c) for c in instance_classes]
        sizes = CITYSCAPES_AVG_INSTANCE_SIZE if avg_sizes is None else avg_sizes
        self.avg_sizes = torch.tensor(
            [sizes[c] for c in self.instance_classes], dtype=torch.float64
        )
        # labelId -> index into instance_classes (-1: not scored), to decode instance ids.
        label_ids = np.asarray(
            train_ids_to_label_ids(np.asarray(self.instance_classes, dtype=np.uint8))
        ).astype(np.int64)
        self._label_to_slot = torch.full((int(label_ids.max()) + 1,), -1, dtype=torch.int64)
        self._label_to_slot[torch.from_numpy(label_ids)] = torch.arange(len(label_ids))
        k = len(self.instance_classes)
        self.tp_weighted = torch.zeros(k, dtype=torch.float64)
        self.fn_weighted = torch.zeros(k, dtype=torch.float64)
        self.fp = torch.zeros(k, dtype=torch.int64)

    def reset(self) -> None:
        self.tp_weighted.zero_()
        self.fn_weighted.zero_()
        self.fp.zero_()

    def update(self, pred, target, instance_ids) -> None:
        """Add images.

        Args:
            pred: predicted trainIds ``(H, W)`` or ``(B, H, W)``, integer tensor or array.
            target: ground-truth trainIds, same shape (only used for FP).
            instance_ids: the ``gtFine_instanceIds`` maps, same shape. Instances are told apart
                within one image only, so batches are processed image by image.
        """
        pred = _as_int_tensor(pred, "pred")
        target = _as_int_tensor(target, "target").to(pred.device)
        instance_ids = _as_int_tensor(instance_ids, "instance_ids").to(pred.device)
        if not pred.shape == target.shape == instance_ids.shape:
            raise ValueError(
                f"shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
                f"instance_ids {tuple(instance_ids.shape)}"
            )
        if pred.ndim == 2:
            pred, target, instance_ids = pred[None], target[None], instance_ids[None]
        if pred.ndim != 3:
            raise ValueError(f"expected (H, W) or (B, H, W), got {tuple(pred.shape)}")
        self._add_false_positives(pred, target)
        for p, inst in zip(pred, instance_ids, strict=True):
            self._add_instances(p, inst)

    def _add_false_positives(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        wrong = (target != self.ignore_index) & (pred != target)
        p = pred[wrong].long()
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= self.num_classes):
            raise ValueError(f"pred has ids outside [0, {self.num_classes}) at labelled pixels")
        per_class = torch.bincount(p, minlength=self.num_classes).cpu()
        self.fp += per_class[self.instance_classes]

    def _add_instances(self, pred: torch.Tensor, inst: torch.Tensor) -> None:
        """One image: ``pred`` and ``inst`` of shape ``(H, W)``."""
        is_instance = inst > _INSTANCE_ID_OFFSET
        ids = inst[is_instance].long()
        if ids.numel() == 0:
            return
        lut = self._label_to_slot.to(ids.device)
        label_ids = ids // _INSTANCE_ID_OFFSET
        slots = torch.where(label_ids < lut.numel(), lut[label_ids.clamp(max=lut.numel() - 1)], -1)
        scored = slots >= 0
        ids, slots = ids[scored], slots[scored]
        if ids.numel() == 0:
            return
        train_ids = torch.as_tensor(self.instance_classes, device=ids.device)[slots]
        hits = (pred[is_instance][scored].long() == train_ids).double()
        # per instance: size n_i, correctly predicted pixels tp_i, class slot
        uniq, inverse, sizes = torch.unique(ids, return_inverse=True, return_counts=True)
        tp_inst = torch.zeros(uniq.numel(), dtype=torch.float64, device=ids.device)
        tp_inst.index_add_(0, inverse, hits)
        slot_inst = lut[uniq // _INSTANCE_ID_OFFSET]
        weight = self.avg_sizes.to(ids.device)[slot_inst] / sizes.double()
        k = len(self.instance_classes)
        tp_w = torch.zeros(k, dtype=torch.float64, device=ids.device)
        fn_w = torch.zeros(k, dtype=torch.float64, device=ids.device)
        tp_w.index_add_(0, slot_inst, tp_inst * weight)
        fn_w.index_add_(0, slot_inst, (sizes.double() - tp_inst) * weight)
        self.tp_weighted += tp_w.cpu()
        self.fn_weighted += fn_w.cpu()

    def all_reduce(self) -> InstanceIoUMetric:
        """Sum the statistics over all ranks (no-op without torch.distributed)."""
        _all_reduce_sum_(self.tp_weighted)
        _all_reduce_sum_(self.fn_weighted)
        _all_reduce_sum_(self.fp)
        return self

    def compute(self) -> dict:
        """``{"iIoU": mean percent, "class_iIoU": [percent per instance class], "classes":
        [their trainIds]}``."""
        denom = self.tp_weighted + self.fn_weighted + self.fp.double()
        nan = torch.full_like(denom, math.nan)
        iiou = torch.where(denom > 0, self.tp_weighted / torch.where(denom > 0, denom, 1.0), nan)
        return {
            "iIoU": _nanmean(iiou) * 100.0,
            "class_iIoU": _percent(iiou),
            "classes": list(self.instance_classes),
        }

    def format_table(self, class_names: Sequence[str] | None = None) -> str:
        """Per-class iIoU table. ``class_names`` is indexed by trainId (all 19 names)."""
        res = self.compute()
        names = [
            class_names[c] if class_names is not None else f"class {c}" for c in res["classes"]
        ]
        width = max(len("Class"), *(len(n) for n in names))
        lines = [f"{'Class':<{width}} | {'iIoU':>6}", f"{'-' * width}-+-------"]
        for name, value in zip(names, res["class_iIoU"], strict=True):
            lines.append(f"{name:<{width}} | {value:6.2f}")
        lines.append(f"{'-' * width}-+-------")
        lines.append(f"iIoU {res['iIoU']:.2f}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# result files

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
    """Write ``(H, W)`` trainIds (0-18, 255) as an 8-bit grey PNG; parent folders are created."""
    arr = _to_uint8_map(pred, "pred")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


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
    arr = _to_uint8_map(pred_train_ids, "pred_train_ids")
    label_ids = np.asarray(train_ids_to_label_ids(arr)).astype(np.uint8)
    path = Path(out_dir) / result_file_name(image_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_ids).save(path)
    return path


# ----------------------------------------------------------------------------------------------
# evaluation loop


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
    """Evaluate a :class:`emanet.Segmenter` on a :class:`~emanet.data.CityscapesDataset`.

    The evaluation loop of the package: ``emanet eval`` and validation during training both
    run it. Every image is decoded once and goes through the segmenter's test pipeline
    (:func:`~emanet.data.transforms.preprocess_test_image`, whole/slide, optional multi-scale +
    flip, logits resized back to the image), and is compared with its full-resolution label.
    iIoU is added when the dataset has ``gtFine_instanceIds`` files.

    Under torch.distributed give ``rank`` and ``world_size``: rank ``r`` scores images
    ``r, r + world_size, ...`` and the counts are summed over the ranks, so every rank returns
    the scores of all images (each counted once).

    Args:
        dataset: a CityscapesDataset (its ``transforms`` are not used: the segmenter applies
            the test pipeline).
        max_images: score only the first this many images.
        save_pred: folder for trainId PNGs; cityscapes_format: folder for labelId PNGs.

    Returns:
        ``{"metrics": {...}, "table": str}``; ``metrics`` holds ``aAcc``, ``mIoU``, ``mAcc``,
        per-class ``IoU``/``Acc`` keyed by class name, ``images``, ``classes``, the
        ``confusion`` matrix (pixel counts summed over the ranks, rows = ground truth, columns
        = prediction, a list of lists in ``classes`` order) and ``iIoU`` when available.
    """
    from tqdm import tqdm

    classes = list(segmenter.classes)
    metric = IoUMetric(num_classes=len(classes))
    instance_metric = InstanceIoUMetric()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    # Decided from the file listing, the same on every rank (each then takes part in the
    # same all_reduce calls).
    has_instances = any(dataset.instance_path(index) is not None for index in range(count))
    indices = range(rank, count, world_size)
    for index in tqdm(indices, desc="eval", unit="image", disable=not progress or rank != 0):
        image_path = dataset.images[index]
        image, label = dataset.load_pair(index)  # the only decode of the image
        target = label.numpy().astype(np.int64)
        result = segmenter(
            image.permute(1, 2, 0).numpy(),
            mode=mode,
            aug_test=aug_test,
            num_iterations=num_iterations,
            inverse_temperature=inverse_temperature,
        )
        metric.update(result.labels, target)
        instance_path = dataset.instance_path(index)
        if instance_path is not None:
            instances = np.asarray(Image.open(instance_path), dtype=np.int64)
            instance_metric.update(result.labels, target, instances)
        if save_pred is not None:
            save_train_id_png(result.labels, Path(save_pred) / f"{Path(image_path).stem}.png")
        if cityscapes_format is not None:
            export_cityscapes_results(result.labels, image_path, cityscapes_format)
    res = metric.all_reduce().compute()
    metrics = {
        "aAcc": res["aAcc"],
        "mIoU": res["mIoU"],
        "mAcc": res["mAcc"],
        "IoU": dict(zip(classes, res["IoU"], strict=True)),
        "Acc": dict(zip(classes, res["Acc"], strict=True)),
        "images": count,
        # Pixel counts, rows = ground truth, columns = prediction, in ``classes`` order.
        "classes": classes,
        "confusion": metric.confusion.tolist(),
    }
    table = metric.format_table(classes)
    if has_instances:
        inst = instance_metric.all_reduce().compute()
        metrics["iIoU"] = inst["iIoU"]
        table += "\n\n" + instance_metric.format_table(classes)
    return {"metrics": metrics, "table": table}
