"""The app's example images: toy-city scenes (the bundled model's domain) and real photographs.

Every example is a PNG file in a folder (Gradio serves examples as files), written once and
reused: the toy-city scenes are drawn by the package's own renderer from a fixed seed, the
photographs come from scikit-image's data module (no download). Each comes with a caption that
names its source.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from emanet.data.toycity import render_scene
from emanet.io.images import write_png

__all__ = ["example_images", "photo_examples", "toycity_examples", "toycity_val_examples"]

log = logging.getLogger(__name__)

#: The seed of the example scenes. The bundled model was trained and validated on seed 0
#: (``emanet toycity --seed 0``) and ``benchmarks/bench_attention.py`` measures seed 7; these
#: scenes come from neither, and from split index 9, which :func:`generate_toycity` never uses.
TOYCITY_SEED = 2019
#: ``(H, W)`` of the example scenes: the bundled model's training images.
TOYCITY_SIZE = (256, 512)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _save_once(path: Path, draw) -> None:
    """Write ``draw()`` (an ``(H, W, 3)`` uint8 array) to ``path`` as PNG unless it exists
    (atomically: two app processes may share the folder)."""
    if not path.exists():
        write_png(path, draw())


def toycity_examples(folder: Path, count: int = 3) -> list[tuple[str, str]]:
    """``count`` synthetic street scenes of seed :data:`TOYCITY_SEED`, saved as PNG (~80 ms
    each the first time): ``[(path, caption)]``."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = TOYCITY_SIZE
    out = []
    for index in range(count):
        path = folder / f"toycity_seed{TOYCITY_SEED}_{height}x{width}_{index}.png"

        def draw(index=index):
            rng = np.random.default_rng([TOYCITY_SEED, 9, index])
            return render_scene(height, width, rng)[0]

        _save_once(path, draw)
        caption = f"synthetic toy city (unseen seed {TOYCITY_SEED}), scene {index + 1}"
        out.append((str(path), caption))
    return out


def photo_examples(folder: Path) -> list[tuple[str, str]]:
    """Real photographs that ship inside scikit-image, saved as PNG: ``[(path, caption)]``
    (none if scikit-image is not installed)."""
    try:
        from skimage import data
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PHOTOS:
        path = folder / f"skimage_{name}.png"
        try:
            _save_once(path, getattr(data, name))
        except Exception as error:  # a missing sample must not stop the app
            log.warning("scikit-image sample %s unavailable: %s", name, error)
            continue
        out.append((str(path), f"photo: scikit-image data module, {name}"))
    return out


def toycity_val_examples(root: str | None, count: int = 3) -> list[tuple[str, str]]:
    """A few validation images of a generated toy city in Cityscapes layout, if there is one."""
    if not root or not Path(root).is_dir():
        return []
    images = sorted(Path(root).glob("leftImg8bit/val/*/*_leftImg8bit.png"))[:count]
    return [(str(p), f"synthetic toy city (val): {p.name}") for p in images]


def example_images(folder: Path, toycity_root: str | None = None) -> list[tuple[str, str]]:
    """All examples, the model's domain first: toy-city scenes of an unseen seed, the val
    images of ``toycity_root`` (if given), then photographs."""
    return [
        *toycity_examples(folder),
        *toycity_val_examples(toycity_root),
        *photo_examples(folder),
    ]
