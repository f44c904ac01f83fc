"""Where and how a model runs: devices, precision (autocast), ``torch.compile``, wrappers, and
the errors a person can fix.

The bottom layer: imports nothing else of emanet. ``device`` resolves ``--device`` names, checks
that a device can run a precision, unwraps DDP / compiled modules and recognises out-of-memory
errors; ``precision`` turns ``"fp32" | "bf16" | "fp16"`` into an autocast context; ``errors``
holds :class:`UserError`, the base of every error the ``emanet`` command reports in one line.
"""

from .device import check_runtime, is_out_of_memory, resolve_device, unwrap
from .errors import OutOfMemory, UserError
from .precision import DEFAULT_PRECISION, PRECISIONS, autocast, autocast_off

__all__ = [
    "DEFAULT_PRECISION",
    "OutOfMemory",
    "UserError",
    "PRECISIONS",
    "autocast",
    "autocast_off",
    "check_runtime",
    "is_out_of_memory",
    "resolve_device",
    "unwrap",
]
