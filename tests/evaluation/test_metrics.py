"""IoU / accuracy and iIoU against plain-loop references of the official Cityscapes rules, the
DDP reduction, and the text tables."""

import math
import os

import numpy as np
import pytest
import torch

from emanet.evaluation.metrics import (
    CITYSCAPES_AVG_INSTANCE_SIZE,
    InstanceIoUMetric,
    IoUMetric,
    format_table,
)

# Cityscapes labelId of each trainId (cityscapesScripts helpers/labels.py), written out here so
# that the tests do not depend on the library's own table.
LABEL_ID_OF_TRAIN_ID = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
INSTANCE_LABEL_TO_TRAIN = {24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


# ----------------------------------------------------------------------------------------------
# independent references (plain loops)


def reference_scores(pred, target, num_classes, ignore=255):
    """Pixel loops over the flattened arrays, then the official per-class formulas."""
    tp = [0] * num_classes
    fp = [0] * num_classes
    fn = [0] * num_classes
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist(), strict=True):
        if t == ignore:
            continue
        if p == t:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    iou, acc = [], []
    for c in range(num_classes):
        union = tp[c] + fp[c] + fn[c]
        iou.append(tp[c] / union if union else math.nan)
        acc.append(tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else math.nan)
    total = sum(tp) + sum(fn)

    def mean(values):
        valid = [v for v in values if not math.isnan(v)]
        return sum(valid) / len(valid)

    return {
        "aAcc": 100 * sum(tp) / total,
        "mIoU": 100 * mean(iou),
        "mAcc": 100 * mean(acc),
        "IoU": [100 * v for v in iou],
        "Acc": [100 * v for v in acc],
    }


def reference_iiou(preds, targets, instance_maps, ignore=255):
    """cityscapesScripts' instance loop (one mask per instance), in trainId space."""
    stats = {c: {"tpw": 0.0, "fnw": 0.0, "fp": 0} for c in INSTANCE_LABEL_TO_TRAIN.values()}
    for pred, target, inst in zip(preds, targets, instance_maps, strict=True):
        for c in stats:
            stats[c]["fp"] += int(np.sum((pred == c) & (target != ignore) & (target != c)))
        for inst_id in np.unique(inst[inst > 1000]):
            label_id = int(inst_id // 1000)
            if label_id not in INSTANCE_LABEL_TO_TRAIN:  # e.g. caravan, trailer: ignoreInEval
                continue
            c = INSTANCE_LABEL_TO_TRAIN[label_id]
            mask = inst == inst_id
            size = int(np.count_nonzero(mask))
            tp = int(np.count_nonzero(pred[mask] == c))
            weight = CITYSCAPES_AVG_INSTANCE_SIZE[c] / size
            stats[c]["tpw"] += tp * weight
            stats[c]["fnw"] += (size - tp) * weight
    scores = []
    for c in sorted(stats):
        denom = stats[c]["tpw"] + stats[c]["fp"] + stats[c]["fnw"]
        scores.append(100 * stats[c]["tpw"] / denom if denom else math.nan)
    return scores


def assert_scores_equal(got, expected):
    for key in ("aAcc", "mIoU", "mAcc"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    for key in ("IoU", "Acc"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, equal_nan=True)


def make_data(seed=0, shape=(3, 10, 12), num_classes=6):
    """Random labels with ignore pixels; class 3 absent from both, 4 never predicted,
    5 never in the ground truth."""
    rng = np.random.default_rng(seed)
    target = rng.choice([0, 1, 2, 4], size=shape)
    target[rng.random(shape) < 0.2] = 255
    pred = rng.choice([0, 1, 2, 5], size=shape)
    agree = rng.random(shape) < 0.5
    pred = np.where(agree & (target != 255) & (target != 4), target, pred)
    return pred, target


# ----------------------------------------------------------------------------------------------
# IoUMetric


def test_iou_matches_reference_with_nan_rules():
    pred, target = make_data()
    metric = IoUMetric(num_classes=6)
    metric.update(pred, target)
    res = metric.compute()
    assert_scores_equal(res, reference_scores(pred, target, 6))
    iou, acc = res["IoU"], res["Acc"]
    assert math.isnan(iou[3]) and math.isnan(acc[3])  # absent everywhere
    assert iou[4] == 0.0 and acc[4] == 0.0  # in the ground truth, never predicted
    assert iou[5] == 0.0 and math.isnan(acc[5])  # predicted, absent from the ground truth
    # the 0 of class 5 counts in mIoU, the NaNs do not
    assert res["mIoU"] == pytest.approx(sum(iou[:3] + iou[4:]) / 5)
    assert res["mAcc"] == pytest.approx(sum(acc[:3] + acc[4:5]) / 4)
    assert metric.confusion.dtype == torch.int64 and metric.confusion.shape == (6, 6)
    assert int(metric.confusion.sum()) == int(np.sum(target != 255))


@pytest.mark.parametrize("seed", range(5))
def test_iou_random_against_reference(seed):
    rng = np.random.default_rng(100 + seed)
    target = rng.integers(0, 19, (2, 16, 16))
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 19, target.shape))
    pred = np.where(pred == 255, 0, pred)
    metric = IoUMetric()
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert_scores_equal(metric.compute(), reference_scores(pred, target, 19))


def test_batching_and_input_types_do_not_matter():
    pred, target = make_data(seed=1)
    whole = IoUMetric(num_classes=6)
    whole.update(torch.from_numpy(pred), torch.from_numpy(target))
    per_image = IoUMetric(num_classes=6)
    for p, t in zip(pred, target, strict=True):
        per_image.update(p, t)  # numpy, (H, W)
    flat = IoUMetric(num_classes=6)
    flat.update(pred.ravel().astype(np.uint8), torch.from_numpy(target.ravel()).to(torch.uint8))
    nested = IoUMetric(num_classes=6)
    nested.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])  # (1, B, H, W)
    for other in (per_image, flat, nested):
        assert torch.equal(other.confusion, whole.confusion)
    whole.reset()
    assert int(whole.confusion.sum()) == 0


def test_ignored_pixels_never_count_whatever_predicted():
    target = np.array([[0, 255], [1, 255]])
    pred = np.array([[0, 254], [0, 17]])  # junk under ignored pixels is fine
    metric = IoUMetric(num_classes=2)
    metric.update(pred, target)
    assert metric.confusion.tolist() == [[1, 0], [1, 0]]
    res = metric.compute()
    assert res["aAcc"] == 50.0 and res["IoU"] == [50.0, 0.0] and res["mIoU"] == 25.0


def test_invalid_inputs_raise():
    metric = IoUMetric(num_classes=3)
    with pytest.raises(ValueError):
        metric.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError):
        metric.update(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError):
        metric.update(np.full((2, 2), 3), np.zeros((2, 2), int))
    with pytest.raises(ValueError):
        metric.update(np.zeros((2, 2), int), np.full((2, 2), 7))
    res = IoUMetric(num_classes=3).compute()  # empty: all NaN, no warnings
    assert math.isnan(res["aAcc"]) and math.isnan(res["mIoU"])


def test_format_table_lists_every_class():
    pred, target = make_data()
    metric = IoUMetric(num_classes=6)
    metric.update(pred, target)
    names = ["road", "sidewalk", "building", "wall", "fence", "pole"]
    table = metric.format_table(names)
    res = metric.compute()
    for name, iou in zip(names, res["IoU"], strict=True):
        line = next(x for x in table.splitlines() if x.startswith(name))
        assert (f"{iou:.2f}" in line) or ("nan" in line and math.isnan(iou))
    assert f"mIoU {res['mIoU']:.2f}" in table
    with pytest.raises(ValueError):
        metric.format_table(names[:3])


def test_format_table_layout():
    table = format_table(["road", "sky"], {"IoU": [12.5, math.nan], "Acc": [100.0, 0.0]}, "end")
    assert table.splitlines() == [
        "Class |    IoU |    Acc",
        "------+--------+-------",
        "road  |  12.50 | 100.00",
        "sky   |    nan |   0.00",
        "------+--------+-------",
        "end",
    ]


# ----------------------------------------------------------------------------------------------
# DDP reduction


def _random_instance_batch(seed, n=2, h=12, w=16):
    rng = np.random.default_rng(seed)
    targets, preds, insts = [], [], []
    for _ in range(n):
        target = rng.choice([0, 2, 8, 11, 13, 18, 255], size=(h, w))
        inst = np.array([LABEL_ID_OF_TRAIN_ID[t] if t != 255 else 0 for t in target.ravel()])
        inst = inst.reshape(h, w)
        # split instance-class pixels into a few instances per class; some stay crowd
        k = rng.integers(0, 4, size=(h, w))
        is_thing = np.isin(target, [11, 13, 18]) & (k > 0)
        inst = np.where(is_thing, inst * 1000 + k, inst)
        pred = np.where(rng.random((h, w)) < 0.6, target, rng.integers(0, 19, (h, w)))
        pred = np.where(pred == 255, 1, pred)
        targets.append(target)
        preds.append(pred)
        insts.append(inst)
    return np.stack(preds), np.stack(targets), np.stack(insts)


def _ddp_worker(rank, world, out_dir):
    pred, target, inst = _random_instance_batch(seed=rank)
    metric, imetric = IoUMetric(), InstanceIoUMetric()
    metric.update(pred, target)
    imetric.update(pred, target, inst)
    metric.all_reduce()
    imetric.all_reduce()
    torch.save(
        {"confusion": metric.confusion, "scores": metric.compute(), "iiou": imetric.compute()},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


@pytest.mark.slow
def test_all_reduce_over_two_gloo_processes(tmp_path, run_gloo):
    run_gloo(_ddp_worker, str(tmp_path))
    single, isingle = IoUMetric(), InstanceIoUMetric()
    for rank in range(2):
        pred, target, inst = _random_instance_batch(seed=rank)
        single.update(pred, target)
        isingle.update(pred, target, inst)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert torch.equal(got["confusion"], single.confusion)
        assert_scores_equal(got["scores"], single.compute())
        np.testing.assert_allclose(
            got["iiou"]["class_iIoU"], isingle.compute()["class_iIoU"], rtol=1e-12, equal_nan=True
        )
    # without torch.distributed, all_reduce is a no-op
    before = single.confusion.clone()
    single.all_reduce()
    assert torch.equal(single.confusion, before)


# ----------------------------------------------------------------------------------------------
# iIoU


def _hand_example():
    # 2x6 image. Car instances 26001 (4 px) and 26002 (2 px); a crowd car region (id 26);
    # a caravan instance (29001, ignored in evaluation); a person instance 24001 (1 px).
    inst = np.array(
        [
            [26001, 26001, 26001, 26001, 26002, 26002],
            [7, 7, 26, 26, 29001, 24001],
        ]
    )
    target = np.array([[13, 13, 13, 13, 13, 13], [0, 0, 13, 13, 255, 11]])
    pred = np.array([[13, 13, 13, 0, 0, 0], [13, 0, 0, 13, 13, 11]])
    return pred, target, inst


def test_iiou_hand_computed():
    pred, target, inst = _hand_example()
    metric = InstanceIoUMetric()
    metric.update(pred, target, inst)
    res = metric.compute()
    assert res["classes"] == [11, 12, 13, 14, 15, 16, 17, 18]
    a = 12794.0202738185
    # car: iTP = 3 * a/4 (instance 1) + 0 (instance 2); iFN = 1 * a/4 + 2 * a/2;
    # FP = 1 (the road pixel predicted car). Crowd and caravan pixels play no part.
    car = 0.75 * a / (0.75 * a + 1 + 1.25 * a)
    assert car == pytest.approx(0.37498535, abs=1e-8)
    by_class = dict(zip(res["classes"], res["class_iIoU"], strict=True))
    assert by_class[13] == pytest.approx(100 * car, rel=1e-12)
    assert by_class[11] == pytest.approx(100.0)  # the person is fully found, no FP
    for c in (12, 14, 15, 16, 17, 18):
        assert math.isnan(by_class[c])
    assert res["iIoU"] == pytest.approx(100 * (car + 1) / 2, rel=1e-12)
    assert res["class_iIoU"] == pytest.approx(reference_iiou([pred], [target], [inst]), nan_ok=True)
    assert "iIoU" in metric.format_table([f"c{i}" for i in range(19)])


def test_iiou_instances_are_per_image_in_a_batch():
    pred1, target1, inst1 = _hand_example()
    # second image: another instance with the same id 26001, 2 px, both predicted car
    inst2 = np.array([[26001, 26001, 7, 7, 7, 7], [7, 7, 7, 7, 7, 7]])
    target2 = np.where(inst2 == 7, 0, 13)
    pred2 = target2.copy()
    batched = InstanceIoUMetric()
    batched.update(np.stack([pred1, pred2]), np.stack([target1, target2]), np.stack([inst1, inst2]))
    separate = InstanceIoUMetric()
    separate.update(pred1, target1, inst1)
    separate.update(torch.from_numpy(pred2), torch.from_numpy(target2), torch.from_numpy(inst2))
    a = 12794.0202738185
    expected = 1.75 * a / (1.75 * a + 1 + 1.25 * a)  # the new instance adds a/2 * 2 to iTP
    for metric in (batched, separate):
        by_class = dict(zip(*[metric.compute()[k] for k in ("classes", "class_iIoU")], strict=True))
        assert by_class[13] == pytest.approx(100 * expected, rel=1e-12)


def test_iiou_table_lists_the_instance_classes_by_name():
    pred, target, inst = _random_instance_batch(seed=4)
    metric = InstanceIoUMetric()
    metric.update(pred, target, inst)
    res = metric.compute()
    names = [f"name-{i}" for i in range(19)]
    *rows, summary = metric.format_table(names).splitlines()
    assert len({len(row) for row in rows}) == 1  # columns aligned
    body = [row.split(" | ") for row in rows[2:-1]]
    assert [name.strip() for name, _ in body] == [names[c] for c in res["classes"]]
    for (_, value), expected in zip(body, res["class_iIoU"], strict=True):
        assert value.strip() == f"{expected:.2f}"
    assert summary == f"iIoU {res['iIoU']:.2f}"


@pytest.mark.parametrize("seed", range(3))
def test_iiou_random_against_reference(seed):
    pred, target, inst = _random_instance_batch(seed=10 + seed, n=3)
    metric = InstanceIoUMetric()
    metric.update(pred, target, inst)
    expected = reference_iiou(pred, target, inst)
    np.testing.assert_allclose(metric.compute()["class_iIoU"], expected, rtol=1e-12, equal_nan=True)
    metric.reset()
    assert metric.tp_weighted.sum() == 0 and metric.fp.sum() == 0
