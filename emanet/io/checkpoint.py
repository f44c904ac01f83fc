"""Checkpoints: find them (path, URL or model-zoo name), read them safely, load them strictly.

Three layouts are read, all through ``torch.load(..., weights_only=True)`` only, so a checkpoint
can never run code while it is being read:

* ``"emanet"``: this project's own files, written by :func:`save_checkpoint`::

      {"format": "emanet", "version": 1, "preset": str, "classes": [str, ...],
       "palette": [(r, g, b), ...], "meta": {...}, "state_dict": {name: tensor}}

* ``"mmseg"``: mmsegmentation / mmcv files, ``{"meta": {...}, "state_dict": {...}}``, maybe with
  an ``"optimizer"`` entry (ignored). Our modules are named like mmsegmentation's, so the keys
  (``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``) load without renaming.
* ``"plain"``: a bare state dict ``{name: tensor}``.

A ``module.`` prefix that DistributedDataParallel puts on every key is removed in all three.
"""

from __future__ import annotations

import http.client
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse

import torch
import torch.hub
from torch import nn

from emanet.models.presets import PRESETS, SMALL_PRESET
from emanet.runtime.device import unwrap

from .atomic import atomic_save

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

#: mmsegmentation config name -> URL of its official Cityscapes checkpoint (mmseg model card).
MODEL_ZOO: dict[str, str] = {p.name: p.url for p in PRESETS.values() if p.url}

#: Weights shipped inside the package (``emanet/weights/<name>.pth``) resolve by bare name too.
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"

#: The bundled small model: what ``Segmenter.from_pretrained()`` and the app load by default.
BUNDLED_CHECKPOINT = BUNDLED_DIR / f"{SMALL_PRESET.name}.pth"

FORMAT_VERSION = 1

# torch.hub's convention: "<name>-<first hex digits of the sha256>.pth". Anchored at the end so
# that hyphens elsewhere in a name ("r50-d8") are not mistaken for a hash.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")
_URL_SCHEMES = ("http", "https", "file")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # legacy (pre-1.6) torch.save files start with a pickle PROTO opcode
_MAX_LISTED = 10  # keys shown per category in a mismatch report


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, downloaded, read safely, or matched to the model."""


# --------------------------------------------------------------------------------------------
# Finding a checkpoint
# --------------------------------------------------------------------------------------------


def resolve_checkpoint(
    source: str | os.PathLike[str],
    *,
    progress: bool = True,
    model_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Turn ``source`` into the path of a local checkpoint file, downloading it if needed.

    ``source`` may be

    * a local path (``str`` or ``os.PathLike``);
    * an ``http://``, ``https://`` or ``file://`` URL: the file is downloaded once into
      ``model_dir`` (default: ``torch.hub.get_dir()/checkpoints``, shared with torch.hub) and
      reused afterwards. The cache is keyed by the URL's file name, as in torch.hub. When that
      name ends in ``-<hex>.pth`` the hex digits must prefix the file's sha256, otherwise the
      download is rejected and nothing is cached;
    * a model-zoo name (a key of :data:`MODEL_ZOO`), which stands for its official URL;
    * the name of a checkpoint bundled with the package (``emanet/weights/<name>.pth``).

    Zoo and bundled names win over a file of the same name in the working directory: a name
    means the same weights everywhere.

    Raises:
        CheckpointError: the source is none of the above, or the download failed (offline,
            unreachable host, HTTP error, hash mismatch); the message says how to fetch the
            file by hand.
    """
    if isinstance(source, os.PathLike):
        return _existing_file(Path(source))
    if not isinstance(source, str):
        raise TypeError(f"checkpoint source must be a str or path, not {type(source).__name__}")
    if urlparse(source).scheme in _URL_SCHEMES:
        return _download(source, progress=progress, model_dir=model_dir)
    if source in MODEL_ZOO:
        return _download(MODEL_ZOO[source], progress=progress, model_dir=model_dir)
    bundled = BUNDLED_DIR / f"{source}.pth"
    if Path(source).name == source and bundled.is_file():
        return bundled
    path = Path(source).expanduser()
    if path.exists():
        return _existing_file(path)
    names = sorted([*MODEL_ZOO, *_bundled_names()])
    raise CheckpointError(
        f"Checkpoint {source!r} is not an existing file, an http(s)/file URL, or a known name. "
        f"Known names: {', '.join(names)}."
    )


def _bundled_names() -> list[str]:
    return [p.stem for p in BUNDLED_DIR.glob("*.pth")] if BUNDLED_DIR.is_dir() else []


def _existing_file(path: Path) -> Path:
    path = path.expanduser()
    if not path.exists():
        raise CheckpointError(f"Checkpoint file {str(path)!r} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint path {str(path)!r} is not a file.")
    return path


def _download(url: str, *, progress: bool, model_dir: str | os.PathLike[str] | None) -> Path:
    """Download ``url`` into the cache directory unless it is already there."""
    file_name = unquote(os.path.basename(urlparse(url).path))
    if not file_name:
        raise CheckpointError(f"Cannot tell a file name from the checkpoint URL {url!r}.")
    cache_dir = Path(model_dir) if model_dir is not None else _default_cache_dir()
    dst = cache_dir / file_name
    if dst.is_file():
        log.debug("Using cached checkpoint %s", dst)
        return dst

    match = _HASH_IN_NAME.search(file_name)
    hash_prefix = match.group(1) if match else None
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("Downloading %s to %s", url, dst)
    try:
        # Writes to a unique ".partial" file and moves it into place only after the whole file
        # arrived and matched hash_prefix; on any failure the partial file is removed, so the
        # cache never holds a broken checkpoint.
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=progress)
    except RuntimeError as err:  # torch.hub raises RuntimeError only for a hash mismatch
        raise CheckpointError(
            f"The file downloaded from {url} failed its sha256 check ({err}). The download was "
            "corrupted or the file on the server changed; nothing was cached. Try again, or "
            "download the file by hand, check it, and pass its local path."
        ) from err
    except HTTPError as err:
        raise CheckpointError(
            f"Could not download the checkpoint {url}: the server answered HTTP {err.code} "
            f"{err.reason}. {_by_hand(url, cache_dir)}"
        ) from err
    except (URLError, OSError, http.client.HTTPException, ValueError) as err:
        # URLError: connection refused, DNS failure (offline); OSError and HTTPException:
        # timeouts, resets and short reads mid-transfer; ValueError: a malformed URL.
        reason = getattr(err, "reason", None) or err
        raise CheckpointError(
            f"Could not download the checkpoint {url} ({reason}). This machine may be offline "
            f"or unable to reach the host. {_by_hand(url, cache_dir)}"
        ) from err
    return dst


def _by_hand(url: str, cache_dir: Path) -> str:
    return (
        f"Download the file by hand on a machine that can reach it (for example "
        f"`curl -L -O {url}`), copy it here and pass its local path instead, or put it in "
        f"{cache_dir} under the same file name to have it found as the cached copy."
    )


def _default_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


# --------------------------------------------------------------------------------------------
# Reading a checkpoint
# --------------------------------------------------------------------------------------------


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

    def load_into(self, model: nn.Module, *, strict: bool = True) -> None:
        """Copy the weights into ``model`` (see :func:`load_checkpoint` for ``strict``)."""
        model = unwrap(model)
        state_dict = self.state_dict
        expected = model.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        misshaped = [
            (k, tuple(v.shape), tuple(expected[k].shape))
            for k, v in state_dict.items()
            if k in expected and v.shape != expected[k].shape
        ]
        if missing or unexpected or misshaped:
            report = _mismatch_report(str(self.path), missing, unexpected, misshaped, len(expected))
            if strict:
                raise CheckpointError(
                    report + "\nPass strict=False to load only the keys that match."
                )
            log.warning(
                "%s\nLoading the %s matching keys only.",
                report,
                _n_matching(expected, state_dict, misshaped),
            )
            skip = {k for k, _, _ in misshaped}
            state_dict = {k: v for k, v in state_dict.items() if k in expected and k not in skip}
            model.load_state_dict(state_dict, strict=False)
        else:
            model.load_state_dict(state_dict, strict=True)
        log.info("Loaded %s checkpoint %s", self.format, self.path)


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file safely (``weights_only=True``) and recognise its layout.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupt, not a PyTorch
            checkpoint, would need arbitrary code to unpickle, or has an unknown layout.
    """
    path = Path(path).expanduser()
    obj = _safe_torch_load(path)
    name = str(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"Checkpoint {name!r} holds a {type(obj).__name__}, not a dict of weights."
        )

    preset = classes = palette = None
    if obj.get("format") == "emanet":
        version = obj.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"Checkpoint {name!r} has emanet format version {version!r}; this code reads "
                f"versions up to {FORMAT_VERSION}. Update the emanet package."
            )
        fmt = "emanet"
        state_dict = obj.get("state_dict")
        meta = _as_meta(obj.get("meta"))
        preset, classes, palette = obj.get("preset"), obj.get("classes"), obj.get("palette")
    elif isinstance(obj.get("state_dict"), Mapping):
        fmt = "mmseg"
        state_dict = obj["state_dict"]
        meta = _as_meta(obj.get("meta"))
        # mmseg 0.x keeps CLASSES/PALETTE at the top of meta, mmseg 1.x under dataset_meta.
        dataset_meta = _as_meta(meta.get("dataset_meta"))
        classes = meta.get("CLASSES", dataset_meta.get("classes"))
        palette = meta.get("PALETTE", dataset_meta.get("palette"))
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        fmt = "plain"
        state_dict = obj
        meta = {}
    else:
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(
            f"Checkpoint {name!r} has an unrecognised layout (top-level keys: {keys or 'none'}). "
            "Expected an emanet checkpoint, an mmsegmentation checkpoint with 'state_dict', or "
            "a bare state dict of tensors."
        )

    classes, palette = _as_classes(classes, name), _as_palette(palette, name)
    if classes is not None and palette is not None and len(classes) != len(palette):
        log.warning(
            "Ignoring the palette of %s: %d colours for %d classes",
            name,
            len(palette),
            len(classes),
        )
        palette = None
    return Checkpoint(
        path=path,
        format=fmt,
        state_dict=_clean_state_dict(state_dict, name),
        meta=meta,
        preset=preset if isinstance(preset, str) and preset else None,
        classes=classes,
        palette=palette,
    )


def _as_meta(meta: Any) -> dict[str, Any]:
    return dict(meta) if isinstance(meta, Mapping) else {}


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
            f"Checkpoint {name!r} has non-tensor state dict entries: {_listing(bad)}"
        )
    # Only when every key has it: a model may legitimately own a submodule called "module".
    if all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


# --------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------


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


def _n_matching(expected: Mapping, state_dict: Mapping, misshaped: list) -> int:
    return sum(k in expected for k in state_dict) - len(misshaped)


def _mismatch_report(
    name: str,
    missing: list[str],
    unexpected: list[str],
    misshaped: list[tuple[str, tuple, tuple]],
    n_model_keys: int,
) -> str:
    lines = [
        f"Checkpoint {name!r} does not match the model: {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(misshaped)} wrongly shaped keys "
        f"(the model has {n_model_keys} keys)."
    ]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if misshaped:
        lines.append(f"  wrongly shaped keys ({len(misshaped)}), checkpoint shape vs model shape:")
        for key, got, want in misshaped[:_MAX_LISTED]:
            lines.append(f"    {key}: {got} vs {want}")
        if len(misshaped) > _MAX_LISTED:
            lines.append(f"    ... and {len(misshaped) - _MAX_LISTED} more")
    if len(missing) == n_model_keys:
        lines.append(
            "  No key matches at all: the checkpoint is for another architecture or uses "
            "other module names."
        )
    return "\n".join(lines)


def _listing(keys: list) -> str:
    shown = ", ".join(str(k) for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------------------------
# Writing checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike[str],
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    *,
    preset: str,
    classes: list[str],
    palette: list[tuple[int, int, int]],
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
        meta: extra metadata; plain Python values (str, int, float, bool, None, lists, tuples,
            dicts with str keys) or tensors only, so that ``weights_only`` loading can read it.
        half: store floating-point tensors as float16 (half the size). A tensor that float16
            cannot represent (it would overflow to inf) keeps its dtype and a warning is logged.
    """
    if isinstance(model_or_state_dict, nn.Module):
        state_dict = unwrap(model_or_state_dict).state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state_dict = model_or_state_dict
    else:
        raise TypeError(
            f"expected an nn.Module or a state dict, not {type(model_or_state_dict).__name__}"
        )
    if not isinstance(preset, str) or not preset:
        raise ValueError("preset must be a non-empty string")
    classes = [str(c) for c in classes]
    palette = [_rgb(color) for color in palette]
    if len(palette) != len(classes):
        raise ValueError(f"{len(classes)} classes but {len(palette)} palette colours")
    meta = dict(meta or {})
    _check_plain(meta, "meta")

    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not torch.is_tensor(value):
            raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = _to_storable(key, value.detach().cpu(), half)

    return atomic_save(
        {
            "format": "emanet",
            "version": FORMAT_VERSION,
            "preset": preset,
            "classes": classes,
            "palette": palette,
            "meta": meta,
            "state_dict": tensors,
        },
        path,
    )


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
