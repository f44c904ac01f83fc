"""What the commands (``emanet``, ``python -m emanet.training``, the app) print: log records
of every ``emanet.*`` logger, one line each, at INFO (DEBUG with ``verbose``)."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(verbose: bool = False) -> None:
    """The command-line log format, set once for the process."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
