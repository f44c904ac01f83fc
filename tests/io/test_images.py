"""load_image (every Pillow mode, numpy layouts, orientation, animation, bad inputs), the
dataset readers read_rgb / read_label (every decoder gives the same values), and write_png."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from emanet.io import images
from emanet.io.images import ImageLoadError, load_image, read_label, read_rgb, write_png

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, pixels: bytes) -> bytes:
    """A PNG written by hand, so 16-bit RGB(A) and huge headers need no other library."""
    stride = len(pixels) // height if height else 0
    rows = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert array.dtype == np.uint8
    return array


def check(image: Image.Image, size: tuple[int, int], first_pixels: list) -> np.ndarray:
    """Assert RGB uint8 of ``size`` (W, H) whose first row starts with ``first_pixels``."""
    array = pixels(image)
    assert image.size == size
    assert array[0, : len(first_pixels)].tolist() == [list(p) for p in first_pixels]
    return array


# --------------------------------------------------------------------------------------------
# Pillow modes
# --------------------------------------------------------------------------------------------


def test_rgb_from_path_str_and_pathlike(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(array).save(path)
    for source in (path, str(path)):
        assert np.array_equal(pixels(load_image(source)), array)


def test_rgba_and_la_drop_alpha(tmp_path):
    rgba = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (40, 50, 60, 128))
    check(load_image(encode(rgba, "PNG")), (3, 2), [(10, 20, 30), (40, 50, 60)])
    la = Image.new("LA", (3, 2), (100, 0))
    check(load_image(encode(la, "PNG")), (3, 2), [(100, 100, 100)])


def test_l_and_1(tmp_path):
    check(load_image(encode(Image.new("L", (4, 3), 77), "PNG")), (4, 3), [(77, 77, 77)])
    bilevel = Image.new("1", (4, 3), 0)
    bilevel.putpixel((1, 0), 1)
    check(load_image(encode(bilevel, "PNG")), (4, 3), [(0, 0, 0), (255, 255, 255)])


def test_palette_with_and_without_transparency():
    image = Image.new("P", (4, 2), 0)
    image.putpalette([*RED, *BLUE] + [0] * (254 * 3))
    image.putpixel((1, 0), 1)
    check(load_image(encode(image, "PNG")), (4, 2), [RED, BLUE])
    # Index 0 transparent: its palette colour is kept (alpha dropped), and no Pillow warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check(load_image(encode(image, "PNG", transparency=0)), (4, 2), [RED, BLUE])
        check(load_image(encode(image, "GIF", transparency=0)), (4, 2), [RED, BLUE])


def test_cmyk_tiff_and_jpeg():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # full magenta + yellow = red
    check(load_image(encode(cmyk, "TIFF")), (8, 8), [RED])
    array = pixels(load_image(encode(cmyk, "JPEG", quality=95)))
    assert np.abs(array.astype(int) - RED).max() <= 8


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_greyscale_is_scaled_not_clipped(mode):
    values = [0, 255, 256, 32768, 65535]
    image = Image.new(mode, (5, 1))
    for x, v in enumerate(values):
        image.putpixel((x, 0), v)
    expected = [(v >> 8,) * 3 for v in values]  # 0, 0, 1, 128, 255
    check(load_image(image), (5, 1), expected)
    if mode == "I;16":
        decoded = Image.open(io.BytesIO(encode(image, "PNG")))
        assert decoded.mode == "I;16"  # the common 16-bit PNG case goes through this path
        check(load_image(encode(image, "PNG")), (5, 1), expected)
    assert expected[-2:] == [(128,) * 3, (255,) * 3]


def test_32_bit_integer_greyscale():
    sixteen = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert sixteen.mode == "I"
    check(load_image(sixteen), (3, 1), [(0,) * 3, (128,) * 3, (255,) * 3])
    wide = Image.fromarray(np.array([[-5, 2**30, 2**31 - 1]], dtype=np.int32))
    check(load_image(wide), (3, 1), [(0,) * 3, (128,) * 3, (255,) * 3])
    check(load_image(encode(wide, "TIFF")), (3, 1), [(0,) * 3, (128,) * 3, (255,) * 3])


def test_float_greyscale():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    check(load_image(unit), (3, 1), [(0,) * 3, (128,) * 3, (255,) * 3])
    check(load_image(encode(unit, "TIFF")), (3, 1), [(0,) * 3, (128,) * 3, (255,) * 3])
    byte_scale = Image.fromarray(np.array([[-3.0, 100.4, 300.0]], dtype=np.float32))
    check(load_image(byte_scale), (3, 1), [(0,) * 3, (100,) * 3, (255,) * 3])
    nan = Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(nan)


def test_16_bit_rgb_and_rgba_png():
    rgb = np.array([[[65535, 32768, 0], [0x1234, 0xFFFF, 0x00FF]]], dtype=">u2")
    data = raw_png(2, 1, 16, 2, rgb.tobytes())
    check(load_image(data), (2, 1), [(255, 128, 0), (0x12, 255, 0)])
    rgba = np.array([[[65535, 32768, 0, 0], [256, 512, 768, 65535]]], dtype=">u2")
    check(load_image(raw_png(2, 1, 16, 6, rgba.tobytes())), (2, 1), [(255, 128, 0), (1, 2, 3)])
    grey_alpha = np.array([[[32768, 0]]], dtype=">u2")
    check(load_image(raw_png(1, 1, 16, 4, grey_alpha.tobytes())), (1, 1), [(128,) * 3])


# --------------------------------------------------------------------------------------------
# Animation and orientation
# --------------------------------------------------------------------------------------------


def frames() -> list[Image.Image]:
    return [Image.new("RGB", (6, 4), RED), Image.new("RGB", (6, 4), BLUE)]


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})],
    ids=["gif", "apng", "webp"],
)
def test_animated_images_give_the_first_frame(fmt, params):
    first, *rest = frames()
    data = encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    array = pixels(load_image(data))
    assert array.shape == (4, 6, 3)
    assert (array == RED).all()


def half_red_half_blue(width: int = 40, height: int = 20) -> Image.Image:
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))  # left half red
    return image


@pytest.mark.parametrize(
    ("orientation", "size", "red_at", "blue_at"),
    [
        (1, (40, 20), (10, 10), (30, 10)),  # as stored: left red
        (3, (40, 20), (30, 10), (10, 10)),  # rotated 180: right red
        (6, (20, 40), (10, 10), (10, 30)),  # rotated 90 clockwise: top red
        (8, (20, 40), (10, 30), (10, 10)),  # rotated 90 counter-clockwise: bottom red
    ],
)
def test_exif_orientation_makes_the_image_upright(orientation, size, red_at, blue_at):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(half_red_half_blue(), "JPEG", quality=95, exif=exif)
    image = load_image(data)
    array = pixels(image)
    assert image.size == size
    assert np.abs(array[red_at[1], red_at[0]].astype(int) - RED).max() < 20
    assert np.abs(array[blue_at[1], blue_at[0]].astype(int) - BLUE).max() < 20
    assert image.getexif().get(0x0112, 1) == 1  # the tag is consumed


def test_exif_orientation_of_a_16_bit_png():
    image = Image.new("I;16", (4, 2), 0)
    image.putpixel((0, 0), 65535)
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(encode(image, "PNG", exif=exif))
    assert loaded.size == (2, 4)
    assert pixels(loaded)[0].tolist() == [[0, 0, 0], [255, 255, 255]]  # corner moved top-right


# --------------------------------------------------------------------------------------------
# Other source types
# --------------------------------------------------------------------------------------------


def test_bytes_file_objects_and_pil_images(tmp_path):
    image = half_red_half_blue(8, 4)
    data = encode(image, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    expected = np.asarray(image)
    with open(path, "rb") as f:
        from_file = load_image(f)
    sources = [data, bytearray(data), memoryview(data), io.BytesIO(data), image]
    for loaded in [from_file, *(load_image(s) for s in sources)]:
        assert np.array_equal(pixels(loaded), expected)
    result = load_image(image)
    assert result is not image  # a new image: the caller's is never handed back or changed


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((2, 3), 7, np.uint8), (7, 7, 7)),
        (np.full((2, 3, 1), 7, np.uint8), (7, 7, 7)),
        (np.full((2, 3, 2), [9, 0], np.uint8), (9, 9, 9)),
        (np.full((2, 3, 3), [1, 2, 3], np.uint8), (1, 2, 3)),
        (np.full((2, 3, 4), [1, 2, 3, 0], np.uint8), (1, 2, 3)),
        (np.full((2, 3, 3), [65535, 32768, 256], np.uint16), (255, 128, 1)),
        (np.full((2, 3), 32768, np.uint16), (128, 128, 128)),
        (np.full((2, 3, 4), [65535, 0, 32768, 0], np.uint16), (255, 0, 128)),
        (np.full((2, 3, 3), [0.0, 0.5, 1.0], np.float32), (0, 128, 255)),
        (np.full((2, 3), 0.25, np.float64), (64, 64, 64)),
        (np.ones((2, 3), bool), (255, 255, 255)),
    ],
    ids=[
        "hw-u8",
        "hw1-u8",
        "hw2-u8",
        "hw3-u8",
        "hw4-u8",
        "hw3-u16",
        "hw-u16",
        "hw4-u16",
        "hw3-f32",
        "hw-f64",
        "hw-bool",
    ],
)
def test_numpy_arrays(array, expected):
    image = load_image(array)
    assert image.size == (3, 2)
    assert (pixels(image) == expected).all()


def test_numpy_non_contiguous_array():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    view = base[::2, ::-1]
    assert np.array_equal(pixels(load_image(view)), view)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((2, 3), np.int64), "unsupported dtype"),
        (np.zeros((3, 4, 5), np.uint8), "channel-last"),
        (np.zeros(5, np.uint8), "channel-last"),
        (np.zeros((0, 3), np.uint8), "no pixels"),
        (np.full((2, 2), np.inf, np.float32), "NaN or infinite"),
    ],
    ids=["int64", "five-channels", "1d", "empty", "inf"],
)
def test_bad_arrays(array, reason):
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(array)
    assert "<array>" in str(info.value)


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def _noise_png() -> bytes:
    rng = np.random.default_rng(2)
    return encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")


def _noise_jpeg() -> bytes:
    rng = np.random.default_rng(3)
    return encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image\n", "not an image"),
        (b"%PDF-1.4\n" + bytes(range(256)), "not an image"),
        (_noise_png()[:2000], "truncated or corrupt"),
        (_noise_jpeg()[:1500], "truncated or corrupt"),
        (_noise_png()[:40], "truncated or corrupt|not an image|unreadable"),
    ],
    ids=["zero-bytes", "text", "pdf", "truncated-png", "truncated-jpeg", "header-only"],
)
def test_bad_files_name_the_file(tmp_path, content, reason):
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert info.value.source_name == str(path)
    if content:  # the same content as bytes names "<bytes>"
        with pytest.raises(ImageLoadError, match=reason) as info:
            load_image(content)
        assert "<bytes>" in str(info.value)


def test_missing_file_directory_and_empty_bytes(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file") as info:
        load_image(tmp_path / "missing.jpg")
    assert "missing.jpg" in str(info.value)
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="<bytes>: empty"):
        load_image(b"")
    assert issubclass(ImageLoadError, ValueError)


def test_wrong_source_types(tmp_path):
    with pytest.raises(TypeError):
        load_image(12345)
    path = tmp_path / "t.txt"
    path.write_text("x")
    with open(path) as text_file, pytest.raises(TypeError, match="binary"):
        load_image(text_file)


def test_max_pixels_guard():
    image = Image.new("RGB", (100, 50))
    assert load_image(image, max_pixels=5000).size == (100, 50)
    assert load_image(encode(image, "PNG"), max_pixels=None).size == (100, 50)
    for source in (image, encode(image, "PNG"), np.zeros((50, 100, 3), np.uint8)):
        with pytest.raises(ImageLoadError, match="max_pixels=4999"):
            load_image(source, max_pixels=4999)


@pytest.mark.parametrize("side", [10_001, 20_000], ids=["above-ours", "above-pillows"])
def test_decompression_bomb_header_is_an_error_not_a_warning(side):
    # A tiny file whose header claims side x side pixels; 10001^2 is above our default limit
    # (100 MP) but below Pillow's error limit (where it only warns), 20000^2 above both.
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        + png_chunk(b"IEND", b"")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any DecompressionBombWarning would fail the test
        with pytest.raises(ImageLoadError, match="pixels") as info:
            load_image(bomb)
    assert "<bytes>" in str(info.value)


# --------------------------------------------------------------------------------------------
# Dataset files: read_rgb and read_label
# --------------------------------------------------------------------------------------------


def test_every_decoder_gives_the_same_values(tmp_path, monkeypatch):
    # imagecodecs (the loader's fast path), torchvision.io and Pillow: PNG is lossless, so the
    # three must agree exactly, and formats the fast path does not take must still be read.
    imagecodecs = pytest.importorskip("imagecodecs")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    grey = rng.integers(0, 34, (37, 53), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the dataset readers keep the stored pixels, aligned with labels
    files = {
        "rgb.png": (Image.fromarray(rgb), {}),
        "exif.png": (Image.fromarray(rgb), {"exif": exif}),
        "rgba.png": (Image.fromarray(np.dstack([rgb, grey])), {}),
        "grey.png": (Image.fromarray(grey), {}),
        "palette.png": (Image.fromarray(grey).convert("P"), {}),
        "grey16.png": (Image.fromarray(grey.astype(np.uint16) * 300), {}),
    }
    for name, (image, params) in files.items():
        image.save(tmp_path / name, **params)
    calls = []
    real_decode = imagecodecs.png_decode

    def counting_decode(data):
        calls.append(len(data))
        return real_decode(data)

    monkeypatch.setattr(imagecodecs, "png_decode", counting_decode)
    results = {}
    for decoders in ("imagecodecs", "torchvision", "pillow"):
        if decoders != "imagecodecs":
            monkeypatch.setattr(images, "imagecodecs", None)
        if decoders == "pillow":
            monkeypatch.setattr(images, "_TV_DECODERS", False)
        results[decoders] = {
            name: (read_rgb(tmp_path / name).numpy(), read_label(tmp_path / name)) for name in files
        }
    assert len(calls) == 3  # the fast path took both 8-bit RGB images and the 8-bit grey map
    for name, (image, _) in files.items():
        stored = np.asarray(image)
        if image.mode == "I;16":  # 16 bits are scaled to 8, as load_image does
            expected_rgb = np.repeat((stored >> 8).astype(np.uint8)[..., None], 3, axis=2)
        else:
            expected_rgb = np.asarray(image.convert("RGB"))
        for decoders, by_name in results.items():
            found_rgb, found_values = by_name[name]
            assert np.array_equal(found_rgb, expected_rgb.transpose(2, 0, 1)), (decoders, name)
            assert np.array_equal(found_values, stored), (decoders, name)


@pytest.mark.parametrize("decoders", ["imagecodecs", "torchvision", "pillow"])
def test_dataset_readers_name_missing_and_broken_files(tmp_path, monkeypatch, decoders):
    if decoders != "imagecodecs":
        monkeypatch.setattr(images, "imagecodecs", None)
    if decoders == "pillow":
        monkeypatch.setattr(images, "_TV_DECODERS", False)
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        read_rgb(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_label(tmp_path / "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(encode(Image.new("RGB", (64, 64), RED), "PNG")[:80])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    for path, reason in ((broken, "truncated or corrupt"), (garbage, "not an image")):
        for read in (read_rgb, read_label):
            with pytest.raises(OSError, match=f"cannot read .*{path.name}: {reason}"):
                read(path)


# --------------------------------------------------------------------------------------------
# write_png
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.arange(12, dtype=np.uint8).reshape(3, 4), "L"),
        (np.arange(12, dtype=np.uint16).reshape(3, 4) * 3000, "I;16"),
        (np.arange(36, dtype=np.uint8).reshape(3, 4, 3), "RGB"),
    ],
    ids=["grey", "grey16", "rgb"],
)
def test_write_png_round_trips_the_values(tmp_path, array, mode):
    path = write_png(tmp_path / "out.png", array)
    assert path == tmp_path / "out.png" and sorted(tmp_path.iterdir()) == [path]
    with Image.open(path) as image:
        assert (image.format, image.mode) == ("PNG", mode)
        assert np.array_equal(np.asarray(image), array)


@pytest.mark.parametrize(
    "array",
    [np.zeros((3, 4), np.int32), np.zeros((3, 4, 3), np.uint16), np.zeros((3, 4, 4), np.uint8)],
    ids=["int32", "rgb16", "rgba"],
)
def test_write_png_refuses_other_arrays(tmp_path, array):
    with pytest.raises(ValueError, match="write_png takes"):
        write_png(tmp_path / "out.png", array)
    assert not any(tmp_path.iterdir())
