"""Files written whole or not at all, and one clear error when a file cannot be written.

Every file emanet writes (checkpoints, training states, ONNX files, PNGs, JSON) goes through
:func:`atomic_write`: the content goes to a temporary file in the destination's folder (the
same file system, so the final ``os.replace`` is atomic), then replaces the destination. The
path therefore always holds either its previous content or the complete new one. When the write
fails for a reason of the file system (no space left, no permission, a read-only disk), the
temporary file is removed and :class:`WriteError` says so in one line; any other exception (a
bug) propagates unchanged with its traceback.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["WriteError", "atomic_save", "atomic_write", "atomic_write_text"]


class WriteError(OSError):
    """A file could not be written; its previous content, if any, is intact.

    Attributes:
        path: the file that was being written.
        reason: what the file system said (``No space left on device``, ...).
        intact: the file existed before and still holds its previous content.
    """

    def __init__(self, path: Path, cause: OSError, intact: bool, advice: str = "") -> None:
        self.path, self.cause, self.intact = path, cause, intact
        self.reason = cause.strerror or str(cause)
        kept = f"the previous {path.name} is intact" if intact else "nothing was written"
        advice = advice or _ADVICE.get(cause.errno, "")
        message = f"cannot write {path}: {self.reason} ({kept}, no temporary file was left)"
        super().__init__(cause.errno, message + (f"; {advice}" if advice else ""))

    def __str__(self) -> str:
        return self.strerror

    def with_advice(self, advice: str) -> WriteError:
        """The same error with ``advice`` (what to do) in place of the generic one."""
        return WriteError(self.path, self.cause, self.intact, advice)


_ADVICE = {
    28: "free some space and run again",  # ENOSPC
    122: "free some space and run again",  # EDQUOT
    13: "choose a folder you can write to",  # EACCES
    1: "choose a folder you can write to",  # EPERM
    30: "choose a folder on a writable disk",  # EROFS
}


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], object], fsync: bool = False
) -> Path:
    """Call ``write(tmp_path)`` and move the file it wrote to ``path`` (folders are created).

    ``write`` creates ``tmp_path`` itself, e.g. ``lambda p: image.save(p, format="PNG")`` (give
    the format explicitly: the temporary name does not end with the path's suffix). ``fsync``
    flushes the file and the rename to the disk, for files that must survive a power cut
    (checkpoints). Raises :class:`WriteError` when the file system refuses the write.
    """
    path = Path(path).expanduser()
    intact = path.exists()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = _file_system_error(error)
        if cause is None:
            raise
        raise WriteError(path, cause, intact) from error
    if fsync:
        with contextlib.suppress(OSError):
            _fsync(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically and durably (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: _torch_save(obj, tmp), fsync=True)


def _torch_save(obj: Any, path: Path) -> None:
    # Through a Python file object: given a path, torch's own writer reports a full disk as an
    # iostream error without its errno.
    with open(path, "wb") as file:
        torch.save(obj, file)


def _file_system_error(error: BaseException) -> OSError | None:
    """The OSError behind ``error``, if the file system caused it. ``torch.save`` reports a full
    disk as ``RuntimeError: ... unexpected pos``, with the OSError as its context."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
