"""The four layouts: each reader on a tiny dataset written in its exact layout (pairs, classes,
ignore handling, reduce_zero_label), detection, and ``check_dataset`` on each, clean and with
one broken file."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from emanet.data import (
    ADE20K_CLASSES,
    VOC_CLASSES,
    VOC_PALETTE,
    check_dataset,
    detect_format,
    generate_toy_folder,
    generate_toycity,
    open_dataset,
    train_split,
)
from emanet.data.segmentation import DatasetError
from emanet.data.toycity import TOY_GROUPS

from .layouts import devkit_colormap, scene, write_ade, write_voc


@pytest.fixture
def datasets(tmp_path):
    """One tiny dataset per layout: format -> root."""
    return {
        "cityscapes": generate_toycity(tmp_path / "city", train=2, val=1, size=(32, 64)),
        "voc": write_voc(tmp_path / "voc", train=3, val=2, aug=2),
        "ade20k": write_ade(tmp_path / "ade", ADE20K_CLASSES),
        "folder": generate_toy_folder(tmp_path / "folder", train=3, val=2, size=(32, 64)),
    }


def test_each_layout_is_detected_and_checks_clean(datasets):
    for format, root in datasets.items():
        assert detect_format(root) == format
        report = check_dataset(root)
        assert report.ok, report.format()
        assert report.layout == format and "no problems found" in report.format()
    assert check_dataset(datasets["voc"]).counts == {"train": 3, "val": 2, "train_aug": 5}
    assert check_dataset(datasets["ade20k"]).counts == {"training": 3, "validation": 2}
    assert check_dataset(datasets["folder"]).counts == {"train": 3, "val": 2}


def test_voc_root_may_be_the_voc2012_folder_itself(datasets):
    voc2012 = datasets["voc"] / "VOCdevkit" / "VOC2012"
    assert detect_format(voc2012) == "voc"
    assert len(open_dataset(voc2012, "val")) == len(open_dataset(datasets["voc"], "val")) == 2


def test_voc_reads_palette_indices_and_the_augmented_list(datasets):
    root = datasets["voc"]
    val = open_dataset(root, "val")
    assert val.classes == VOC_CLASSES and val.palette[15] == (192, 128, 128)  # person
    _, train_ids = scene((48, 64), 0, 3)  # the first val image
    image, label = val.load_pair(0)
    assert tuple(image.shape) == (3, 48, 64)
    ignored = train_ids == 255
    assert (label.numpy()[ignored] == 255).all() and (label.numpy()[~ignored] <= 20).all()
    assert set(np.unique(label.numpy())) >= {0, 255}
    assert train_split(root) == "train_aug"
    aug = open_dataset(root, "train_aug")
    assert len(aug) == 5 and all(p.parent.name == "SegmentationClassAug" for p in aug.labels)


def test_torchvision_reads_the_voc_layout_as_we_do(datasets):
    torchvision = pytest.importorskip("torchvision")
    theirs = torchvision.datasets.VOCSegmentation(
        datasets["voc"], year="2012", image_set="train", download=False
    )
    ours = open_dataset(datasets["voc"], "train")
    assert len(theirs) == len(ours) == 3
    for index in range(3):
        image, target = theirs[index]
        assert target.mode == "P"
        np.testing.assert_array_equal(np.array(target), ours.load_label(index))
        assert image.size == (64, 48)


def test_ade20k_reduces_the_zero_label(datasets):
    dataset = open_dataset(datasets["ade20k"], "val")  # "val" names "validation"
    assert dataset.classes == ADE20K_CLASSES and len(dataset.classes) == 150
    stored = np.array(Image.open(dataset.labels[0]))
    label = dataset.load_label(0)
    np.testing.assert_array_equal(label[stored == 0], 255)
    np.testing.assert_array_equal(label[stored > 0], stored[stored > 0] - 1)
    assert ADE20K_CLASSES[int(label[-1, 0])] in ("road", "sidewalk", "grass", "tree", "car")


def test_folder_format_regroups_the_toy_city(datasets):
    root = datasets["folder"]
    classes = json.loads((root / "classes.json").read_text())
    dataset = open_dataset(root, "train")
    assert list(dataset.classes) == classes["classes"] == list(TOY_GROUPS)
    label = dataset.load_label(0)
    assert label.dtype == np.uint8 and set(np.unique(label)) <= {*range(7), 255}
    assert train_split(root) == "train"


def _break(format, root):
    """Plant one broken file; returns a piece of the problem it must cause."""
    if format == "cityscapes":
        path = next((root / "gtFine" / "val").rglob("*_labelIds.png"))
        path.write_bytes(path.read_bytes()[:40])
        return path.name
    if format == "voc":  # a colour rendering saved in place of the palette label
        path = root / "VOCdevkit/VOC2012/SegmentationClass/2007_000003.png"
        Image.open(path).convert("RGB").save(path)
        return "one channel"
    if format == "ade20k":
        path = next((root / "annotations" / "validation").glob("*.png"))
        Image.fromarray(np.full((48, 64), 200, np.uint8)).save(path)
        return "values [200]"
    path = root / "labels" / "val" / "scene_0001.png"
    Image.fromarray(np.full((32, 64), 9, np.uint8)).save(path)
    return "values [9]"


@pytest.mark.parametrize("format", ["cityscapes", "voc", "ade20k", "folder"])
def test_check_catches_one_broken_file(datasets, format):
    expected = _break(format, datasets[format])
    report = check_dataset(datasets[format])
    assert not report.ok
    assert len(report.problems) == 1 and expected in report.problems[0], report.problems


def test_unpaired_files_and_size_mismatches_are_named(datasets):
    root = datasets["folder"]
    (root / "labels" / "val" / "scene_0000.png").unlink()
    shutil.copy(root / "labels" / "train" / "scene_0000.png", root / "labels" / "val" / "lost.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "labels" / "train" / "scene_0001.png")
    problems = "\n".join(check_dataset(root).problems)
    assert "scene_0000.png: no label file" in problems
    assert "lost.png: label without an image" in problems
    assert "size 10x10 differs from its image (64x32)" in problems
    ade = datasets["ade20k"]
    next((ade / "images" / "training").glob("*.jpg")).unlink()
    assert "label without an image" in check_dataset(ade).problems[0]


def test_readers_refuse_what_is_not_their_layout(datasets, tmp_path):
    with pytest.raises(DatasetError, match="no dataset layout recognised"):
        detect_format(tmp_path)
    assert "no dataset layout" in check_dataset(tmp_path).problems[0]
    with pytest.raises(FileNotFoundError, match="no list for split 'test'"):
        open_dataset(datasets["voc"], "test")
    assert detect_format(datasets["ade20k"].parent) == "ade20k"
    (datasets["folder"] / "classes.json").write_text('{"classes": ["a"], "palette": [[1, 2]]}')
    with pytest.raises(DatasetError, match="palette"):
        open_dataset(datasets["folder"], "train")
    bad = open_dataset(datasets["voc"], "train", format="voc")
    Image.fromarray(np.full((48, 64), 30, np.uint8)).save(bad.labels[0])
    with pytest.raises(DatasetError, match=r"values \[30\] are not class ids"):
        bad.load_pair(0)


def test_voc_palette_is_the_devkit_colormap():
    flat = devkit_colormap()
    assert [tuple(flat[3 * i : 3 * i + 3]) for i in range(21)] == list(VOC_PALETTE)
