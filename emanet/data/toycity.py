"""A synthetic city: procedurally drawn street scenes in Cityscapes' exact layout and encoding.

**The data is synthetic.** Cityscapes itself cannot be downloaded without an account, so the
tests, the tutorials and the bundled small model use these scenes instead. They are written
exactly as Cityscapes is (``leftImg8bit/``, ``gtFine/`` with ``_labelIds``, ``_instanceIds`` and
``_color`` PNGs, ``{city}_{seq:06d}_{frame:06d}`` names), so every line of code that reads them
also reads the real dataset, and ``torchvision.datasets.Cityscapes`` reads them too.

Each scene has a horizon and a vanishing point; a road in perspective with lane markings,
sidewalks and grass verges, facades with windows, walls and fences, trees, poles carrying
traffic lights and signs, and vehicles, riders and pedestrians scaled by their distance and
drawn back to front, so nearer objects occlude farther ones. Every class has its own colour
distribution and texture (deliberately *not* the Cityscapes palette), lighting varies per
scene, and some pixels carry ignored labels (ego vehicle, out of roi, static, ground, parking),
so a model must learn shapes, context and colours rather than a lookup table.

Labels are labelIds (0-33), as in ``_gtFine_labelIds.png``; ``_gtFine_instanceIds.png`` holds
``labelId * 1000 + k`` on pixels of the k-th instance of a class with instances, else the
labelId. The same seed writes the same bytes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from emanet.io.images import write_png

from .cityscapes import CLASSES, LABELS, label_ids_to_train_ids, palette_lut
from .folder import write_classes_json

__all__ = [
    "generate_toy_folder",
    "generate_toycity",
    "render_scene",
    "CITIES",
    "MIN_SIZE",
    "TOY_GROUPS",
]

log = logging.getLogger(__name__)

CITIES = {"train": ("toyberg", "synthstadt"), "val": ("modelburg",), "test": ("mockheim",)}
#: The smallest height or width a scene can be drawn at.
MIN_SIZE = 16
# Cityscapes annotates the 20th frame (number 19) of each 30-frame snippet: every file name
# ends in _000019, and so do ours.
_FRAME = 19

_ID = {lb.name: lb.id for lb in LABELS}
_HAS_INSTANCES = {lb.id for lb in LABELS if lb.has_instances and lb.id >= 0}

# Base RGB colour and colour spread per labelId: the look of each class (not the palette).
_LOOK = {
    "sky": ((150, 185, 215), 25),
    "building": ((150, 130, 115), 45),
    "wall": ((175, 165, 150), 15),
    "fence": ((120, 100, 80), 20),
    "road": ((95, 95, 100), 10),
    "sidewalk": ((165, 150, 150), 15),
    "terrain": ((130, 150, 80), 20),
    "vegetation": ((60, 110, 45), 20),
    "pole": ((90, 90, 95), 15),
    "traffic light": ((40, 40, 35), 10),
    "traffic sign": ((200, 200, 210), 40),
    "person": ((110, 80, 90), 60),
    "rider": ((150, 60, 50), 50),
    "car": ((120, 120, 130), 80),
    "truck": ((170, 160, 140), 40),
    "bus": ((200, 170, 40), 30),
    "train": ((200, 60, 50), 20),
    "motorcycle": ((50, 50, 60), 30),
    "bicycle": ((70, 90, 110), 40),
    "parking": ((110, 105, 110), 10),
    "ground": ((120, 110, 90), 15),
    "static": ((100, 90, 80), 30),
    "ego vehicle": ((30, 30, 35), 5),
    "out of roi": ((10, 10, 10), 5),
}


class _Canvas:
    """Image, labelIds and instanceIds drawn together; later paint occludes earlier paint."""

    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.h, self.w, self.rng = height, width, rng
        self.image = np.zeros((height, width, 3), dtype=np.float32)
        self.labels = np.zeros((height, width), dtype=np.uint8)
        self.instances = np.zeros((height, width), dtype=np.int32)
        self.counters: dict[int, int] = {}
        # one texture field per scene, reused with random offsets (fast, still varied)
        self.noise = rng.normal(0.0, 1.0, (height * 2, width * 2)).astype(np.float32)

    def mask(self, draw_fn) -> np.ndarray:
        layer = Image.new("L", (self.w, self.h), 0)
        draw_fn(ImageDraw.Draw(layer))
        return np.asarray(layer) > 0

    def colour(self, name: str) -> np.ndarray:
        base, spread = _LOOK[name]
        return np.clip(np.asarray(base) + self.rng.normal(0, spread, 3), 0, 255)

    def paint(self, mask: np.ndarray, name: str, colour=None, texture: float = 8.0) -> None:
        if not mask.any():
            return
        label_id = _ID[name]
        colour = self.colour(name) if colour is None else np.asarray(colour, dtype=np.float32)
        oy, ox = self.rng.integers(0, self.h), self.rng.integers(0, self.w)
        tex = self.noise[oy : oy + self.h, ox : ox + self.w][mask] * texture
        self.image[mask] = colour + tex[:, None]
        self.labels[mask] = label_id
        if label_id in _HAS_INSTANCES:
            k = self.counters.get(label_id, 0) + 1
            self.counters[label_id] = k
            self.instances[mask] = label_id * 1000 + k
        else:
            self.instances[mask] = label_id

    def shape(self, name: str, kind: str, coords, colour=None, texture: float = 8.0) -> None:
        def draw(d: ImageDraw.ImageDraw) -> None:
            getattr(d, kind)(coords, fill=255)

        self.paint(self.mask(draw), name, colour, texture)


def _sky_and_buildings(c: _Canvas, horizon: int) -> None:
    h, w, rng = c.h, c.w, c.rng
    sky = np.zeros((h, w), dtype=bool)
    sky[: horizon + 1] = True
    top = np.asarray(c.colour("sky"))
    c.paint(sky, "sky", top, texture=3.0)
    gradient = np.linspace(0.85, 1.1, h, dtype=np.float32)[:, None, None]
    c.image[sky] = (c.image * gradient)[sky]
    x = int(rng.integers(-w // 10, 0))
    while x < w:
        bw = int(rng.integers(w // 10, w // 4))
        if rng.random() < 0.15:  # a gap showing sky
            x += bw // 2
            continue
        roof = int(rng.integers(int(h * 0.02), max(int(h * 0.03), horizon - h // 8)))
        base = horizon + int(rng.integers(h // 40, h // 12))
        colour = c.colour("building")
        c.shape("building", "rectangle", (x, roof, x + bw, base), colour, texture=6.0)
        # windows: darker panes in a grid (still "building")
        wx, wy = max(4, bw // 6), max(4, (base - roof) // 7)
        pane = colour * rng.uniform(0.35, 0.6)
        for yy in range(roof + wy // 2, base - wy, wy):
            for xx in range(x + wx // 3, x + bw - wx // 2, wx):
                c.shape(
                    "building",
                    "rectangle",
                    (xx, yy, xx + wx // 2, yy + wy // 2),
                    pane,
                    texture=4.0,
                )
        x += bw


def _ground_plane(c: _Canvas, horizon: int, vx: int) -> tuple[np.ndarray, np.ndarray]:
    """Road, sidewalks, verges; returns the road's left/right edge x per row."""
    h, w, rng = c.h, c.w, c.rng
    rows = np.arange(h)
    depth = np.clip((rows - horizon) / max(1, h - horizon), 0, 1)
    half_bottom = w * rng.uniform(0.3, 0.45)
    left = vx - depth * half_bottom
    right = vx + depth * half_bottom
    walk = depth * w * rng.uniform(0.15, 0.3)
    below = rows[:, None] > horizon
    cols = np.arange(w)[None, :]
    road = below & (cols >= left[:, None]) & (cols <= right[:, None])
    side_l = below & (cols < left[:, None]) & (cols >= (left - walk)[:, None])
    side_r = below & (cols > right[:, None]) & (cols <= (right + walk)[:, None])
    outer = below & ~road & ~side_l & ~side_r
    c.paint(outer, "terrain" if rng.random() < 0.6 else "ground", texture=12.0)
    c.paint(road, "road", texture=6.0)
    c.paint(side_l | side_r, "sidewalk", texture=7.0)
    if rng.random() < 0.5:  # grass verge between road and sidewalk
        verge = depth * w * 0.03
        strip = below & (cols < left[:, None]) & (cols >= (left - verge)[:, None])
        c.paint(strip, "terrain", texture=12.0)
    if rng.random() < 0.3:  # a parking bay (ignored in evaluation)
        bay = below & (cols > right[:, None] - depth[:, None] * w * 0.08) & road
        bay &= rows[:, None] > horizon + (h - horizon) // 2
        c.paint(bay, "parking", texture=5.0)
    # dashed lane marking along the centre line (drawn as road)
    paint = np.array([235, 235, 225], dtype=np.float32)
    for t in np.linspace(0.05, 1.0, 9):
        y0, y1 = horizon + (h - horizon) * t, horizon + (h - horizon) * min(1.0, t + 0.05)
        half = 1 + 0.012 * w * t
        c.shape(
            "road",
            "polygon",
            [(vx - half, y0), (vx + half, y0), (vx + half, y1), (vx - half, y1)],
            paint,
            texture=3.0,
        )
    return left, right


def _walls_fences_trees(c: _Canvas, horizon: int) -> None:
    h, w, rng = c.h, c.w, c.rng
    for _ in range(rng.integers(0, 3)):
        x0 = int(rng.integers(0, w))
        x1 = x0 + int(rng.integers(w // 12, w // 4))
        top = horizon - int(rng.integers(h // 30, h // 10))
        name = "wall" if rng.random() < 0.5 else "fence"
        c.shape(name, "rectangle", (x0, top, x1, horizon + h // 30), texture=6.0)
        if name == "fence":  # vertical slats: gaps show what is behind, still fence-coloured
            dark = c.colour("fence") * 0.6
            for xx in range(x0, x1, 4):
                c.shape("fence", "line", (xx, top, xx, horizon + h // 30), dark, texture=3.0)
    for _ in range(rng.integers(1, 5)):
        x = int(rng.integers(0, w))
        size = int(rng.integers(h // 10, h // 4))
        base = horizon + int(rng.integers(0, h // 8))
        c.shape(
            "vegetation", "rectangle", (x - 2, base - size, x + 2, base), (80, 60, 40), texture=4.0
        )
        c.shape(
            "vegetation",
            "ellipse",
            (x - size // 2, base - size * 2, x + size // 2, base - size // 2),
            texture=18.0,
        )


def _street_furniture(c: _Canvas, horizon: int, left, right, depth_of) -> None:
    h, w, rng = c.h, c.w, c.rng
    for _ in range(rng.integers(1, 5)):
        y = int(rng.integers(horizon + (h - horizon) // 6, h))
        scale = depth_of(y)
        side = rng.random() < 0.5
        x = int(left[y] - scale * w * 0.05) if side else int(right[y] + scale * w * 0.05)
        height = int(scale * h * 0.7) + 4
        thick = max(1, int(scale * 4))
        top = y - height
        c.shape("pole", "rectangle", (x - thick, top, x + thick, y), texture=5.0)
        kind = rng.random()
        if kind < 0.45:  # traffic light housing with three lamps (all "traffic light")
            bw, bh = max(2, int(scale * 10)), max(5, int(scale * 26))
            c.shape("traffic light", "rectangle", (x - bw, top, x + bw, top + bh), texture=3.0)
            lamp = [(230, 40, 30), (240, 190, 40), (40, 200, 80)][int(rng.integers(0, 3))]
            r = max(1, bw // 2)
            cy = top + bh // 6 + int(rng.integers(0, 3)) * bh // 3
            c.shape("traffic light", "ellipse", (x - r, cy, x + r, cy + 2 * r), lamp, 2.0)
        elif kind < 0.9:  # a sign: disc, triangle or plate
            r = max(2, int(scale * 12))
            form = rng.integers(0, 3)
            if form == 0:
                c.shape("traffic sign", "ellipse", (x - r, top, x + r, top + 2 * r), texture=6.0)
            elif form == 1:
                c.shape(
                    "traffic sign",
                    "polygon",
                    [(x - r, top + 2 * r), (x + r, top + 2 * r), (x, top)],
                    texture=6.0,
                )
            else:
                c.shape("traffic sign", "rectangle", (x - r, top, x + r, top + r), texture=6.0)
        if rng.random() < 0.2:  # a bollard / bin: "static", ignored
            s = max(2, int(scale * 8))
            c.shape("static", "rectangle", (x + 3 * s, y - 2 * s, x + 4 * s, y), texture=8.0)


def _vehicle(c: _Canvas, name: str, x: int, y: int, scale: float) -> None:
    w, h = c.w, c.h
    size = {"car": (0.16, 0.09), "truck": (0.22, 0.16), "bus": (0.3, 0.17), "train": (0.45, 0.2)}[
        name
    ]
    bw, bh = int(size[0] * w * scale) + 3, int(size[1] * h * scale * 2) + 3
    body = c.colour(name)
    c.shape(name, "rounded_rectangle", (x - bw // 2, y - bh, x + bw // 2, y), body, 10.0)
    # windows and wheels keep the vehicle's label (as in Cityscapes)
    glass = np.array([60, 75, 90], dtype=np.float32)
    c.shape(
        name,
        "rectangle",
        (x - bw // 2 + bw // 8, y - bh + bh // 8, x + bw // 2 - bw // 8, y - bh // 2),
        glass,
        5.0,
    )
    r = max(1, bh // 6)
    for wx in (x - bw // 3, x + bw // 3):
        c.shape(name, "ellipse", (wx - r, y - r, wx + r, y + r), (20, 20, 20), 3.0)
    # Nothing is drawn with this number (licence plates are never in labelId maps), but it is
    # drawn: every later draw, hence every scene, stays byte-identical to the data the bundled
    # model was trained on.
    c.rng.random()


def _person(c: _Canvas, name: str, x: int, y: int, scale: float) -> None:
    h = c.h
    ph = int(h * 0.28 * scale) + 6
    pw = max(2, ph // 4)
    c.shape(name, "ellipse", (x - pw // 2, y - ph, x + pw // 2, y - ph + pw), (200, 160, 130), 6.0)
    c.shape(name, "rectangle", (x - pw // 2, y - ph + pw, x + pw // 2, y - ph // 3), texture=10.0)
    legs = c.colour(name) * 0.6
    c.shape(name, "rectangle", (x - pw // 2, y - ph // 3, x + pw // 2, y), legs, 8.0)


def _two_wheeler(c: _Canvas, name: str, x: int, y: int, scale: float) -> None:
    h = c.h
    bw, bh = int(h * 0.2 * scale) + 4, int(h * 0.1 * scale) + 3
    r = max(1, bh // 2)
    frame = c.colour(name)
    for wx in (x - bw // 2 + r, x + bw // 2 - r):
        c.shape(name, "ellipse", (wx - r, y - 2 * r, wx + r, y), frame * 0.4, 4.0)
    c.shape(
        name,
        "polygon",
        [(x - bw // 2 + r, y - r), (x, y - bh), (x + bw // 2 - r, y - r)],
        frame,
        6.0,
    )
    _person(c, "rider", x, y - bh // 2, scale)


def _traffic(c: _Canvas, horizon: int, left, right, depth_of) -> None:
    h, rng = c.h, c.rng
    objects = []
    for _ in range(rng.integers(2, 9)):
        y = int(rng.integers(horizon + 4, h))
        kind = rng.choice(
            [
                "car",
                "car",
                "car",
                "truck",
                "bus",
                "train",
                "person",
                "person",
                "bicycle",
                "motorcycle",
            ]
        )
        objects.append((y, str(kind)))
    for y, kind in sorted(objects):  # far to near: nearer objects occlude
        scale = depth_of(y)
        if kind == "person":
            side = rng.random() < 0.5
            x = int(left[y] - scale * c.w * 0.06) if side else int(right[y] + scale * c.w * 0.06)
            _person(c, "person", x, y, scale)
        elif kind in ("bicycle", "motorcycle"):
            x = int(rng.uniform(left[y], right[y]))
            _two_wheeler(c, kind, x, y, scale)
        else:
            x = int(rng.uniform(left[y], right[y]))
            _vehicle(c, kind, x, y, scale)


def render_scene(
    height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One street scene: ``(image (H, W, 3) uint8, labelIds (H, W) uint8, instanceIds int32)``."""
    c = _Canvas(height, width, rng)
    horizon = int(height * rng.uniform(0.35, 0.5))
    vx = int(width * rng.uniform(0.35, 0.65))

    def depth_of(y: int) -> float:
        return float(np.clip((y - horizon) / max(1, height - horizon), 0.05, 1.0))

    _sky_and_buildings(c, horizon)
    left, right = _ground_plane(c, horizon, vx)
    _walls_fences_trees(c, horizon)
    _street_furniture(c, horizon, left, right, depth_of)
    _traffic(c, horizon, left, right, depth_of)
    if rng.random() < 0.4:  # the hood of the ego car: ignored
        top = height - int(height * rng.uniform(0.05, 0.12))
        c.shape("ego vehicle", "ellipse", (-width // 4, top, width + width // 4, top + height // 3))
    if rng.random() < 0.3:  # a black border outside the region of interest: ignored
        c.paint(
            np.pad(np.zeros((height - 4, width - 4), bool), 2, constant_values=True),
            "out of roi",
            texture=0.0,
        )
    # lighting: global gain and tint, then a slight blur like a real lens
    gain = rng.uniform(0.7, 1.2) * np.asarray(rng.uniform(0.9, 1.1, 3), dtype=np.float32)
    image = np.clip(c.image * gain, 0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.6)))
    return image, c.labels, c.instances


# labelId -> the official colour, as in _gtFine_color.png (ids 0-33 are the table's rows 0-33).
_COLOR_LUT = palette_lut([lb.color for lb in sorted(LABELS, key=lambda lb: lb.id) if lb.id >= 0])


def generate_toycity(
    root: str | os.PathLike[str],
    train: int = 300,
    val: int = 50,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    test: int = 0,
) -> Path:
    """Write a synthetic dataset in Cityscapes' layout under ``root`` and return ``root``.

    Args:
        train, val, test: number of scenes per split (test gets labels too, unlike Cityscapes).
        size: ``(H, W)`` of every image.
        seed: scenes depend on it alone; the same seed writes the same files.

    Raises:
        ValueError: ``size`` is below :data:`MIN_SIZE`.
        emanet.io.atomic.WriteError: a file cannot be written (each file is written whole or
            not at all).
    """
    root = Path(root)
    height, width = size
    if min(height, width) < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}x{MIN_SIZE}, got {height}x{width}")
    for split_index, (split, count) in enumerate((("train", train), ("val", val), ("test", test))):
        cities = CITIES[split]
        for index in range(count):
            city = cities[index % len(cities)]
            rng = np.random.default_rng([seed, split_index, index])
            stem = f"{city}_{index // len(cities):06d}_{_FRAME:06d}"
            _write_scene(root, split, city, stem, *render_scene(height, width, rng))
    scenes = f"{train} train, {val} val, {test} test scenes of {height}x{width}"
    log.info("toy city: %s in %s", scenes, root)
    return root


def _write_scene(
    root: Path,
    split: str,
    city: str,
    stem: str,
    image: np.ndarray,
    labels: np.ndarray,
    instances: np.ndarray,
) -> None:
    """The four files of one scene, named and encoded as Cityscapes' are."""
    image_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    write_png(image_dir / f"{stem}_leftImg8bit.png", image)
    write_png(gt_dir / f"{stem}_gtFine_labelIds.png", labels)
    # 16-bit PNG like the official files (ids up to 33999 fit).
    write_png(gt_dir / f"{stem}_gtFine_instanceIds.png", instances.astype(np.uint16))
    write_png(gt_dir / f"{stem}_gtFine_color.png", _COLOR_LUT[labels])


#: The toy city's 19 classes regrouped by their Cityscapes category: 7 classes.
TOY_GROUPS: dict[str, tuple[str, ...]] = {
    category: tuple(lb.name for lb in LABELS if lb.category == category and lb.name in CLASSES)
    for category in ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
}


def generate_toy_folder(
    root: str | os.PathLike[str],
    train: int = 40,
    val: int = 10,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
    groups: dict[str, tuple[str, ...]] | None = None,
) -> Path:
    """Write toy-city scenes as a dataset in the folder format (see :mod:`emanet.data.folder`)
    under ``root`` and return ``root``: ``images/{train,val}/NAME.png``, ``labels/...`` of class
    ids, ``classes.json``.

    Args:
        groups: class name -> the Cityscapes classes it gathers (default :data:`TOY_GROUPS`,
            the 7 categories); the classes it leaves out are ignored (255). Each class's colour
            is that of its first Cityscapes class.
        train, val, size, seed: as for :func:`generate_toycity`.
    """
    root, groups = Path(root), groups or TOY_GROUPS
    height, width = size
    if min(height, width) < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}x{MIN_SIZE}, got {height}x{width}")
    regroup = np.full(256, 255, dtype=np.uint8)
    for group_id, members in enumerate(groups.values()):
        regroup[[CLASSES.index(name) for name in members]] = group_id
    colours = {lb.name: lb.color for lb in LABELS}
    write_classes_json(root, list(groups), [colours[members[0]] for members in groups.values()])
    for split_index, (split, count) in enumerate((("train", train), ("val", val))):
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            image, label_ids, _ = render_scene(height, width, rng)
            labels = regroup[label_ids_to_train_ids(label_ids)]
            write_png(root / "images" / split / f"scene_{index:04d}.png", image)
            write_png(root / "labels" / split / f"scene_{index:04d}.png", labels)
    log.info(
        "toy folder dataset: %d train, %d val scenes, %d classes in %s",
        train,
        val,
        len(groups),
        root,
    )
    return root
