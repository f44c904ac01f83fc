"""Cityscapes scores: IoU / accuracy from a confusion matrix, and the official instance-level iIoU.

Both follow the official Cityscapes rules (cityscapesScripts
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

Under DDP each rank updates a metric with its own images, then ``all_reduce()`` sums the counts
over the ranks before ``compute()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from emanet.data.cityscapes import IGNORE_INDEX, INSTANCE_CLASSES, train_ids_to_label_ids

__all__ = ["CITYSCAPES_AVG_INSTANCE_SIZE", "InstanceIoUMetric", "IoUMetric", "format_table"]

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


def format_table(names: Sequence[str], columns: Mapping[str, Sequence[float]], summary: str) -> str:
    """A text table: a row per class ``name``, a column of percentages per entry of ``columns``
    (title -> one value per class), then the ``summary`` line."""
    width = max(len("Class"), *(len(name) for name in names))
    header = [f"{'Class':<{width}}", *(f"{title:>6}" for title in columns)]
    rule = "-+-".join("-" * len(cell) for cell in header)
    lines = [" | ".join(header), rule]
    for name, *values in zip(names, *columns.values(), strict=True):
        lines.append(" | ".join([f"{name:<{width}}", *(f"{value:6.2f}" for value in values)]))
    lines += [rule, summary]
    return "\n".join(lines)


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


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, NaN where the denominator is 0 (and no warning)."""
    defined = denominator > 0
    safe = torch.where(defined, denominator, torch.ones_like(denominator))
    return torch.where(defined, numerator / safe, torch.full_like(numerator, math.nan))


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


def _check_ids(ids: torch.Tensor, num_classes: int, what: str) -> None:
    # Anything out of range at a labelled pixel is a bug upstream (wrong label encoding,
    # labelIds instead of trainIds, ...): fail loudly rather than drop pixels.
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise ValueError(f"{what} has ids outside [0, {num_classes}) at labelled pixels")


class IoUMetric:
    """Accumulates a confusion matrix and reports aAcc, mIoU, mAcc and per-class IoU / Acc.

    Attributes:
        confusion: int64 CPU tensor ``(num_classes, num_classes)``; ``confusion[t, p]`` counts
            pixels with ground truth ``t`` predicted as ``p`` (ignored pixels excluded).

    Under DDP call :meth:`all_reduce` once before :meth:`compute` (every rank then holds the
    global matrix). Images duplicated by a DistributedSampler's padding are counted twice;
    keep them out if exact numbers matter.
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
        t, p, n = target[valid].long(), pred[valid].long(), self.num_classes
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
            raise ValueError(f"target has ids outside [0, {n}) besides {self.ignore_index}")
        _check_ids(p, n, "pred")
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
        union = gt + cm.sum(dim=0) - tp
        iou, acc = _ratio(tp, union), _ratio(tp, gt)
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
        names = [f"class {i}" for i in range(self.num_classes)]
        names = names if class_names is None else list(class_names)
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        res = self.compute()
        summary = f"aAcc {res['aAcc']:.2f}  mIoU {res['mIoU']:.2f}  mAcc {res['mAcc']:.2f}"
        return format_table(names, {"IoU": res["IoU"], "Acc": res["Acc"]}, summary)


class InstanceIoUMetric:
    """Cityscapes' instance-level IoU (iIoU) of the instance classes.

    For every ground-truth instance ``i`` of class ``c`` (from ``gtFine_instanceIds``: ids
    ``labelId * 1000 + k``) with ``n_i`` pixels of which ``tp_i`` are predicted as ``c``, and
    weight ``w_i = avg_size[c] / n_i`` (:data:`CITYSCAPES_AVG_INSTANCE_SIZE`)::

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
    """

    def __init__(
        self,
        num_classes: int = 19,
        ignore_index: int = IGNORE_INDEX,
        instance_classes: Sequence[int] = INSTANCE_CLASSES,
    ):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.instance_classes = [int(c) for c in instance_classes]
        self.avg_sizes = torch.tensor(
            [CITYSCAPES_AVG_INSTANCE_SIZE[c] for c in self.instance_classes], dtype=torch.float64
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
        _check_ids(p, self.num_classes, "pred")
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
        iiou = _ratio(self.tp_weighted, self.tp_weighted + self.fn_weighted + self.fp.double())
        return {
            "iIoU": _nanmean(iiou) * 100.0,
            "class_iIoU": _percent(iiou),
            "classes": list(self.instance_classes),
        }

    def format_table(self, class_names: Sequence[str] | None = None) -> str:
        """Per-class iIoU table. ``class_names`` is indexed by trainId (all 19 names)."""
        res = self.compute()
        names = [f"class {c}" if class_names is None else class_names[c] for c in res["classes"]]
        return format_table(names, {"iIoU": res["class_iIoU"]}, f"iIoU {res['iIoU']:.2f}")
