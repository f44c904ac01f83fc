"""The synthetic city: Cityscapes' exact layout and encoding, valid labelIds and instance ids,
the same bytes for the same seed, and torchvision's own Cityscapes reader takes it."""

import hashlib

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import Cityscapes as TorchvisionCityscapes

from emanet.data.cityscapes import LABELS, check_dataset, label_ids_to_train_ids
from emanet.data.toycity import generate_toycity

# cityscapesScripts: labelIds 0-33; these carry instances (person ... bicycle, caravan, trailer).
LABEL_IDS = set(range(34))
INSTANCE_LABEL_IDS = {24, 25, 26, 27, 28, 29, 30, 31, 32, 33}
SPLITS = {"train": ("toyberg", "synthstadt"), "val": ("modelburg",), "test": ("mockheim",)}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return generate_toycity(root, train=4, val=2, test=1, size=(48, 96), seed=11)


def scenes(root, split="train"):
    """``(labelIds, instanceIds)`` arrays of every scene of a split."""
    for path in sorted((root / "gtFine" / split).rglob("*_gtFine_labelIds.png")):
        instances = path.with_name(path.name.replace("labelIds", "instanceIds"))
        yield np.asarray(Image.open(path)), np.asarray(Image.open(instances)).astype(np.int64)


def test_layout_and_encoding_are_cityscapes(toy):
    expected = []
    for split, count in (("train", 4), ("val", 2), ("test", 1)):
        cities = SPLITS[split]
        for index in range(count):
            city = cities[index % len(cities)]
            stem = f"{city}_{index // len(cities):06d}_000019"  # frame 19, as Cityscapes'
            expected.append(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
            for suffix in ("color", "instanceIds", "labelIds"):
                expected.append(f"gtFine/{split}/{city}/{stem}_gtFine_{suffix}.png")
    found = [p.relative_to(toy).as_posix() for p in toy.rglob("*") if p.is_file()]
    assert sorted(found) == sorted(expected)  # and no temporary file left behind
    modes = {"leftImg8bit": "RGB", "labelIds": "L", "instanceIds": "I;16", "color": "RGB"}
    for name in expected:
        with Image.open(toy / name) as image:
            mode = next(m for key, m in modes.items() if name.endswith(f"{key}.png"))
            assert (image.format, image.mode, image.size) == ("PNG", mode, (96, 48)), name
    report = check_dataset(toy)
    assert report.ok, report.format()
    assert report.counts == {"train": 4, "val": 2, "test": 1}


def test_labels_are_label_ids_and_cover_every_train_class(tmp_path):
    root = generate_toycity(tmp_path, train=40, val=0, size=(64, 128), seed=0)
    seen = set()
    for label_ids, _ in scenes(root):
        values = set(np.unique(label_ids).tolist())
        assert values <= LABEL_IDS
        seen |= set(label_ids_to_train_ids(np.array(sorted(values), np.uint8)).tolist())
    assert set(range(19)) <= seen


def test_instance_ids_are_label_id_times_1000_plus_k(toy):
    for label_ids, instances in scenes(toy):
        things = np.isin(label_ids, list(INSTANCE_LABEL_IDS))
        assert (instances[things] // 1000 == label_ids[things]).all()
        assert (instances[things] % 1000 >= 1).all()
        assert (instances[~things] == label_ids[~things]).all()
    assert any(np.isin(label_ids, list(INSTANCE_LABEL_IDS)).any() for label_ids, _ in scenes(toy))


def test_torchvision_reads_it_with_the_official_colours(toy):
    dataset = TorchvisionCityscapes(
        str(toy), split="train", mode="fine", target_type=["semantic", "instance", "color"]
    )
    assert len(dataset) == 4
    image, (semantic, instance, colour) = dataset[0]
    assert image.size == (96, 48)
    label_ids = np.asarray(semantic)
    assert np.array_equal(label_ids, np.asarray(Image.open(dataset.targets[0][0])))
    assert np.asarray(instance).shape == label_ids.shape
    official = {lb.id: lb.color for lb in LABELS if lb.id >= 0}
    expected = np.array([official[i] for i in label_ids.ravel()], np.uint8)
    assert np.array_equal(np.asarray(colour.convert("RGB")), expected.reshape(*label_ids.shape, 3))


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_the_same_seed_writes_the_same_bytes(tmp_path):
    a = generate_toycity(tmp_path / "a", train=3, val=1, size=(32, 64), seed=7)
    b = generate_toycity(tmp_path / "b", train=3, val=1, size=(32, 64), seed=7)
    c = generate_toycity(tmp_path / "c", train=3, val=1, size=(32, 64), seed=8)
    assert digest(a) == digest(b) != digest(c)


def test_the_pixels_are_those_the_bundled_model_was_trained_on(tmp_path):
    # The decoded values of a small city, pinned: a change to the drawing (or to the random
    # draws it makes) would change the data the bundled model's recipe trains on.
    root = generate_toycity(tmp_path, train=2, val=1, size=(32, 64), seed=0)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(np.ascontiguousarray(np.asarray(Image.open(path))).tobytes())
    assert h.hexdigest() == "6fb6c316ed053eb03820b88a316db2a4507cbe74983768dc0839116081666420"


def test_too_small_a_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 16x16"):
        generate_toycity(tmp_path, size=(8, 64))
    assert not any(tmp_path.iterdir())
