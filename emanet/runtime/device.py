"""Where a model runs: the device a name means (and whether it can run a precision), the cores a
process may use, the wrapped module (DDP, ``torch.compile``) unwrapped, compilation that says
that it compiles, and what an out-of-memory error looks like on each device.

``"cuda"`` without an index means *this process's* GPU: under ``torchrun`` the one of its
``LOCAL_RANK``, otherwise the current CUDA device. ``torch.cuda.set_device("cuda")`` refuses a
device without an index, so every place that takes a ``--device`` resolves it here first.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from .backends import ALL_PRECISIONS, DEFAULT_BACKEND, check_backend
from .precision import DEFAULT_PRECISION, PRECISIONS, check_precision

__all__ = [
    "add_runtime_arguments",
    "announce_compilation",
    "check_runtime",
    "compile_module",
    "is_out_of_memory",
    "resolve_device",
    "unwrap",
    "usable_cpus",
]

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The :class:`torch.device` that ``device`` names, with a CUDA index filled in.

    Args:
        device: ``None`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` (this process's
            GPU: ``LOCAL_RANK``'s under torchrun, else the current one), ``"cuda:N"``, or any
            other device type torch knows (``"mps"``, ...), passed through.

    Raises:
        ValueError: the name is not a device, or it names a GPU that this machine lacks (the
            message says what is available).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} asks for CUDA, but this PyTorch ({torch.__version__}) sees "
            "no CUDA GPU; use --device cpu"
        )
    count = torch.cuda.device_count()
    index = dev.index
    if index is None:
        local_rank = os.environ.get("LOCAL_RANK")
        index = int(local_rank) if local_rank is not None else torch.cuda.current_device()
    if not 0 <= index < count:
        raise ValueError(
            f"device {str(device)!r} means cuda:{index}, but this machine has {count} CUDA "
            f"device(s) (cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def usable_cpus() -> int:
    """CPU cores this process may use: its affinity mask (what ``taskset``, cgroups and SLURM
    leave it) shared among the processes torchrun started on this machine, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, cores // max(1, per_node))


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside ``DataParallel``/``DistributedDataParallel`` and ``torch.compile``
    wrappers (any nesting), e.g. to save or inspect it; other modules are returned as they are."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod  # torch.compile's OptimizedModule
        else:
            return module


def compile_module(module: nn.Module) -> nn.Module:
    """Compile ``module`` in place with ``torch.compile``: its ``__call__``, so every method that
    calls ``self(...)`` (``inference``, slide windows) runs compiled. Compilation itself happens
    lazily, on the first call of each input shape; call :func:`announce_compilation` then.
    Returns ``module``."""
    module.compile()
    return module


def announce_compilation(what: str) -> None:
    """Log, once per first use, that ``what`` is being compiled (so a slow call is explained)."""
    log.info(
        "compiling %s with torch.compile: the first call (and each new input size) takes a while",
        what,
    )


def add_runtime_arguments(parser, compile: bool = True) -> None:
    """Where and how a model runs: ``--device``, ``--precision`` (and ``--compile``), the same
    options for every command that runs a model (``emanet predict/eval``, ``python -m app``)."""
    parser.add_argument(
        "--device", help="cpu, cuda (this process's GPU) or cuda:N (default: cuda if available)"
    )
    parser.add_argument(
        "--precision",
        choices=ALL_PRECISIONS,
        default=DEFAULT_PRECISION,
        help=f"autocast precision (default: {DEFAULT_PRECISION}, the reference numerics); int8 "
        "runs on the onnxruntime backend",
    )
    if compile:
        parser.add_argument(
            "--compile",
            action="store_true",
            help="torch.compile the model (the first image compiles)",
        )


def check_runtime(
    device: str | None, precision: str | None, backend: str | None = None
) -> tuple[torch.device, str | None]:
    """The device ``device`` names and ``precision``, checked: raises ``ValueError`` saying why
    this machine cannot run them (the one check behind every command's ``--device``,
    ``--precision`` and ``--backend``). With ``backend="onnxruntime"`` the default device is the
    CPU."""
    backend = backend or DEFAULT_BACKEND
    if backend == "onnxruntime" and device is None:
        device = "cpu"
    resolved = resolve_device(device)
    if precision is not None:
        check_backend(backend, resolved, precision)
        if precision in PRECISIONS:
            check_precision(precision, resolved)
    return resolved, precision


# What the CPU allocator says when it cannot allocate (CUDA raises torch.OutOfMemoryError).
_CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator: not enough memory", "can't allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means that a device ran out of memory: CUDA's ``OutOfMemoryError``,
    the CPU allocator's ``RuntimeError`` or Python's ``MemoryError``."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _CPU_OUT_OF_MEMORY)
