"""Cityscapes label table, dataset reader, dataset check, and the synthetic toy city."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import Cityscapes as TorchvisionCityscapes

from emanet.data import (
    CLASSES,
    INSTANCE_CLASSES,
    LABELS,
    PALETTE,
    CityscapesDataset,
    check_dataset,
    label_ids_to_train_ids,
    train_ids_to_label_ids,
)
from emanet.data.toycity import generate_toycity

# cityscapesScripts helpers/labels.py, written out independently: labelId -> trainId
OFFICIAL_TRAIN_IDS = {
    0: 255,
    1: 255,
    2: 255,
    3: 255,
    4: 255,
    5: 255,
    6: 255,
    7: 0,
    8: 1,
    9: 255,
    10: 255,
    11: 2,
    12: 3,
    13: 4,
    14: 255,
    15: 255,
    16: 255,
    17: 5,
    18: 255,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    29: 255,
    30: 255,
    31: 16,
    32: 17,
    33: 18,
}


def test_label_table_matches_official():
    table = {lb.id: lb.train_id for lb in LABELS}
    assert {k: v for k, v in table.items() if k >= 0} == OFFICIAL_TRAIN_IDS
    assert table[-1] == -1  # license plate: -1 in the official table
    assert len(LABELS) == 35
    assert CLASSES[0] == "road" and CLASSES[10] == "sky" and CLASSES[18] == "bicycle"
    assert PALETTE[0] == (128, 64, 128) and PALETTE[13] == (0, 0, 142)
    assert PALETTE[18] == (119, 11, 32)
    assert INSTANCE_CLASSES == (11, 12, 13, 14, 15, 16, 17, 18)


def test_label_mapping_all_256_values_and_inverse():
    values = np.arange(256, dtype=np.uint8)
    mapped = label_ids_to_train_ids(values)
    for value in range(256):
        assert mapped[value] == OFFICIAL_TRAIN_IDS.get(value, 255)
    train = np.arange(19, dtype=np.uint8)
    assert (label_ids_to_train_ids(train_ids_to_label_ids(train)) == train).all()
    assert train_ids_to_label_ids(np.array([255]))[0] == 0


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return generate_toycity(tmp_path_factory.mktemp("tc"), train=40, val=2, size=(64, 128), seed=0)


def test_toycity_layout_and_torchvision_reads_it(city):
    image = city / "leftImg8bit/train/toyberg/toyberg_000000_000019_leftImg8bit.png"
    assert image.is_file()
    for suffix in ("labelIds", "instanceIds", "color"):
        assert (city / f"gtFine/train/toyberg/toyberg_000000_000019_gtFine_{suffix}.png").is_file()
    tv = TorchvisionCityscapes(
        str(city), split="train", mode="fine", target_type=["semantic", "instance", "color"]
    )
    assert len(tv) == 40
    img, (semantic, instance, colour) = tv[0]
    assert img.size == (128, 64)
    ours = np.asarray(Image.open(tv.targets[0][0]))
    assert (np.asarray(semantic) == ours).all()
    inst = np.asarray(instance).astype(np.int64)
    sem = np.asarray(semantic).astype(np.int64)
    big = inst >= 1000
    assert (inst[big] // 1000 == sem[big]).all()
    assert (inst[~big] == sem[~big]).all()


def test_toycity_covers_all_classes_with_valid_ids(city):
    seen = set()
    valid = {lb.id for lb in LABELS if lb.id >= 0}
    for path in sorted((city / "gtFine/train").rglob("*_labelIds.png")):
        ids = np.unique(np.asarray(Image.open(path)))
        assert set(ids.tolist()) <= valid, path
        seen |= set(label_ids_to_train_ids(ids).tolist())
    assert set(range(19)) <= seen


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_toycity_deterministic_per_seed(tmp_path):
    a = generate_toycity(tmp_path / "a", train=3, val=1, size=(32, 64), seed=7)
    b = generate_toycity(tmp_path / "b", train=3, val=1, size=(32, 64), seed=7)
    c = generate_toycity(tmp_path / "c", train=3, val=1, size=(32, 64), seed=8)
    assert _digest(a) == _digest(b) != _digest(c)


def test_dataset_reads_train_ids_and_prefers_label_train_ids(city, tmp_path):
    ds = CityscapesDataset(city, "train")
    assert len(ds) == 40
    image, label = ds[0]
    assert image.mode == "RGB" and label.mode == "L" and image.size == label.size
    values = set(np.unique(np.asarray(label)).tolist())
    assert values <= set(range(19)) | {255}
    expected = label_ids_to_train_ids(np.asarray(Image.open(ds.labels[0])))
    assert (np.asarray(label) == expected).all()
    assert ds.instance_path(0).name.endswith("_gtFine_instanceIds.png")
    # a labelTrainIds file, when present, is used as is
    trainid_path = ds.labels[0].with_name(ds.labels[0].name.replace("_labelIds", "_labelTrainIds"))
    Image.fromarray(np.full((64, 128), 5, np.uint8)).save(trainid_path)
    try:
        ds2 = CityscapesDataset(city, "train")
        assert (np.asarray(ds2[0][1]) == 5).all()
    finally:
        trainid_path.unlink()
    with_transform = CityscapesDataset(city, "val", transforms=lambda i, lab: (1, 2))
    assert with_transform[0] == (1, 2)


def test_dataset_errors_name_the_file(tmp_path):
    root = generate_toycity(tmp_path / "c", train=2, val=0, size=(32, 64), seed=1)
    with pytest.raises(FileNotFoundError, match="leftImg8bit/val"):
        CityscapesDataset(root, "val")
    ds = CityscapesDataset(root, "train")
    broken = ds.images[1]
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(OSError, match=broken.name):
        ds[1]
    ds.labels[0].unlink()
    with pytest.raises(FileNotFoundError, match="no label file"):
        CityscapesDataset(root, "train")


def test_check_dataset_reports_planted_problems(tmp_path):
    root = generate_toycity(tmp_path / "c", train=4, val=1, size=(32, 64), seed=2)
    report = check_dataset(root)
    assert report.ok and report.counts == {"train": 4, "val": 1}
    assert "no problems" in report.format()
    ds = CityscapesDataset(root, "train")
    ds.labels[0].unlink()  # missing label
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(ds.labels[1])  # size mismatch
    Image.fromarray(np.full((32, 64), 200, np.uint8)).save(ds.labels[2])  # unknown ids
    report = check_dataset(root)
    assert not report.ok
    text = report.format()
    assert ds.images[0].name in text and "no label file" in text
    assert ds.labels[1].name in text and "differs" in text
    assert ds.labels[2].name in text and "[200]" in text


def test_pipeline_on_toycity_keeps_label_set(city):
    from emanet.data.transforms import TrainTransform

    ds = CityscapesDataset(
        city, "train", transforms=TrainTransform(crop_size=(32, 48), scale=(128, 64))
    )
    torch.manual_seed(0)
    for index in range(5):
        image, label = ds[index]
        assert image.shape == (3, 32, 48) and label.shape == (32, 48)
        original = set(np.unique(np.asarray(CityscapesDataset(city, "train")[index][1])).tolist())
        assert set(label.unique().tolist()) <= original | {255}


def test_check_dataset_names_unreadable_file(tmp_path):
    root = generate_toycity(tmp_path / "c", train=2, val=0, size=(32, 64), seed=4)
    ds = CityscapesDataset(root, "train")
    ds.labels[1].write_bytes(b"garbage")
    report = check_dataset(root)
    assert any(ds.labels[1].name in p and "cannot read" in p for p in report.problems)
