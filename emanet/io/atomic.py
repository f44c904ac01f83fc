"""Write a file so that its path always holds either the old or the complete new content.

The content is written to a temporary file in the same folder (same file system, so the rename
is atomic), then moved over the destination with ``os.replace``; an exception mid-write leaves
the old file untouched and no temporary file behind. :func:`emanet.io.checkpoint.atomic_save` does
the same for ``torch.save``; this is the form for writers that want a path (ONNX, PNG, JSON).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` (parent folders are created).

    ``write`` must create ``tmp_path`` itself, e.g. ``lambda p: image.save(p, format="PNG")``
    (give the format explicitly: the temporary name does not end with the path's suffix).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
