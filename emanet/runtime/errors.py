"""Errors a person can fix: a wrong option, a file that is not what it should be, a full disk,
a batch too large for the device. Each says what happened, what is intact and what to do, in one
line; the ``emanet`` command prints that line and exits with status 2. Any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["OutOfMemory", "UserError"]


class UserError(Exception):
    """Base of the errors a person can fix (see the module docstring)."""


class OutOfMemory(UserError, MemoryError):
    """A device ran out of memory; the message names what was running and how to make it fit."""
