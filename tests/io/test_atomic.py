"""Files written whole or not at all; a full disk or an unwritable folder is one clear error."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from emanet.io import atomic
from emanet.io.atomic import WriteError, atomic_save, atomic_write, atomic_write_text


def test_atomic_save_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "state.pth"
    atomic_save({"iter": 1, "t": torch.arange(3)}, path)
    atomic_save({"iter": 2, "t": torch.arange(4)}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["iter"] == 2 and torch.equal(loaded["t"], torch.arange(4))
    assert [p.name for p in path.parent.iterdir()] == ["state.pth"]


def _full_disk(tmp_path):
    def write(tmp):
        with open(tmp, "wb") as file:
            file.write(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_a_full_disk_keeps_the_old_file_and_says_so_in_one_line(tmp_path):
    path = tmp_path / "latest.pth"
    atomic_write_text(path, "old")
    with pytest.raises(WriteError) as caught:
        atomic_write(path, _full_disk(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "No space left on device" in message and "previous latest.pth is intact" in message
    assert "free some space" in message
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["latest.pth"]
    advised = caught.value.with_advice("run again with --resume")
    assert str(advised).endswith("; run again with --resume")


def test_torch_save_on_a_full_disk_is_a_write_error(tmp_path, monkeypatch):
    # torch.save reports a short write as "RuntimeError: ... unexpected pos"; the OSError of the
    # file underneath is what the person needs to hear.
    real_open = open

    class FullFile:
        def __init__(self, *args):
            self.file = real_open(*args)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(atomic, "open", FullFile, raising=False)
    with pytest.raises(WriteError, match="No space left on device.*nothing was written"):
        atomic_save({"t": torch.zeros(1000)}, tmp_path / "x.pth")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_a_write_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(WriteError, match="cannot write .*file/out.txt"):
        atomic_write_text(blocker / "out.txt", "x")


def test_programming_errors_keep_their_traceback(tmp_path):
    def broken(tmp):
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        atomic_write(tmp_path / "x", broken)
    assert list(tmp_path.iterdir()) == []
