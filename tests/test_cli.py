import json

import numpy as np
import pytest
import torch
from PIL import Image

from emanet import build_model, cli
from emanet.cli import main
from emanet.data import CLASSES, PALETTE, CityscapesDataset
from emanet.io.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("emanet_r18-d8_toycity").eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    return save_checkpoint(
        path,
        model,
        preset=model.preset.name,
        classes=list(CLASSES),
        palette=[tuple(c) for c in PALETTE],
    )


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city")
    assert main(["toycity", str(root), "--train", "2", "--val", "3", "--size", "48x96"]) == 0
    return root


def test_models_lists_presets(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "emanet_r101-d8_769x769_80k_cityscapes" in out and "47a324ce" in out


def test_predict_writes_masks_and_overlays(checkpoint, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for i, mode in enumerate(["RGB", "L", "RGBA"]):
        arr = np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8)
        Image.fromarray(arr).convert(mode).save(images / f"img{i}.png")
    out = tmp_path / "out"
    assert main(["predict", str(images), "--model", str(checkpoint), "--out", str(out)]) == 0
    for i in range(3):
        mask = Image.open(out / f"img{i}_mask.png")
        assert mask.size == (60, 40) and mask.mode == "RGB"
        labels = np.asarray(Image.open(out / f"img{i}_trainIds.png"))
        assert labels.max() < 19
        assert Image.open(out / f"img{i}_overlay.png").size == (60, 40)
    # colours come from the palette of the predicted classes
    mask = np.asarray(Image.open(out / "img0_mask.png")).reshape(-1, 3)
    labels = np.asarray(Image.open(out / "img0_trainIds.png")).ravel()
    assert (mask == np.asarray(PALETTE, dtype=np.uint8)[labels]).all()


def test_predict_trace_writes_a_trace_that_loads_back(checkpoint, tmp_path, caplog):
    from emanet import Segmenter, load_trace

    image = tmp_path / "scene.png"
    pixels = np.random.default_rng(5).integers(0, 255, (40, 72, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    out = tmp_path / "run.npz"
    args = ["predict", str(image), "--model", str(checkpoint), "--trace", str(out)]
    assert main([*args, "--iterations", "4"]) == 0
    run = load_trace(out)
    direct = Segmenter.from_pretrained(str(checkpoint), device="cpu")(
        str(image), trace=True, num_iterations=4
    )
    assert run.num_iterations == 4 and run.classes == list(CLASSES)
    np.testing.assert_array_equal(run.labels, direct.labels)
    np.testing.assert_array_equal(run.image, pixels)
    for mine, theirs in zip(run.trace.responsibilities, direct.trace.responsibilities, strict=True):
        torch.testing.assert_close(mine, theirs)
    # one image only; and something to write
    assert main(["predict", str(tmp_path), "--model", str(checkpoint), "--trace", str(out)]) == 2
    assert "--trace takes exactly one image file" in caplog.text
    assert main(["predict", str(image), "--model", str(checkpoint)]) == 2
    assert "give --out FOLDER, --trace OUT.npz or both" in caplog.text


def test_predict_bad_file_reports_and_fails(checkpoint, tmp_path, caplog):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    assert main(["predict", str(bad), "--model", str(checkpoint), "--out", str(tmp_path)]) == 1
    assert "bad.png" in caplog.text


def test_missing_checkpoint_is_a_clear_error(tmp_path, caplog):
    code = main(
        ["predict", str(tmp_path), "--model", str(tmp_path / "nope.pth"), "--out", str(tmp_path)]
    )
    assert code == 2 and "nope.pth" in caplog.text


def test_eval_writes_metrics_and_cityscapes_files(checkpoint, city, tmp_path, capsys):
    out_json = tmp_path / "m.json"
    args = [
        "eval",
        "--model",
        str(checkpoint),
        "--data",
        str(city),
        "--out",
        str(out_json),
        "--save-pred",
        str(tmp_path / "pred"),
        "--cityscapes-format",
        str(tmp_path / "cs"),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "iIoU" in text and "road" in text
    metrics = json.loads(out_json.read_text())
    assert 0 <= metrics["mIoU"] <= 100 and metrics["images"] == 3
    ds = CityscapesDataset(city, "val")
    for image in ds.images:
        result = Image.open(tmp_path / "cs" / image.name)
        ids = set(np.unique(np.asarray(result)).tolist())
        # labelIds of the 19 train classes only
        assert ids <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}
        assert (tmp_path / "pred" / image.name).is_file()


def test_programming_errors_surface_with_their_traceback(monkeypatch):
    def broken(args):
        raise KeyError("a bug in the package")

    monkeypatch.setattr(cli, "_models", broken)
    with pytest.raises(KeyError, match="a bug in the package"):
        main(["models"])


def test_bad_data_exits_2_naming_the_file(checkpoint, city, tmp_path, caplog):
    eval_args = ["eval", "--model", str(checkpoint), "--max-images", "1"]
    assert main([*eval_args, "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in caplog.text
    label = CityscapesDataset(city, "val").labels[0]
    bad = label.with_name(label.name.replace("_labelIds", "_labelTrainIds"))
    Image.fromarray(np.full((48, 96), 40, np.uint8)).save(bad)  # 40 is not a trainId
    try:
        caplog.clear()
        assert main(["-v", *eval_args, "--data", str(city)]) == 2
    finally:
        bad.unlink()
    assert bad.name in caplog.text and "[40]" in caplog.text
    assert caplog.records[-1].exc_info is not None  # -v: with the traceback


def test_data_check(city, capsys):
    assert main(["data", "check", str(city)]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_eval_confusion_matrix_agrees_with_metrics_and_plots(checkpoint, city, tmp_path):
    out_json, plots, pred = tmp_path / "m.json", tmp_path / "plots", tmp_path / "pred"
    args = ["eval", "--model", str(checkpoint), "--data", str(city), "--out", str(out_json)]
    assert main([*args, "--plots", str(plots), "--save-pred", str(pred)]) == 0
    metrics = json.loads(out_json.read_text())
    assert metrics["classes"] == list(CLASSES)
    confusion = np.asarray(metrics["confusion"], dtype=np.int64)
    assert confusion.shape == (19, 19)
    # aAcc = trace / total; IoU = TP / (row + column - TP), in percent
    assert metrics["aAcc"] == pytest.approx(100 * np.trace(confusion) / confusion.sum())
    for index, name in enumerate(CLASSES):
        tp = confusion[index, index]
        union = confusion[index].sum() + confusion[:, index].sum() - tp
        if union:
            assert metrics["IoU"][name] == pytest.approx(100 * tp / union)
    # rows = ground truth, columns = prediction: count both from the files themselves
    ds = CityscapesDataset(city, "val")
    gt_counts = np.zeros(19, dtype=np.int64)
    pred_counts = np.zeros(19, dtype=np.int64)
    for index, image in enumerate(ds.images):
        label = ds.load_label(index)
        labelled = label != 255
        gt_counts += np.bincount(label[labelled], minlength=19)[:19]
        predicted = np.asarray(Image.open(pred / image.name))
        pred_counts += np.bincount(predicted[labelled], minlength=19)
    assert (confusion.sum(axis=1) == gt_counts).all()
    assert (confusion.sum(axis=0) == pred_counts).all()
    for name in ("confusion.png", "per_class_iou.png"):
        with Image.open(plots / name) as figure:
            assert figure.format == "PNG" and min(figure.size) > 300


def test_the_checkpoint_scale_is_the_default_and_scale_overrides_it(checkpoint, tmp_path):
    # predict: the test scale recorded in the checkpoint decides the model's input size
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((100, 300, 3), np.uint8)).save(image)
    model = build_model("emanet_r18-d8_toycity")
    scaled = tmp_path / "scaled.pth"
    save_checkpoint(scaled, model, preset=model.preset.name, classes=list(CLASSES),
                    palette=list(PALETTE), test_scale=(150, 50))  # fmt: skip
    seen = []

    def record(self, x, **options):
        seen.append(tuple(x.shape[-2:]))
        return torch.zeros(x.shape[0], 19, *x.shape[-2:])

    from emanet.predict import Segmenter

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Segmenter, "infer", record)
        for extra in ([], ["--scale", "600", "200"]):
            args = ["predict", str(image), "--model", str(scaled), "--out", str(tmp_path / "o")]
            assert main([*args, *extra]) == 0
    assert seen == [(50, 150), (200, 600)]


def test_a_full_output_disk_is_one_line_and_exit_2(checkpoint, tmp_path, caplog, monkeypatch):
    import errno

    from emanet.io import atomic

    def full(tmp, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    code = main(["predict", str(image), "--model", str(checkpoint), "--out", str(tmp_path / "o")])
    assert code == 2
    record = caplog.records[-1]
    assert "No space left on device" in record.message and "\n" not in record.message
    assert not record.exc_info and "o/in_" in record.message  # names the file


def test_out_of_memory_in_a_command_is_one_line(checkpoint, city, caplog, monkeypatch):
    from emanet.predict import Segmenter

    def too_big(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Segmenter, "__call__", too_big)
    assert main(["eval", "--model", str(checkpoint), "--data", str(city)]) == 2
    message = caplog.records[-1].message
    assert "out of memory" in message and "--batch-size" in message and "\n" not in message


def test_app_subcommand_hands_its_options_to_the_app(monkeypatch):
    calls = []
    import emanet.app.__main__ as app_main

    monkeypatch.setattr(app_main, "main", lambda argv, prog: calls.append((argv, prog)))
    assert main(["app", "--port", "7999", "--share"]) == 0
    assert calls == [(["--port", "7999", "--share"], "emanet app")]


def test_models_does_not_load_the_trainer():
    import subprocess
    import sys

    code = "import sys, emanet.cli; emanet.cli.main(['models']); print(sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "emanet.training.loop" not in loaded.stdout and "gradio" not in loaded.stdout
