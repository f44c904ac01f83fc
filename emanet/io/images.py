"""Images in and out: the one place that decodes image files, and the PNG writer.

* :func:`load_image`: any image a user may hand us (a path, bytes, a file object, a PIL image,
  an array) as an upright 8-bit RGB :class:`PIL.Image.Image`, with clear errors.
* :func:`read_rgb` and :func:`read_label`: a dataset's image and label files, for the training
  loader: the fastest decoder that takes the file (imagecodecs, torchvision.io), else the same
  Pillow path as :func:`load_image`; stored pixels, no EXIF orientation.
* :func:`write_png`: a uint8 or uint16 array as a PNG, atomically.

The model sees 8-bit RGB photographs (Cityscapes ``leftImg8bit``), so :func:`load_image`
brings every input to that form, with these decisions (the first four hold for
:func:`read_rgb` too):

* **Alpha is dropped, not composited.** mmsegmentation reads images with OpenCV's
  ``IMREAD_COLOR``, which discards alpha; dropping it here gives the colours the network was
  evaluated on. The colour channels are what the camera recorded; compositing onto white (or
  black) would invent colours for semi-transparent pixels and change the prediction with a
  presentation detail of the file. Palette images with a transparent index keep that index's
  palette colour.
* **High bit depths are scaled by the range of their type, never clipped**: 16-bit values are
  shifted right by 8 (65535 -> 255, 32768 -> 128). Pillow's own ``convert`` clips instead,
  which turns almost every 16-bit photograph white.

  Mode ``"I"`` (32-bit signed) is how Pillow hands out many 16-bit files, so an ``"I"`` image
  whose values all lie in 0-65535 is scaled as 16-bit data; otherwise by the 32-bit range
  (negatives become 0, then a shift right by 23).
* **Floats** (mode ``"F"`` and float arrays) in [0, 1] are scaled by 255, the convention for
  float images; if any value lies outside [0, 1] the data is taken to be on Pillow's 0-255
  scale (``Image.convert("F")`` of an 8-bit image produces it) and clipped to it. NaN or
  infinite values are an error.
* **Animated** GIF / WebP / APNG files give their first frame.
* **EXIF orientation** is applied (``ImageOps.exif_transpose``), so the result is upright as a
  photo viewer shows it, and the tag is removed from the result.
* A **max_pixels** guard refuses images too large to decode safely (decompression bombs) with an
  :class:`ImageLoadError` instead of Pillow's warning. Pillow's own hard limit (twice
  ``PIL.Image.MAX_IMAGE_PIXELS``) still applies above it; this module never changes Pillow's
  global settings.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torchvision import io as tv_io

from emanet.runtime.errors import UserError

from .atomic import atomic_write

try:  # optional: the fastest PNG decoder for the training loader (see _decode_png)
    import imagecodecs
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    imagecodecs = None

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageLoadError",
    "load_image",
    "read_label",
    "read_rgb",
    "write_png",
]

log = logging.getLogger(__name__)

#: Default ``max_pixels``: 100 megapixels, 48x a 2048x1024 Cityscapes frame.
DEFAULT_MAX_PIXELS = 100_000_000

ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)


class ImageLoadError(UserError, ValueError):
    """An input could not be turned into an image; names the input and the reason."""

    def __init__(self, source_name: str, reason: str) -> None:
        super().__init__(f"Cannot load image {source_name}: {reason}")
        self.source_name = source_name
        self.reason = reason


def load_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load ``source`` as an upright 8-bit RGB image (see the module docstring for the rules).

    Args:
        source: a path (``str`` / ``os.PathLike``), encoded file bytes, a binary file object,
            a PIL image (used at its current frame) or a numpy array of shape ``(H, W)``,
            ``(H, W, 1)``, ``(H, W, 2)`` (grey + alpha), ``(H, W, 3)`` or ``(H, W, 4)`` with
            dtype uint8, uint16, bool or float (values in [0, 1]).
        max_pixels: refuse images with more pixels than this (``None``: no limit of our own).

    Returns:
        A new, fully loaded RGB image; the caller's objects are not modified.

    Raises:
        ImageLoadError: missing, empty, truncated or non-image input, unsupported mode or
            dtype, or more than ``max_pixels`` pixels. The message names the file (or
            ``<bytes>``, ``<array>``, ...) and the reason.
        TypeError: ``source`` is of none of the accepted types.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, "<array>", max_pixels)
    if isinstance(source, Image.Image):
        return _from_pil(source, "<PIL image>", max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), "<bytes>", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source), max_pixels)
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        name = str(name) if isinstance(name, (str, os.PathLike)) else "<file object>"
        # Read it all: Pillow needs to seek, and a pipe or an upload stream may not.
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"{name} must be opened in binary mode ('rb')")
        return _from_bytes(bytes(data), name, max_pixels)
    raise TypeError(
        "load_image expects a path, bytes, a binary file object, a PIL image or a numpy array, "
        f"not {type(source).__name__}"
    )


def _from_path(path: Path, max_pixels: int | None) -> Image.Image:
    name = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError(name, "no such file") from None
    except OSError as err:
        raise ImageLoadError(name, f"cannot access the file ({err.strerror or err})") from err
    if path.is_dir():
        raise ImageLoadError(name, "is a directory, not an image file")
    if size == 0:
        raise ImageLoadError(name, "empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            return _decode(f, name, max_pixels)
    except OSError as err:  # decoding errors are ImageLoadErrors already; this is open()
        raise ImageLoadError(name, f"cannot read the file ({err.strerror or err})") from err


def _from_bytes(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    if not data:
        raise ImageLoadError(name, "empty input (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(fp: IO[bytes], name: str, max_pixels: int | None) -> Image.Image:
    """Decode the first frame and make it upright RGB."""
    with _opened(fp, name, max_pixels) as image:
        return _upright_rgb(image, name)


@contextlib.contextmanager
def _opened(fp: IO[bytes], name: str, max_pixels: int | None) -> Iterator[Image.Image]:
    """Open, check the size from the header, decode the first frame fully (so truncation shows
    up here); every failure is an :class:`ImageLoadError`."""
    # Pillow warns (DecompressionBombWarning) inside Image.open for large images; our own
    # max_pixels check replaces that warning with an error, so silence it just around open.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp)
        except Image.DecompressionBombError as err:
            raise ImageLoadError(
                name, f"too many pixels, refused as a decompression bomb ({err})"
            ) from None
        except UnidentifiedImageError:
            raise ImageLoadError(
                name, "not an image (unknown format, or a file too damaged to recognise)"
            ) from None
        except Exception as err:  # decoders raise many types on hostile headers
            raise ImageLoadError(name, f"unreadable header ({type(err).__name__}: {err})") from err
    with image:
        _check_pixels(image.size, max_pixels, name)
        try:
            image.seek(0)  # animated GIF / WebP / APNG: the first frame
            image.load()
        except Exception as err:  # truncated or corrupt data: OSError, SyntaxError, ...
            raise ImageLoadError(
                name, f"truncated or corrupt image data ({type(err).__name__}: {err})"
            ) from err
        yield image


def _from_pil(image: Image.Image, name: str, max_pixels: int | None) -> Image.Image:
    _check_pixels(image.size, max_pixels, name)
    try:
        image.load()  # a lazily opened image decodes here
    except Exception as err:
        raise ImageLoadError(
            name, f"truncated or corrupt image data ({type(err).__name__}: {err})"
        ) from err
    return _upright_rgb(image, name)


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            name,
            f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels} "
            "(refused as a possible decompression bomb; pass a larger max_pixels to allow it)",
        )


def _upright_rgb(image: Image.Image, name: str) -> Image.Image:
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # corrupt EXIF must not make a decodable picture unloadable
        log.debug("ignoring unreadable EXIF in %s", name)
        orientation = 1
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
    return _to_rgb(image, name)


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert any Pillow mode to a new 8-bit RGB image (alpha dropped, depth scaled)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in ("RGBA", "RGBX", "LA", "L", "1", "CMYK", "YCbCr", "HSV", "LAB"):
        return image.convert("RGB")
    if mode in ("P", "PA", "RGBa", "La"):
        # Via RGBA: palette transparency becomes alpha (which we drop) without Pillow's
        # "Palette images with Transparency" warning; premultiplied modes are un-premultiplied.
        return image.convert("RGBA").convert("RGB")
    if mode.startswith("I;16"):
        return _grey_to_rgb(_scale_uint16(np.asarray(image)))
    if mode == "I":
        return _grey_to_rgb(_scale_int32(np.asarray(image)))
    if mode == "F":
        return _grey_to_rgb(_scale_float(np.asarray(image), name))
    try:  # any mode added to Pillow later
        return image.convert("RGBA").convert("RGB")
    except ValueError as err:
        raise ImageLoadError(name, f"unsupported image mode {mode!r}") from err


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.uint16) >> 8).astype(np.uint8)


def _scale_int32(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.int64)
    if values.min() >= 0 and values.max() <= 0xFFFF:
        return (values >> 8).astype(np.uint8)
    return (np.clip(values, 0, None) >> 23).astype(np.uint8)


def _scale_float(values: np.ndarray, name: str) -> np.ndarray:
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageLoadError(name, "float image contains NaN or infinite values")
    if values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _from_array(array: np.ndarray, name: str, max_pixels: int | None) -> Image.Image:
    if array.ndim == 3 and array.shape[2] in (1, 2, 3, 4):
        channels = array.shape[2]
    elif array.ndim == 2:
        array, channels = array[..., None], 1
    else:
        raise ImageLoadError(
            name,
            f"array of shape {array.shape} is not (H, W) or channel-last (H, W, C) with C in 1-4",
        )
    height, width = array.shape[:2]
    _check_pixels((width, height), max_pixels, name)
    kind, itemsize = array.dtype.kind, array.dtype.itemsize
    if kind == "b":
        values = array.astype(np.uint8) * np.uint8(255)
    elif kind == "u" and itemsize == 1:
        values = array
    elif kind == "u" and itemsize == 2:
        values = _scale_uint16(array)
    elif kind == "f":
        values = _scale_float(array, name)
    else:
        raise ImageLoadError(
            name, f"unsupported dtype {array.dtype} (use uint8, uint16, bool or float in [0, 1])"
        )
    # Alpha (channel 2 of grey+alpha, channel 4 of RGBA) is dropped; see the module docstring.
    if channels <= 2:
        return _grey_to_rgb(np.ascontiguousarray(values[..., 0]))
    return Image.fromarray(np.ascontiguousarray(values[..., :3]), "RGB")


# ----------------------------------------------------------------------------------------------
# Dataset files: the training loader's decoders


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """The pixels of a dataset image as a ``(3, H, W)`` uint8 RGB tensor, as stored.

    The fastest decoder that takes the file runs: imagecodecs for 8-bit RGB PNGs (Cityscapes'
    ``leftImg8bit``), then torchvision.io (PNG, JPEG), then Pillow with :func:`load_image`'s
    mode rules. On PNGs (lossless) all of them give the same values. Unlike
    :func:`load_image`, no EXIF orientation is applied: the pixels must stay aligned with their
    label map. The result may be a view of ``(H, W, 3)`` memory (each pixel's channels
    adjacent), the layout the decoders produce.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: it cannot be decoded (the message names it).
    """
    path = Path(path)
    fast = _decode_png(path, _PNG_RGB)
    if fast is not None and fast.ndim == 3 and fast.shape[2] == 3:
        return torch.from_numpy(fast).permute(2, 0, 1)
    decoded = _decode_torchvision(path, rgb=True)
    if _is_uint8_image(decoded, channels=3):
        return decoded
    return torch.from_numpy(_decode_pillow(path, rgb=True)).permute(2, 0, 1)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """The stored values of a label map: ``(H, W)`` uint8 for a one-channel 8-bit PNG; palette
    indices, 16-bit values or several channels as Pillow gives them (the caller checks them).

    Decoded as :func:`read_rgb` decodes (imagecodecs for 8-bit grey PNGs, torchvision.io,
    Pillow), without any conversion of the values.

    Raises:
        FileNotFoundError, OSError: as :func:`read_rgb`.
    """
    path = Path(path)
    fast = _decode_png(path, _PNG_GREY)
    if fast is not None and fast.ndim == 2 and fast.dtype == np.uint8:
        return fast
    decoded = _decode_torchvision(path, rgb=False)
    if _is_uint8_image(decoded, channels=1):
        return decoded[0].numpy()
    return _decode_pillow(path, rgb=False)


#: PNG colour types (IHDR byte 25) the fastest decoder takes: 0 = grey, 2 = RGB (8 bits each).
_PNG_GREY, _PNG_RGB = 0, 2


def _decode_png(path: Path, colour_type: int) -> np.ndarray | None:
    """imagecodecs' PNG decoder (libpng with zlib-ng, the fastest we measured on Cityscapes'
    PNGs, the loader's largest cost) for an 8-bit PNG of ``colour_type``: ``(H, W, 3)`` for
    RGB, ``(H, W)`` for grey. ``None`` where it cannot help (imagecodecs not installed, another
    format or bit depth, a file it cannot read), and the next decoder runs."""
    if imagecodecs is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    # Signature, IHDR length and type, width, height, bit depth (byte 24), colour type (25).
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[24:26] != bytes((8, colour_type)):
        return None
    try:
        return imagecodecs.png_decode(data)
    except (RuntimeError, ValueError, MemoryError):
        return None


# torchvision 0.29 deprecates its image decoders; a release without them falls back to Pillow.
_TV_DECODERS = all(hasattr(tv_io, n) for n in ("decode_image", "read_file", "ImageReadMode"))


def _decode_torchvision(path: Path, rgb: bool) -> torch.Tensor | None:
    """torchvision.io's decoder (libpng, libjpeg; faster than Pillow): ``(C, H, W)``, or
    ``None`` where it cannot help (a file it cannot read, missing or damaged, which
    :func:`_decode_pillow` then reports; a torchvision without it)."""
    if not _TV_DECODERS:
        return None
    mode = tv_io.ImageReadMode.RGB if rgb else tv_io.ImageReadMode.UNCHANGED
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of TorchCodec (an FFmpeg
            # dependency); they still work, and Pillow takes over once they are gone.
            warnings.simplefilter("ignore", DeprecationWarning)
            return tv_io.decode_image(tv_io.read_file(str(path)), mode=mode)
    except (RuntimeError, OSError, ValueError):
        return None


def _is_uint8_image(decoded: torch.Tensor | None, channels: int) -> bool:
    """Whether torchvision gave ``(channels, H, W)`` uint8 (not 16 bits, not a GIF's frames)."""
    return (
        decoded is not None
        and decoded.dtype == torch.uint8
        and decoded.shape[0] == channels
        and decoded.ndim == 3
    )


def _decode_pillow(path: Path, rgb: bool) -> np.ndarray:
    """The common Pillow path of :func:`load_image` for a dataset file: ``(H, W, 3)`` uint8 RGB
    (``rgb``, no EXIF orientation) or the stored values; failures raise an OSError naming it."""
    try:
        with open(path, "rb") as file, _opened(file, str(path), None) as image:
            return np.array(_to_rgb(image, str(path)) if rgb else image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except ImageLoadError as error:
        raise OSError(f"cannot read {path}: {error.reason}") from error


# ----------------------------------------------------------------------------------------------
# Writing


def write_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 6) -> Path:
    """Write an array as a PNG file, atomically (see :func:`emanet.io.atomic.atomic_write`);
    returns the path.

    Args:
        array: ``(H, W, 3)`` uint8 (RGB), ``(H, W)`` uint8 (grey, e.g. a label map) or
            ``(H, W)`` uint16 (16-bit grey, e.g. Cityscapes' ``_instanceIds``). PNG is
            lossless: the values are kept exactly.
    """
    array = np.asarray(array)
    grey = array.ndim == 2 and array.dtype in (np.uint8, np.uint16)
    rgb = array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8
    if not (grey or rgb):
        raise ValueError(
            "write_png takes (H, W, 3) uint8, (H, W) uint8 or (H, W) uint16, "
            f"got {array.shape} {array.dtype}"
        )
    image = Image.fromarray(array)
    return atomic_write(
        path, lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level)
    )
