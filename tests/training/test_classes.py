"""The number of classes comes from the data: a 7-class folder dataset trained from the bundled
19-class model (``--init``), then evaluated, predicted and exported with the checkpoint's own
classes, end to end through the ``emanet`` command."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from emanet.cli import main
from emanet.data import generate_toy_folder, open_dataset
from emanet.data.toycity import TOY_GROUPS
from emanet.io.checkpoint import BUNDLED_CHECKPOINT, read_checkpoint
from emanet.models.segmentor import build_model
from emanet.predict import Segmenter

CLASSES = tuple(TOY_GROUPS)  # 7 classes: the toy city's categories


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return generate_toy_folder(tmp_path_factory.mktemp("folder"), train=4, val=2, size=(48, 96))


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """``emanet train --data FOLDER --init BUNDLED``, 3 iterations; returns (work dir, log)."""
    work = tmp_path_factory.mktemp("run")
    records = []
    handler, logger = logging.Handler(), logging.getLogger("emanet")
    handler.emit = records.append
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        code = main(["train", "--preset", "emanet_r18-d8_toycity", "--data", str(folder),
                     "--work-dir", str(work), "--iters", "3", "--batch-size", "2",
                     "--crop-size", "32", "48", "--scale", "96", "48", "--val-scale", "96", "48",
                     "--workers", "0", "--init", "emanet_r18-d8_toycity",
                     "--checkpoint-interval", "3", "--log-interval", "1"])  # fmt: skip
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert code == 0
    return work, [record.getMessage() for record in records]


def test_build_model_sizes_the_classifiers():
    model = build_model("emanet_r18-d8_toycity", num_classes=5)
    assert model.num_classes == 5
    assert model.decode_head.conv_seg.out_channels == model.auxiliary_head.conv_seg.out_channels
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5, 32, 32)
    with pytest.raises(ValueError, match="at least 1"):
        build_model("emanet_r18-d8_toycity", num_classes=0)


def test_model_pth_carries_the_datasets_classes(trained, folder):
    work, _ = trained
    checkpoint = read_checkpoint(work / "model.pth")
    dataset = open_dataset(folder, "train")
    assert checkpoint.classes == dataset.classes == CLASSES
    assert checkpoint.palette == dataset.palette and checkpoint.num_classes == 7
    segmenter = Segmenter.from_pretrained(work / "model.pth", device="cpu")
    assert segmenter.classes == CLASSES and segmenter.model.num_classes == 7


def test_init_reuses_every_fitting_tensor_and_renews_the_classifiers(trained):
    work, messages = trained
    report = next(m for m in messages if m.startswith("--init"))
    bundled = read_checkpoint(BUNDLED_CHECKPOINT).state_dict
    model_keys = build_model("emanet_r18-d8_toycity", num_classes=7).state_dict()
    fitting = [k for k, v in bundled.items() if k in model_keys and v.shape == model_keys[k].shape]
    assert f"reused {len(fitting)} of {len(model_keys)} tensors" in report
    assert "new, initialised here (4)" in report
    assert "decode_head.conv_seg.weight (other classes in the file)" in report
    # the EM unit's bases start from the bundled model's
    state = torch.load(work / "latest.pth", weights_only=True)["model"]
    bases = "decode_head.ema_module.bases"
    assert state[bases].shape == bundled[bases].shape


def test_init_from_a_file_without_class_names_goes_by_shape(tmp_path, caplog):
    from emanet.training.loop import init_from

    donor = build_model("emanet_r18-d8_toycity")  # 19 outputs, no names in a plain file
    torch.save(donor.state_dict(), tmp_path / "plain.pth")
    model = build_model("emanet_r18-d8_toycity", num_classes=5)
    fresh = model.decode_head.conv_seg.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="emanet"):
        report = init_from(model, str(tmp_path / "plain.pth"), ("a", "b", "c", "d", "e"))
    assert len(report.misshaped) == 4 and not report.missing and not report.unexpected
    assert torch.equal(model.decode_head.conv_seg.weight, fresh)
    assert torch.equal(model.backbone.stem[0].weight, donor.backbone.stem[0].weight)
    assert "decode_head.conv_seg.weight (5, 64, 1, 1)" in caplog.text


def test_eval_predict_and_export_use_the_checkpoints_classes(trained, folder, tmp_path):
    work, _ = trained
    model = str(work / "model.pth")
    metrics_file = tmp_path / "metrics.json"
    assert main(["eval", "--model", model, "--data", str(folder), "--out", str(metrics_file),
                 "--device", "cpu"]) == 0  # fmt: skip
    metrics = json.loads(metrics_file.read_text())
    assert metrics["classes"] == list(CLASSES) and "iIoU" not in metrics
    assert np.asarray(metrics["confusion"]).shape == (7, 7)
    assert main(["eval", "--model", model, "--data", str(folder), "--device", "cpu",
                 "--cityscapes-format", str(tmp_path / "cs")]) == 2  # fmt: skip

    out = tmp_path / "pred"
    assert main(["predict", str(folder / "images" / "val"), "--out", str(out), "--model", model,
                 "--device", "cpu"]) == 0  # fmt: skip
    ids = np.array(Image.open(out / "scene_0000_trainIds.png"))
    assert ids.shape == (48, 96) and ids.max() < 7

    pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", model, "--out", str(onnx_file), "--height", "48", "--width",
                 "96"]) == 0  # fmt: skip
    import onnxruntime

    segmenter = Segmenter.from_pretrained(model, device="cpu", fast=False)
    x = segmenter.preprocess(
        Image.open(folder / "images" / "val" / "scene_0000.png").convert("RGB")
    )
    with torch.no_grad():
        expected = segmenter.model(x).numpy()
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})[:1]
    assert got.shape == expected.shape == (1, 7, 48, 96)
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def test_a_model_of_other_classes_is_refused_by_eval(folder, tmp_path, caplog):
    # the bundled model predicts 19 classes, the folder has 7
    assert main(["eval", "--data", str(folder), "--device", "cpu"]) == 2
    assert "predicts 19 classes" in caplog.text and "has 7" in caplog.text
