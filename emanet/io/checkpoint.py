"""Checkpoints: read them safely, load them strictly, write our own.

Three layouts are read, all through ``torch.load(..., weights_only=True)`` only, so a checkpoint
can never run code while it is being read:

* ``"emanet"``: this project's own files, written by :func:`save_checkpoint`::

      {"format": "emanet", "version": 1, "preset": str, "classes": [str, ...],
       "palette": [(r, g, b), ...], "test_scale": (long, short), "meta": {...},
       "state_dict": {name: tensor}}

  ``test_scale`` is the scale the weights were validated at: the test pipeline travels with
  the weights (files without it use their preset's).
* ``"mmseg"``: mmsegmentation / mmcv files, ``{"meta": {...}, "state_dict": {...}}``, maybe with
  an ``"optimizer"`` entry (ignored). Our modules are named like mmsegmentation's, so the keys
  (``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``) load without renaming.
* ``"plain"``: a bare state dict ``{name: tensor}``.

A ``module.`` prefix that DistributedDataParallel puts on every key is removed in all three.
Where a file comes from (a path, a URL, a zoo name) is :mod:`emanet.io.hub`'s business.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emanet.runtime.device import unwrap

from .atomic import atomic_save
from .hub import BUNDLED_CHECKPOINT, MODEL_ZOO, CheckpointError, resolve_checkpoint
from .keys import KeyReport, listing

__all__ = [
    "BUNDLED_CHECKPOINT",
    "MODEL_ZOO",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: The weights of the two classifiers (one output per class): what changes with the class set.
CLASSIFIER_KEYS = (
    "decode_head.conv_seg.weight",
    "decode_head.conv_seg.bias",
    "auxiliary_head.conv_seg.weight",
    "auxiliary_head.conv_seg.bias",
)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # legacy (pre-1.6) torch.save files start with a pickle PROTO opcode


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file as :func:`read_checkpoint` recognised it.

    Attributes:
        path: the file that was read.
        format: ``"emanet"``, ``"mmseg"`` or ``"plain"``.
        state_dict: ``{name: tensor}`` on the CPU, a DDP ``module.`` prefix removed.
        meta: the metadata stored in the file, as stored (``{}`` if none).
        preset: the preset the weights belong to (our format only), else ``None``.
        classes: class names in output-channel order, ``None`` when the file has none. For
            mmsegmentation files they come from ``meta["CLASSES"]`` (mmseg 0.x) or
            ``meta["dataset_meta"]["classes"]`` (1.x).
        palette: one ``(r, g, b)`` triple of 0-255 ints per class, ``None`` when the file has
            none. Found like ``classes``.
        test_scale: ``(long, short)`` the weights were validated at (our format), else ``None``.

    Malformed class names or palettes (not strings; not triples of 0-255 ints; a palette whose
    length differs from the class names') are ignored with a logged warning when the file is
    read, so no caller ever sees them.
    """

    path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    preset: str | None = None
    classes: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    test_scale: tuple[int, int] | None = None

    @property
    def num_classes(self) -> int | None:
        """The classes the weights predict: the rows of the decode head's classifier
        (``decode_head.conv_seg.weight``), else the number of class names, else ``None``."""
        classifier = self.state_dict.get(CLASSIFIER_KEYS[0])
        if classifier is not None and classifier.ndim >= 1:
            return int(classifier.shape[0])
        return len(self.classes) if self.classes else None

    def load_into(self, model: nn.Module, *, strict: bool = True) -> KeyReport:
        """Copy the weights into ``model`` (see :func:`load_checkpoint` for ``strict``); returns
        how the keys matched."""
        model = unwrap(model)
        report = KeyReport.compare(self.state_dict, model.state_dict())
        if not report.exact:
            if strict:
                raise CheckpointError(
                    report.describe(str(self.path))
                    + "\nPass strict=False to load only the keys that match."
                )
            log.warning(
                "%s\nLoading the %s matching keys only.",
                report.describe(str(self.path)),
                len(report.loaded),
            )
        model.load_state_dict({k: self.state_dict[k] for k in report.loaded}, strict=report.exact)
        log.info("Loaded %s checkpoint %s", self.format, self.path)
        return report


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file safely (``weights_only=True``) and recognise its layout.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupt, not a PyTorch
            checkpoint, would need arbitrary code to unpickle, or has an unknown layout.
    """
    path = Path(path).expanduser()
    name = str(path)
    obj = _safe_torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"Checkpoint {name!r} holds a {type(obj).__name__}, not a dict of weights."
        )
    fields = _recognise(obj, name)
    classes = _as_classes(fields.pop("classes"), name)
    palette = _as_palette(fields.pop("palette"), name)
    if classes is not None and palette is not None and len(classes) != len(palette):
        log.warning(
            "Ignoring the palette of %s: %d colours for %d classes",
            name,
            len(palette),
            len(classes),
        )
        palette = None
    state_dict = _clean_state_dict(fields.pop("state_dict"), name)
    return Checkpoint(path, state_dict=state_dict, classes=classes, palette=palette, **fields)


def _recognise(obj: Mapping, name: str) -> dict[str, Any]:
    """The layout of a loaded file: its format, state dict, meta, preset, classes, palette and
    test scale, as stored."""
    if obj.get("format") == "emanet":
        version = obj.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"Checkpoint {name!r} has emanet format version {version!r}; this code reads "
                f"versions up to {FORMAT_VERSION}. Update the emanet package."
            )
        preset = obj.get("preset")
        return {
            "format": "emanet",
            "state_dict": obj.get("state_dict"),
            "meta": _as_meta(obj.get("meta")),
            "preset": preset if isinstance(preset, str) and preset else None,
            "classes": obj.get("classes"),
            "palette": obj.get("palette"),
            "test_scale": _as_scale(obj.get("test_scale"), name),
        }
    if isinstance(obj.get("state_dict"), Mapping):
        meta = _as_meta(obj.get("meta"))
        # mmseg 0.x keeps CLASSES/PALETTE at the top of meta, mmseg 1.x under dataset_meta.
        dataset_meta = _as_meta(meta.get("dataset_meta"))
        return {
            "format": "mmseg",
            "state_dict": obj["state_dict"],
            "meta": meta,
            "classes": meta.get("CLASSES", dataset_meta.get("classes")),
            "palette": meta.get("PALETTE", dataset_meta.get("palette")),
        }
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": "plain", "state_dict": obj, "meta": {}, "classes": None, "palette": None}
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise CheckpointError(
        f"Checkpoint {name!r} has an unrecognised layout (top-level keys: {keys or 'none'}). "
        "Expected an emanet checkpoint, an mmsegmentation checkpoint with 'state_dict', or "
        "a bare state dict of tensors."
    )


def _as_meta(meta: Any) -> dict[str, Any]:
    return dict(meta) if isinstance(meta, Mapping) else {}


def _as_scale(scale: Any, name: str) -> tuple[int, int] | None:
    if scale is None:
        return None
    try:
        return _check_scale(scale)
    except (TypeError, ValueError) as error:
        log.warning("Ignoring the test scale of %s: %s", name, error)
        return None


def _check_scale(scale: Any) -> tuple[int, int]:
    """``(long, short)`` as two positive ints, or a ValueError saying what is wrong."""
    if isinstance(scale, (str, bytes)) or len(scale) != 2:
        raise ValueError(f"test scale {scale!r} is not (long, short)")
    values = tuple(int(v) for v in scale)
    if min(values) < 1:
        raise ValueError(f"test scale {scale!r} has a side below 1")
    return values  # type: ignore[return-value]


def _as_classes(classes: Any, name: str) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        return tuple(classes)
    log.warning("Ignoring malformed class names in %s: %.200r", name, classes)
    return None


def _as_palette(palette: Any, name: str) -> tuple[tuple[int, int, int], ...] | None:
    if palette is None:
        return None
    try:
        if isinstance(palette, (str, bytes)):
            raise ValueError(f"{palette!r} is not a list of colours")
        return tuple(_rgb(color) for color in palette)
    except (TypeError, ValueError) as error:
        log.warning("Ignoring malformed palette in %s: %s", name, error)
        return None


def _safe_torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``, turning every failure into CheckpointError."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint file {name!r} does not exist.") from None
    except OSError as err:
        raise CheckpointError(f"Cannot open checkpoint {name!r}: {err}") from err
    if not head:
        raise CheckpointError(f"Checkpoint {name!r} is an empty file (0 bytes).")
    # Sniff the magic bytes first: it turns "Unsupported operand 80" or "KeyError: '101'" for a
    # PNG or a text file into a message a person can act on.
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO)):
        raise CheckpointError(
            f"Checkpoint {name!r} is not a PyTorch checkpoint (it starts with {head!r}, "
            "neither a torch.save zip archive nor a legacy pickle)."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        if found or "global" in message.lower():
            what = found.group(1) if found else "a Python object"
            raise CheckpointError(
                f"Refusing to load checkpoint {name!r}: it contains {what}, which only a full "
                "pickle load (weights_only=False) can rebuild, and that would execute arbitrary "
                "code from the file. Such files are unsafe and are never loaded here; if you "
                "trust the file, re-save its tensors (a state dict) in a trusted environment."
            ) from None
        raise CheckpointError(
            f"Checkpoint {name!r} is corrupt or not a PyTorch checkpoint (the weights_only "
            f"unpickler failed: {_last_line(message)})."
        ) from None
    except Exception as err:
        # Damaged archives surface as RuntimeError, EOFError, IndexError, KeyError, ... from
        # the zip reader or the unpickler; any of them means the same thing to the user.
        raise CheckpointError(
            f"Checkpoint {name!r} is truncated or corrupt: {type(err).__name__}: "
            f"{_last_line(str(err)) or 'unreadable'}"
        ) from err


def _last_line(message: str) -> str:
    """torch's error texts are long; the specific reason is in their last informative line."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    specific = [ln for ln in lines if not ln.startswith(("Check the documentation", "Weights"))]
    return (specific or lines or [""])[-1][:300]


def _clean_state_dict(state_dict: Any, name: str) -> dict[str, torch.Tensor]:
    """Check that the state dict maps names to tensors and drop a DDP ``module.`` prefix."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(f"Checkpoint {name!r} has no state dict (or an empty one).")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"Checkpoint {name!r} has non-tensor state dict entries: {listing(bad)}"
        )
    # Only when every key has it: a model may legitimately own a submodule called "module".
    if all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike[str],
    *,
    strict: bool = True,
    progress: bool = True,
) -> Checkpoint:
    """Load a checkpoint (path, URL or zoo name) into ``model`` and return what was read.

    With ``strict=True`` every key must match by name and shape, otherwise a CheckpointError
    lists the missing, unexpected and wrongly shaped keys and nothing is loaded. With
    ``strict=False`` the matching keys are loaded, the rest are skipped and reported in a
    logged warning (useful to fine-tune onto a different number of classes).

    Tensors are cast to the dtype and device of the model's own tensors, so a ``half=True``
    checkpoint loads into a float32 model. ``num_batches_tracked`` is an ordinary key.
    """
    checkpoint = read_checkpoint(resolve_checkpoint(source, progress=progress))
    checkpoint.load_into(model, strict=strict)
    return checkpoint


def save_checkpoint(
    path: str | os.PathLike[str],
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    *,
    preset: str,
    classes: list[str],
    palette: list[tuple[int, int, int]],
    test_scale: Sequence[int] | None = None,
    meta: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write an emanet-format checkpoint atomically (see the module docstring for the layout).

    Args:
        path: destination file.
        model_or_state_dict: the model (its ``state_dict()`` is saved) or a state dict.
        preset: name of the model preset the weights belong to.
        classes: class names, in the order of the model's output channels.
        palette: one ``(r, g, b)`` colour per class.
        test_scale: ``(long, short)`` the weights were validated at (default: the preset's,
            which is then what readers use).
        meta: extra metadata; plain Python values (str, int, float, bool, None, lists, tuples,
            dicts with str keys) or tensors only, so that ``weights_only`` loading can read it.
        half: store floating-point tensors as float16 (half the size). A tensor that float16
            cannot represent (it would overflow to inf) keeps its dtype and a warning is logged.
    """
    if not isinstance(preset, str) or not preset:
        raise ValueError("preset must be a non-empty string")
    classes = [str(c) for c in classes]
    palette = [_rgb(color) for color in palette]
    if len(palette) != len(classes):
        raise ValueError(f"{len(classes)} classes but {len(palette)} palette colours")
    meta = dict(meta or {})
    _check_plain(meta, "meta")
    tensors = {
        key: _to_storable(key, value.detach().cpu(), half)
        for key, value in _tensors(model_or_state_dict).items()
    }
    return atomic_save(
        {
            "format": "emanet",
            "version": FORMAT_VERSION,
            "preset": preset,
            "classes": classes,
            "palette": palette,
            **({} if test_scale is None else {"test_scale": _check_scale(test_scale)}),
            "meta": meta,
            "state_dict": tensors,
        },
        path,
    )


def _tensors(model_or_state_dict) -> Mapping[str, torch.Tensor]:
    """The state dict of a model (unwrapped) or a given state dict, checked to hold tensors."""
    if isinstance(model_or_state_dict, nn.Module):
        return unwrap(model_or_state_dict).state_dict()
    if not isinstance(model_or_state_dict, Mapping):
        raise TypeError(
            f"expected an nn.Module or a state dict, not {type(model_or_state_dict).__name__}"
        )
    for key, value in model_or_state_dict.items():
        if not torch.is_tensor(value):
            raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
    return model_or_state_dict


def _to_storable(key: str, tensor: torch.Tensor, half: bool) -> torch.Tensor:
    if not half or not tensor.is_floating_point() or tensor.dtype == torch.float16:
        return tensor
    converted = tensor.to(torch.float16)
    if bool((torch.isinf(converted) & torch.isfinite(tensor)).any()):
        log.warning("%s does not fit in float16; stored as %s", key, tensor.dtype)
        return tensor
    return converted


def _rgb(color: Any) -> tuple[int, int, int]:
    rgb = tuple(int(v) for v in color)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"palette colour {color!r} is not an (r, g, b) triple of 0-255 ints")
    return rgb  # type: ignore[return-value]


def _check_plain(value: Any, where: str) -> None:
    """Refuse metadata that ``weights_only`` loading could not read back."""
    if value is None or isinstance(value, (str, bytes, bool, int, float, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoint metadata may hold only str, int, "
        "float, bool, None, lists, tuples, dicts and tensors (weights_only loading reads "
        "nothing else)"
    )
