"""The app's images as PNG files: a lossless encoder of numpy and zlib, and the writer that
serves its files to ``gr.Image`` outputs.

Gradio would encode the arrays itself, with PIL at PNG's default level 6; this encoder writes
level 1 with numpy and zlib. ``benchmarks/bench_app.py --variants`` measures both alternatives
(Gradio's, PIL's at level 1) against it on /segment.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import threading
import uuid
import weakref
import zlib
from collections import deque
from pathlib import Path

import numpy as np

__all__ = ["PngWriter", "encode_png"]

_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(tag))
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """A lossless 8-bit PNG of a ``(H, W)``, ``(H, W, 2)``, ``(H, W, 3)`` or ``(H, W, 4)``
    array (cast to uint8).

    Rows are filtered with PNG's "Up" filter (each row minus the one above, a numpy
    subtraction) when compressed, stored as they are at level 0; ``zlib.compress`` releases the
    GIL while it works.
    """
    pixels = np.ascontiguousarray(array, dtype=np.uint8)
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if height == 0 or width == 0 or pixels.ndim > 3 or channels not in _PNG_COLOUR_TYPES:
        raise ValueError(f"cannot write an array of shape {pixels.shape} as PNG")
    rows = pixels.reshape(height, width * channels)
    scanlines = np.empty((height, width * channels + 1), dtype=np.uint8)
    if compress_level == 0:
        scanlines[:, 0] = 0  # None
        scanlines[:, 1:] = rows
    else:
        scanlines[:, 0] = 2  # Up (modulo 256)
        scanlines[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(scanlines, compress_level)),
            _png_chunk(b"IEND", b""),
        )
    )


class PngWriter:
    """``writer(array, name)``: ``array`` (see :func:`encode_png`) as a new PNG file in
    ``folder``; returns its path. Thread-safe.

    Gradio copies a returned file into its own cache before it answers, so only the ``keep``
    most recent files are kept here; a temporary folder goes with this object (or at exit).
    """

    def __init__(
        self, folder: str | Path | None = None, keep: int = 64, compress_level: int = 1
    ) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="emanet-app-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.compress_level = compress_level
        self._recent: deque[Path] = deque()
        self._keep = keep
        self._lock = threading.Lock()
        if folder is None:
            weakref.finalize(self, shutil.rmtree, self.folder, True)

    def __call__(self, array: np.ndarray, name: str) -> str:
        path = self.folder / f"{name}-{uuid.uuid4().hex[:12]}.png"
        path.write_bytes(encode_png(array, self.compress_level))
        with self._lock:
            self._recent.append(path)
            while len(self._recent) > self._keep:
                self._recent.popleft().unlink(missing_ok=True)
        return str(path)
