"""Where checkpoints come from: a local path, an http(s)/file URL, a model-zoo name or the
name of the weights bundled with the package. URLs are downloaded once into torch.hub's cache,
with the sha256 prefix in their file name checked; offline, the error says which file to fetch
and where to put it.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse

import torch
import torch.hub

from emanet.models.presets import PRESETS, SMALL_PRESET
from emanet.runtime.errors import UserError

__all__ = [
    "BUNDLED_CHECKPOINT",
    "BUNDLED_DIR",
    "MODEL_ZOO",
    "CheckpointError",
    "resolve_checkpoint",
]

log = logging.getLogger(__name__)

#: mmsegmentation config name -> URL of its official Cityscapes checkpoint (mmseg model card).
MODEL_ZOO: dict[str, str] = {p.name: p.url for p in PRESETS.values() if p.url}

#: Weights shipped inside the package (``emanet/weights/<name>.pth``) resolve by bare name too.
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"

#: The bundled small model: what ``Segmenter.from_pretrained()`` and the app load by default.
BUNDLED_CHECKPOINT = BUNDLED_DIR / f"{SMALL_PRESET.name}.pth"

# torch.hub's convention: "<name>-<first hex digits of the sha256>.pth". Anchored at the end so
# that hyphens elsewhere in a name ("r50-d8") are not mistaken for a hash.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")
_URL_SCHEMES = ("http", "https", "file")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be found, downloaded, read safely, or matched to the model."""


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
