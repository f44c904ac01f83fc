import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from emanet import build_model
from emanet.data.cityscapes import CLASSES, PALETTE
from emanet.data.transforms import preprocess_test_image
from emanet.io import checkpoint as checkpoint_module
from emanet.io.checkpoint import CheckpointError, save_checkpoint
from emanet.io.images import ImageLoadError
from emanet.predict import Segmenter


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return Segmenter(build_model("emanet_r18-d8_toycity"), device="cpu")


def photo(height=60, width=90, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_labels_at_image_size_and_trace(segmenter):
    result = segmenter(photo(), trace=True, num_iterations=4)
    assert result.labels.shape == (60, 90) and result.labels.dtype == np.uint8
    assert result.labels.max() < 19
    assert result.trace.num_iterations == 4
    # test scale (512, 256): a 60x90 image is scaled by min(512/90, 256/60) to 256x384
    assert result.input_size == (256, 384)
    h, w = result.trace.responsibilities[0].shape[-2:]
    assert (h, w) == (32, 48)
    torch.testing.assert_close(
        result.trace.responsibilities[-1].sum(1), torch.ones(1, h, w), rtol=1e-5, atol=1e-5
    )
    assert result.overlay(0.5).shape == (60, 90, 3)
    assert abs(sum(result.class_areas().values()) - 1.0) < 1e-6


def test_fast_path_gives_same_labels(segmenter):
    plain = Segmenter(segmenter.model, device="cpu", fast=False)
    image = photo(seed=3)
    assert (segmenter(image).labels == plain(image).labels).mean() > 0.999


def _encode(image: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_odd_image_modes(segmenter, tmp_path):
    rgb = Image.fromarray(photo(40, 64))
    cases = {
        "rgba.png": rgb.convert("RGBA"),
        "grey.png": rgb.convert("L"),
        "la.png": rgb.convert("LA"),
        "palette.png": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "bw.png": rgb.convert("1"),
    }
    for name, image in cases.items():
        path = tmp_path / name
        image.save(path)
        assert segmenter(path).labels.shape == (40, 64), name
    # 16-bit greyscale: scaled to 8 bits, not clipped -> same labels as its 8-bit version
    grey8 = np.asarray(rgb.convert("L"))
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    same = segmenter(tmp_path / "grey16.png").labels == segmenter(Image.fromarray(grey8)).labels
    assert same.mean() > 0.999
    # EXIF orientation 6 (rotate 90): labels of the upright image
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(tmp_path / "rotated.jpg", exif=exif)
    assert segmenter(tmp_path / "rotated.jpg").labels.shape == (64, 40)
    # animated: first frame
    frames = [rgb, Image.fromarray(photo(40, 64, seed=9))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert segmenter(tmp_path / "anim.gif").labels.shape == (40, 64)
    # 1x1 and extreme aspect ratios
    assert segmenter(photo(1, 1)).labels.shape == (1, 1)
    assert segmenter(photo(2, 700)).labels.shape == (2, 700)


def test_bad_files_raise_clear_errors(segmenter, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_encode(Image.fromarray(photo()))[:100])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (empty, truncated, text):
        with pytest.raises(ImageLoadError, match=path.name):
            segmenter(path)


def _assert_same_model(loaded: Segmenter, model) -> None:
    """The loaded network is ``model``: the same weights and buffers, the same probabilities."""
    expected = model.state_dict()
    got = loaded.model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key].cpu(), value), key
    image = photo(seed=5)
    reference = Segmenter(model, device="cpu")
    np.testing.assert_array_equal(
        loaded(image, return_probabilities=True).probabilities,
        reference(image, return_probabilities=True).probabilities,
    )


@pytest.fixture(scope="module")
def trained():
    """A model that is not a fresh one: weights and EM bases moved away from any seed's."""
    torch.manual_seed(1)
    model = build_model("emanet_r18-d8_toycity")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn_like(tensor))
    return model.eval()


def test_from_pretrained_own_format(tmp_path, trained):
    palette = [tuple((np.array(c) // 2).tolist()) for c in PALETTE]  # not the default colours
    path = save_checkpoint(
        tmp_path / "small.pth",
        trained,
        preset=trained.preset.name,
        classes=[f"class {i}" for i in range(19)],
        palette=palette,
    )
    loaded = Segmenter.from_pretrained(path, device="cpu")
    assert loaded.preset.name == "emanet_r18-d8_toycity"
    assert loaded.classes == tuple(f"class {i}" for i in range(19))
    assert loaded.palette == tuple(palette)
    _assert_same_model(loaded, trained)


def test_from_pretrained_mmseg_format_given_or_inferred_preset(tmp_path, trained):
    path = tmp_path / "mm.pth"
    torch.save({"meta": {"CLASSES": tuple(CLASSES)}, "state_dict": trained.state_dict()}, path)
    loaded = Segmenter.from_pretrained(path, preset="emanet_r18-d8_toycity", device="cpu")
    assert loaded.classes == tuple(CLASSES) and loaded.palette == tuple(PALETTE)
    _assert_same_model(loaded, trained)
    with pytest.raises(CheckpointError, match="pass preset="):
        Segmenter.from_pretrained(path, device="cpu")  # no 512x1024 preset to infer


def test_from_pretrained_reads_the_file_once(tmp_path, trained, monkeypatch):
    path = save_checkpoint(
        tmp_path / "m.pth", trained, preset=trained.preset.name, classes=CLASSES, palette=PALETTE
    )
    reads = []
    real = checkpoint_module._safe_torch_load
    monkeypatch.setattr(checkpoint_module, "_safe_torch_load", lambda p: reads.append(p) or real(p))
    Segmenter.from_pretrained(path, device="cpu")
    assert reads == [path]


@pytest.mark.parametrize(
    "palette",
    [[(1, 2)] * 19, [(300, 0, 0)] * 19, [(-1, 0, 0)] * 19, [(0, 0, 0)] * 18],
    ids=["pairs", "over-255", "negative", "too-short"],
)
def test_malformed_checkpoint_palette_is_ignored_at_load(tmp_path, trained, caplog, palette):
    path = tmp_path / "mm.pth"
    meta = {"CLASSES": list(CLASSES), "PALETTE": palette}
    torch.save({"meta": meta, "state_dict": trained.state_dict()}, path)
    with caplog.at_level(logging.WARNING, logger="emanet"):
        loaded = Segmenter.from_pretrained(path, preset="emanet_r18-d8_toycity", device="cpu")
    assert "palette" in caplog.text and "mm.pth" in caplog.text
    assert loaded.palette == tuple(PALETTE)
    result = loaded(photo())
    lut = np.zeros((256, 3), np.uint8)
    lut[:19] = PALETTE
    np.testing.assert_array_equal(result.color_mask(), lut[result.labels])


def test_preprocess_is_the_test_pipeline(segmenter):
    """The Segmenter (and through it, validation and eval) feeds the model what the one
    test-time preprocessing function makes of the image, at its test scale."""
    custom = Segmenter(segmenter.model, device="cpu", test_scale=(200, 100))
    for height, width in ((60, 90), (300, 97), (256, 512), (1, 700)):
        image = Image.fromarray(photo(height, width, seed=height))
        for seg in (segmenter, custom):
            expected = preprocess_test_image(image, seg.test_scale)
            torch.testing.assert_close(seg.preprocess(image)[0], expected, rtol=0, atol=0)


def test_the_test_scale_travels_with_the_checkpoint(tmp_path, trained):
    options = dict(preset=trained.preset.name, classes=CLASSES, palette=PALETTE)
    recorded = save_checkpoint(tmp_path / "a.pth", trained, test_scale=(200, 100), **options)
    assert Segmenter.from_pretrained(recorded, device="cpu").test_scale == (200, 100)
    given = Segmenter.from_pretrained(recorded, device="cpu", test_scale=(64, 32))
    assert given.test_scale == (64, 32)
    # files without a recorded scale, ours or mmseg's, use their preset's
    plain = save_checkpoint(tmp_path / "b.pth", trained, **options)
    assert Segmenter.from_pretrained(plain, device="cpu").test_scale == (512, 256)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "mm.pth")
    mmseg = Segmenter.from_pretrained(tmp_path / "mm.pth", preset=trained.preset.name, device="cpu")
    assert mmseg.test_scale == (512, 256)
    image = Image.fromarray(photo(300, 600))
    assert Segmenter.from_pretrained(recorded, device="cpu")(image).input_size == (100, 200)


def test_class_labels_are_argmax_with_its_tie_rule():
    from emanet.predict.segmenter import class_labels

    torch.manual_seed(0)
    logits = torch.randn(2, 19, 33, 47)
    np.testing.assert_array_equal(class_labels(logits), logits.argmax(dim=1).numpy())
    # ties: the first largest, as argmax (rounded logits tie often)
    tied = torch.randint(0, 3, (2, 19, 33, 47)).float()
    np.testing.assert_array_equal(class_labels(tied), tied.argmax(dim=1).numpy())
    assert class_labels(tied).dtype == np.uint8
