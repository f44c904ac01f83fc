"""The Cityscapes label table, id mappings, CityscapesDataset and check_dataset (on handmade
files and on a toy city)."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from emanet.data import cityscapes as cs
from emanet.data.toycity import generate_toycity
from emanet.data.transforms import TrainTransform

CLASSES, PALETTE, LABELS = cs.CLASSES, cs.PALETTE, cs.LABELS
CityscapesDataset, check_dataset = cs.CityscapesDataset, cs.check_dataset
label_ids_to_train_ids, train_ids_to_label_ids = (
    cs.label_ids_to_train_ids,
    cs.train_ids_to_label_ids,
)

# cityscapesScripts helpers/labels.py, written out independently of the package:
# id -> (name, trainId, hasInstances)
OFFICIAL = {
    0: ("unlabeled", 255, False),
    1: ("ego vehicle", 255, False),
    2: ("rectification border", 255, False),
    3: ("out of roi", 255, False),
    4: ("static", 255, False),
    5: ("dynamic", 255, False),
    6: ("ground", 255, False),
    7: ("road", 0, False),
    8: ("sidewalk", 1, False),
    9: ("parking", 255, False),
    10: ("rail track", 255, False),
    11: ("building", 2, False),
    12: ("wall", 3, False),
    13: ("fence", 4, False),
    14: ("guard rail", 255, False),
    15: ("bridge", 255, False),
    16: ("tunnel", 255, False),
    17: ("pole", 5, False),
    18: ("polegroup", 255, False),
    19: ("traffic light", 6, False),
    20: ("traffic sign", 7, False),
    21: ("vegetation", 8, False),
    22: ("terrain", 9, False),
    23: ("sky", 10, False),
    24: ("person", 11, True),
    25: ("rider", 12, True),
    26: ("car", 13, True),
    27: ("truck", 14, True),
    28: ("bus", 15, True),
    29: ("caravan", 255, True),
    30: ("trailer", 255, True),
    31: ("train", 16, True),
    32: ("motorcycle", 17, True),
    33: ("bicycle", 18, True),
    -1: ("license plate", -1, False),
}
OFFICIAL_COLORS = {
    0: (0, 0, 0),
    1: (0, 0, 0),
    2: (0, 0, 0),
    3: (0, 0, 0),
    4: (0, 0, 0),
    5: (111, 74, 0),
    6: (81, 0, 81),
    7: (128, 64, 128),
    8: (244, 35, 232),
    9: (250, 170, 160),
    10: (230, 150, 140),
    11: (70, 70, 70),
    12: (102, 102, 156),
    13: (190, 153, 153),
    14: (180, 165, 180),
    15: (150, 100, 100),
    16: (150, 120, 90),
    17: (153, 153, 153),
    18: (153, 153, 153),
    19: (250, 170, 30),
    20: (220, 220, 0),
    21: (107, 142, 35),
    22: (152, 251, 152),
    23: (70, 130, 180),
    24: (220, 20, 60),
    25: (255, 0, 0),
    26: (0, 0, 142),
    27: (0, 0, 70),
    28: (0, 60, 100),
    29: (0, 0, 90),
    30: (0, 0, 110),
    31: (0, 80, 100),
    32: (0, 0, 230),
    33: (119, 11, 32),
    -1: (0, 0, 142),
}
# labelIds of trainIds 0-18 (REFERENCE: Cityscapes section)
TRAIN_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
TRAIN_NAMES = (
    "road sidewalk building wall fence pole traffic_light traffic_sign vegetation terrain sky "
    "person rider car truck bus train motorcycle bicycle"
)


# ------------------------------------------------------------------------------ label table


def test_label_table_is_the_official_one():
    assert isinstance(LABELS, tuple) and len(LABELS) == 35
    assert [lb.id for lb in LABELS] == [*range(34), -1]  # official row order
    for lb in LABELS:
        name, train_id, has_instances = OFFICIAL[lb.id]
        assert (lb.name, lb.train_id, lb.has_instances) == (name, train_id, has_instances), lb
        assert lb.color == OFFICIAL_COLORS[lb.id], lb
        # ignoreInEval is exactly "not one of the 19 train classes"
        assert lb.ignore_in_eval == (not 0 <= lb.train_id <= 18), lb


def test_label_categories():
    by_name = {lb.name: lb for lb in LABELS}
    assert by_name["road"].category == "flat" and by_name["road"].category_id == 1
    assert by_name["sky"].category == "sky" and by_name["sky"].category_id == 5
    assert {lb.category for lb in LABELS if lb.id >= 24} == {"human", "vehicle"}
    assert by_name["license plate"].category == "vehicle"


def test_label_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LABELS[7].train_id = 3  # type: ignore[misc]
    assert isinstance(LABELS[0], cs.Label)


def test_classes_palette_and_constants():
    assert CLASSES == tuple(name.replace("_", " ") for name in TRAIN_NAMES.split())
    assert len(PALETTE) == 19
    assert list(PALETTE) == [OFFICIAL_COLORS[i] for i in TRAIN_LABEL_IDS]
    assert PALETTE[0] == (128, 64, 128) and PALETTE[10] == (70, 130, 180)
    assert PALETTE[18] == (119, 11, 32)
    assert cs.IGNORE_INDEX == 255
    assert cs.INSTANCE_CLASSES == (11, 12, 13, 14, 15, 16, 17, 18)
    assert [CLASSES[t] for t in cs.INSTANCE_CLASSES] == [
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ]


# ------------------------------------------------------------------------------- mappings


def test_label_ids_to_train_ids_on_all_256_values():
    values = np.arange(256, dtype=np.uint8)
    mapped = label_ids_to_train_ids(values)
    assert mapped.dtype == np.uint8 and mapped.shape == (256,)
    expected = [OFFICIAL[v][1] if v in OFFICIAL else 255 for v in range(256)]
    assert mapped.tolist() == expected
    assert sorted(set(mapped.tolist()) - {255}) == list(range(19))


def test_label_ids_to_train_ids_keeps_shape_and_handles_wide_types():
    grid = np.array([[7, 26], [33, 0]], dtype=np.uint8)
    assert label_ids_to_train_ids(grid).tolist() == [[0, 13], [18, 255]]
    # values outside 0-255 are not in the table: they must not wrap around (263 % 256 == 7)
    wide = np.array([-1, 7, 256, 263, 1000, 24], dtype=np.int32)
    assert label_ids_to_train_ids(wide).tolist() == [255, 0, 255, 255, 255, 11]
    assert label_ids_to_train_ids(np.array([[21]], dtype=np.int64)).shape == (1, 1)
    with pytest.raises(TypeError):
        label_ids_to_train_ids(np.array([7.0]))


def test_palette_lut_colours_ids_and_blacks_out_the_rest():
    lut = cs.palette_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    ids = np.array([[0, 18, 255], [19, 7, 200]], dtype=np.uint8)
    colours = lut[ids]
    assert colours[0, 0].tolist() == list(PALETTE[0]) and colours[0, 1].tolist() == list(
        PALETTE[18]
    )
    assert colours[1, 1].tolist() == list(PALETTE[7])
    assert not colours[0, 2].any() and not colours[1, 0].any() and not colours[1, 2].any()
    assert cs.palette_lut([(1, 2, 3)])[:2].tolist() == [[1, 2, 3], [0, 0, 0]]


def test_train_ids_to_label_ids_inverts_the_19_classes():
    train = np.arange(19, dtype=np.uint8)
    ids = train_ids_to_label_ids(train)
    assert ids.dtype == np.uint8
    assert ids.tolist() == TRAIN_LABEL_IDS
    assert (label_ids_to_train_ids(ids) == train).all()
    assert train_ids_to_label_ids(np.array([255, 19, 200], dtype=np.uint8)).tolist() == [0, 0, 0]
    assert train_ids_to_label_ids(np.array([-5, 300, 13])).tolist() == [0, 0, 26]


# ------------------------------------------------------------------------------- datasets


def _write(root, split, city, seq, label_ids, *, train_ids=None, image_size=None, instance=True):
    """One handmade image/label pair in Cityscapes' layout; returns (image, label) paths."""
    label_ids = np.asarray(label_ids, dtype=np.uint8)
    h, w = label_ids.shape
    stem = f"{city}_{seq:06d}_000019"
    image_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    iw, ih = image_size or (w, h)
    pixels = np.random.default_rng(seq).integers(0, 256, (ih, iw, 3), dtype=np.uint8)
    image = image_dir / f"{stem}_leftImg8bit.png"
    Image.fromarray(pixels).save(image)
    label = gt_dir / f"{stem}_gtFine_labelIds.png"
    Image.fromarray(label_ids).save(label)
    if train_ids is not None:
        Image.fromarray(np.asarray(train_ids, np.uint8)).save(
            gt_dir / f"{stem}_gtFine_labelTrainIds.png"
        )
    if instance:
        Image.fromarray(label_ids.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    return image, label


LABEL_GRID = np.array([[7, 8, 11, 0], [24, 26, 33, 1], [3, 23, 21, 30]], dtype=np.uint8)


@pytest.fixture
def handmade(tmp_path):
    root = tmp_path / "cs"
    # written out of order: the dataset must sort
    _write(root, "train", "zurich", 1, LABEL_GRID)
    _write(root, "train", "aachen", 7, LABEL_GRID)
    _write(root, "train", "aachen", 2, LABEL_GRID, instance=False)
    _write(root, "val", "lindau", 0, LABEL_GRID)
    return root


def test_dataset_maps_label_ids_and_sorts(handmade):
    ds = CityscapesDataset(handmade, "train")
    assert len(ds) == 3 and ds.split == "train" and ds.root == handmade
    assert [p.name for p in ds.images] == [
        "aachen_000002_000019_leftImg8bit.png",
        "aachen_000007_000019_leftImg8bit.png",
        "zurich_000001_000019_leftImg8bit.png",
    ]
    assert [p.name for p in ds.labels] == [
        n.replace("leftImg8bit", "gtFine_labelIds") for n in (p.name for p in ds.images)
    ]
    image, label = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (4, 3)
    assert isinstance(label, Image.Image) and label.mode == "L" and label.size == (4, 3)
    expected = [[0, 1, 2, 255], [11, 13, 18, 255], [255, 10, 8, 255]]
    assert np.asarray(label).tolist() == expected
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(ds.images[0])))
    assert ds.instance_path(0) is None
    assert ds.instance_path(1).name == "aachen_000007_000019_gtFine_instanceIds.png"
    assert "train" in repr(ds)


def test_dataset_prefers_label_train_ids(tmp_path):
    train_ids = np.full(LABEL_GRID.shape, 5, np.uint8)
    train_ids[0, 0] = 255
    _write(tmp_path, "train", "bonn", 0, LABEL_GRID, train_ids=train_ids)
    ds = CityscapesDataset(tmp_path, "train")
    assert ds.labels[0].name.endswith("_gtFine_labelTrainIds.png")
    assert np.array_equal(np.asarray(ds[0][1]), train_ids)


def test_dataset_applies_transforms(handmade):
    seen = []

    def transforms(image, label):
        seen.append((image.mode, label.mode))
        return "x", "y"

    ds = CityscapesDataset(handmade, "val", transforms=transforms)
    assert ds[0] == ("x", "y") and seen == [("RGB", "L")]


def test_dataset_missing_folders_name_the_path(tmp_path, handmade):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CityscapesDataset(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit[/\\]test"):
        CityscapesDataset(handmade, "test")
    (handmade / "leftImg8bit" / "test" / "empty_city").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no .*leftImg8bit.png files"):
        CityscapesDataset(handmade, "test")


def test_dataset_image_without_label_names_it(handmade):
    (handmade / "gtFine/train/zurich/zurich_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="zurich_000001_000019_leftImg8bit.png"):
        CityscapesDataset(handmade, "train")


def test_dataset_broken_files_are_named(handmade):
    ds = CityscapesDataset(handmade, "train")
    image = ds.images[1]
    image.write_bytes(image.read_bytes()[:60])  # truncated PNG
    with pytest.raises(OSError, match=image.name):
        ds[1]
    ds.labels[2].write_bytes(b"not a png at all")
    with pytest.raises(OSError, match=ds.labels[2].name):
        ds[2]
    ds.images[0].unlink()
    with pytest.raises(FileNotFoundError, match=ds.images[0].name):
        ds[0]


def test_dataset_rejects_bad_label_maps(tmp_path):
    bad = np.full(LABEL_GRID.shape, 3, np.uint8)
    bad[1, 1] = 40  # not a trainId
    _write(tmp_path, "train", "ulm", 0, LABEL_GRID, train_ids=bad)
    _write(tmp_path, "train", "ulm", 1, LABEL_GRID, image_size=(5, 3))
    ds = CityscapesDataset(tmp_path, "train")
    pattern = r"ulm_000000_000019_gtFine_labelTrainIds.png.*\[40\]"
    with pytest.raises(cs.DatasetError, match=pattern):
        ds[0]
    with pytest.raises(cs.DatasetError, match="ulm_000001_000019_leftImg8bit.png"):
        ds[1]
    rgb_label = ds.labels[1]
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(rgb_label)
    with pytest.raises(cs.DatasetError, match="one channel of integers"):
        ds.load_label(1)


# ---------------------------------------------------------------------------- check_dataset


def test_check_dataset_clean(handmade):
    report = check_dataset(handmade)
    assert isinstance(report, cs.DatasetReport)
    assert report.counts == {"train": 3, "val": 1}
    assert report.problems == [] and report.ok
    text = report.format()
    assert "train" in text and "val" in text and "no problems" in text


def test_check_dataset_finds_planted_problems(handmade):
    gt = handmade / "gtFine" / "train"
    # 1. an image without its label
    (gt / "zurich/zurich_000001_000019_gtFine_labelIds.png").unlink()
    # 2. a label without its image
    orphan, _ = _write(handmade, "train", "bremen", 3, LABEL_GRID)
    orphan.unlink()
    # 3. a label of another size than its image
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(
        gt / "aachen/aachen_000002_000019_gtFine_labelIds.png"
    )
    # 4. values that are not labelIds, and a labelTrainIds file with a non-trainId
    bad = LABEL_GRID.copy()
    bad[0, 0] = 200
    Image.fromarray(bad).save(gt / "aachen/aachen_000007_000019_gtFine_labelIds.png")
    Image.fromarray(np.full(LABEL_GRID.shape, 19, np.uint8)).save(
        gt / "aachen/aachen_000007_000019_gtFine_labelTrainIds.png"
    )
    # 5. an unreadable image
    (handmade / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png").write_bytes(b"x")

    report = check_dataset(handmade)
    assert not report.ok
    problems = report.problems

    def one(*parts):
        hits = [p for p in problems if all(part in p for part in parts)]
        assert len(hits) == 1, (parts, problems)

    one("zurich_000001_000019_leftImg8bit.png", "no label")
    one("bremen_000003_000019_gtFine_labelIds.png", "without an image")
    one("aachen_000002_000019_gtFine_labelIds.png", "differs")
    one("aachen_000007_000019_gtFine_labelIds.png", "[200]", "labelIds")
    one("aachen_000007_000019_gtFine_labelTrainIds.png", "[19]", "trainIds")
    one("lindau_000000_000019_leftImg8bit.png", "cannot read")
    assert len(problems) == 6
    assert report.counts == {"train": 2, "val": 1}
    text = report.format()
    assert "6 problem(s)" in text and all(p in text for p in problems)


def test_check_dataset_names_an_unreadable_label(handmade):
    label = handmade / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    label.write_bytes(b"garbage")
    problems = check_dataset(handmade).problems
    assert len(problems) == 1 and label.name in problems[0] and "cannot read" in problems[0]


def test_check_dataset_empty_or_missing_root(tmp_path):
    missing = check_dataset(tmp_path / "absent")
    assert not missing.ok and "absent" in missing.problems[0]
    empty = check_dataset(tmp_path)
    assert not empty.ok and empty.counts == {} and empty.problems == []
    assert "no image/label pairs" in empty.format()


# --------------------------------------------------------------------------- on a toy city


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return generate_toycity(root, train=4, val=2, test=1, size=(48, 96), seed=11)


def test_dataset_reads_the_toy_city(toy):
    for split, n in (("train", 4), ("val", 2), ("test", 1)):
        ds = CityscapesDataset(toy, split)
        assert len(ds) == n
        for index in range(n):
            image, label = ds[index]
            assert image.size == label.size == (96, 48)
            values = np.asarray(label)
            assert set(np.unique(values).tolist()) <= set(range(19)) | {255}
            label_ids = np.asarray(Image.open(ds.labels[index]))
            assert np.array_equal(values, label_ids_to_train_ids(label_ids))
            assert ds.instance_path(index) is not None


def test_train_pipeline_on_the_toy_city_keeps_its_label_set(toy):
    plain = CityscapesDataset(toy, "train")
    transform = TrainTransform(crop_size=(32, 48), scale=(128, 64))
    ds = CityscapesDataset(toy, "train", transforms=transform)
    torch.manual_seed(0)
    for index in range(len(ds)):
        image, label = ds[index]
        assert image.shape == (3, 32, 48) and label.shape == (32, 48)
        original = set(np.unique(plain.load_label(index)).tolist())
        assert set(label.unique().tolist()) <= original | {255}
