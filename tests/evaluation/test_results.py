"""Result files: labelId PNGs named as the official evaluation expects, trainId PNGs, written
whole or not at all."""

import errno
import os

import numpy as np
import pytest
import torch
from PIL import Image

from emanet.evaluation.results import (
    export_cityscapes_results,
    result_file_name,
    save_train_id_png,
)
from emanet.io.atomic import WriteError

# Cityscapes labelId of each trainId (cityscapesScripts helpers/labels.py), written out here so
# that the tests do not depend on the library's own table.
LABEL_ID_OF_TRAIN_ID = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_export_writes_label_ids_with_official_name(tmp_path):
    pred = np.array([[0, 1, 13], [18, 11, 10]])
    image = "/data/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    path = export_cityscapes_results(torch.from_numpy(pred), image, tmp_path / "results")
    assert path == tmp_path / "results" / "frankfurt_000000_000294_leftImg8bit.png"
    with Image.open(path) as im:
        assert im.mode == "L"
        written = np.array(im)
    assert written.tolist() == [[7, 8, 26], [33, 24, 23]]
    every = np.arange(19).reshape(1, 19)
    path = export_cityscapes_results(every, "munster_000012_000019_leftImg8bit.png", tmp_path)
    assert np.array(Image.open(path)).ravel().tolist() == LABEL_ID_OF_TRAIN_ID


def test_result_file_name_rules():
    assert result_file_name("a/b/lindau_000001_000019_leftImg8bit.png") == (
        "lindau_000001_000019_leftImg8bit.png"
    )
    assert result_file_name("lindau_000001_000019_leftImg8bit.jpg").endswith("_leftImg8bit.png")
    with pytest.raises(ValueError):
        result_file_name("/tmp/holiday_photo.png")


def test_save_train_id_png_round_trip(tmp_path):
    pred = np.array([[0, 18, 255], [5, 5, 11]])
    path = save_train_id_png(pred, tmp_path / "sub" / "x.png")
    with Image.open(path) as im:
        assert im.mode == "L" and np.array(im).tolist() == pred.tolist()
    with pytest.raises(ValueError):
        save_train_id_png(np.array([[300]]), tmp_path / "bad.png")


@pytest.mark.parametrize(
    "write",
    [
        lambda labels, folder: save_train_id_png(labels, folder / "a_leftImg8bit.png"),
        lambda labels, folder: export_cityscapes_results(labels, "a_1_2_leftImg8bit.png", folder),
    ],
    ids=["trainIds", "labelIds"],
)
def test_a_full_disk_keeps_the_previous_result(tmp_path, monkeypatch, write):
    path = write(np.zeros((2, 3), np.uint8), tmp_path)
    before = path.read_bytes()

    def full_disk(self, fp, *args, **kwargs):
        with open(fp, "wb") as file:  # a partial file, as a real full disk leaves
            file.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(WriteError) as info:
        write(np.ones((2, 3), np.uint8), tmp_path)
    assert info.value.errno == errno.ENOSPC and info.value.path == path and info.value.intact
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]
