"""A deterministic synthetic detection dataset in darknet format, for tests and the demo.

Each image is a softly textured, low-saturation background with 0–4 objects. An object's class decides both
its shape (circle, square, triangle, …) and its colour family (a hue per class, varied a little), so a small
network learns it in minutes on a CPU. An object's longer side is 15–60 pixels at 128×128 (scaled with
``size``), its shorter side 75–100 % of that; objects overlap by at most a fifth of the smaller one. Labels
are the tight boxes of the painted pixels.

Layout (every path relative, so the folder can be moved; run darknet from inside it)::

    synthetic.data  synthetic.names  train.txt  valid.txt
    train/000000.png  train/000000.txt  ...   (darknet's rule: the label lies beside the image)
    valid/000000.png  valid/000000.txt  ...

The same arguments give byte-identical files: image ``i`` of a split draws from a generator seeded with
``(seed, split, i)``, and PNG files carry no timestamps.
"""

from __future__ import annotations

import colorsys
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UsageError

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels

SIZE_RANGE = (15.0, 60.0)  # object size in pixels at a 128-pixel image
OBJECT_COUNTS = (0, 1, 2, 3, 4)
COUNT_WEIGHTS = (0.05, 0.3, 0.3, 0.2, 0.15)
MAX_OVERLAP = 0.2
NOISE = 5  # per-pixel uniform noise, in grey levels  # intersection / smaller object's box
MARKER = "synthetic.data"  # a folder holding this may be replaced by a new synthetic dataset


def _circle(draw: ImageDraw.ImageDraw, box: Box) -> None:
    draw.ellipse(box, fill=255)


def _square(draw: ImageDraw.ImageDraw, box: Box) -> None:
    draw.rectangle(box, fill=255)


def _triangle(draw: ImageDraw.ImageDraw, box: Box) -> None:
    left, top, right, bottom = box
    draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=255)


def _diamond(draw: ImageDraw.ImageDraw, box: Box) -> None:
    left, top, right, bottom = box
    cx, cy = (left + right) / 2, (top + bottom) / 2
    draw.polygon([(cx, top), (right, cy), (cx, bottom), (left, cy)], fill=255)


def _cross(draw: ImageDraw.ImageDraw, box: Box) -> None:
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    draw.rectangle((left + w / 3, top, right - w / 3, bottom), fill=255)
    draw.rectangle((left, top + h / 3, right, bottom - h / 3), fill=255)


def _ring(draw: ImageDraw.ImageDraw, box: Box) -> None:
    width = max(2, round(min(box[2] - box[0], box[3] - box[1]) / 5))
    draw.ellipse(box, outline=255, width=width)


# class → (name, painter), in class order; the first three are cfg/yolo-nano.cfg's classes
SHAPES: tuple[tuple[str, Callable[[ImageDraw.ImageDraw, Box], None]], ...] = (
    ("circle", _circle),
    ("square", _square),
    ("triangle", _triangle),
    ("diamond", _diamond),
    ("cross", _cross),
    ("ring", _ring),
)


def make_synthetic_dataset(
    folder: str | Path, classes: int = 3, train: int = 512, valid: int = 128, size: int = 128, seed: int = 0
) -> Path:
    """Write the dataset into ``folder`` (created; an existing one must be empty or an earlier synthetic
    dataset, which is replaced) and return its ``.data`` file."""
    _check_arguments(classes, train, valid, size)
    folder = Path(folder)
    _check_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_dataset(staging, classes, {"train": train, "valid": valid}, size, seed)
        _replace(folder, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder / MARKER


def _check_arguments(classes: int, train: int, valid: int, size: int) -> None:
    if not 1 <= classes <= len(SHAPES):
        raise UsageError(f"the synthetic dataset has 1 to {len(SHAPES)} classes, not {classes}")
    if train < 0 or valid < 0 or train + valid == 0:
        raise UsageError("the synthetic dataset needs a non-negative number of images in each split, not 0")
    if size < 32:
        raise UsageError(f"synthetic images must be at least 32 pixels, not {size}")


def _check_target(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError("exists and is not a folder", str(folder))
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise UsageError("the folder is not empty (and holds no synthetic dataset to replace)", str(folder))


def _replace(folder: Path, staging: Path) -> None:
    """Put the finished ``staging`` folder in place of ``folder`` (renames, so never half-written)."""
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
        folder.rename(old / folder.name)
        staging.rename(folder)
        shutil.rmtree(old)
    else:
        staging.rename(folder)


def _write_dataset(root: Path, classes: int, counts: dict[str, int], size: int, seed: int) -> None:
    names = [name for name, _ in SHAPES[:classes]]
    (root / "synthetic.names").write_text("".join(f"{name}\n" for name in names))
    for split_id, (split, count) in enumerate(counts.items()):
        (root / split).mkdir()
        lines = []
        for index in range(count):
            rng = np.random.default_rng((seed, split_id, index))
            image, labels = synthetic_image(rng, classes, size)
            stem = root / split / f"{index:06d}"
            image.save(stem.with_suffix(".png"), format="PNG", compress_level=1)
            stem.with_suffix(".txt").write_text("".join(labels))
            lines.append(f"{split}/{index:06d}.png\n")
        (root / f"{split}.txt").write_text("".join(lines))
    (root / "backup").mkdir()
    data = f"classes={classes}\ntrain=train.txt\nvalid=valid.txt\nnames=synthetic.names\nbackup=backup/\n"
    (root / MARKER).write_text(data)


def synthetic_image(rng: np.random.Generator, classes: int, size: int) -> tuple[Image.Image, list[str]]:
    """One RGB image and its label lines (``class cx cy w h``, normalised, 6 decimals)."""
    canvas = Image.fromarray(_background(rng, size))
    labels = []
    for class_id, box in _placements(rng, classes, size):
        mask = Image.new("L", (size, size), 0)
        SHAPES[class_id][1](ImageDraw.Draw(mask), box)
        painted = mask.getbbox()
        if painted is None:
            continue
        canvas.paste(_colour(rng, class_id, classes), mask=mask)
        left, top, right, bottom = painted  # right/bottom exclusive: the box's pixel edges
        cx, cy = (left + right) / 2 / size, (top + bottom) / 2 / size
        labels.append(
            f"{class_id} {cx:.6f} {cy:.6f} {(right - left) / size:.6f} {(bottom - top) / size:.6f}\n"
        )
    noise = rng.integers(-NOISE, NOISE + 1, size=(size, size, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(canvas, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels), labels


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth, low-saturation pattern: a coarse random grid blown up bilinearly."""
    grey = rng.uniform(60, 190, size=(5, 5, 1))
    tint = rng.uniform(-15, 15, size=(5, 5, 3))
    coarse = np.clip(grey + tint, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))


def _placements(rng: np.random.Generator, classes: int, size: int) -> list[tuple[int, Box]]:
    count = int(rng.choice(OBJECT_COUNTS, p=COUNT_WEIGHTS))
    placed: list[tuple[int, Box]] = []
    for _ in range(count):
        class_id = int(rng.integers(classes))
        for _attempt in range(20):
            box = _random_box(rng, size)
            if all(_overlap(box, other) <= MAX_OVERLAP for _, other in placed):
                placed.append((class_id, box))
                break
    return placed


def _random_box(rng: np.random.Generator, size: int) -> Box:
    longer = min(rng.uniform(*SIZE_RANGE) * size / 128, size - 1)
    shorter = longer * rng.uniform(0.75, 1.0)
    w, h = (longer, shorter) if rng.random() < 0.5 else (shorter, longer)
    left, top = rng.uniform(0, size - 1 - w), rng.uniform(0, size - 1 - h)
    return (float(left), float(top), float(left + w), float(top + h))


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def _colour(rng: np.random.Generator, class_id: int, classes: int) -> tuple[int, int, int]:
    """A saturated colour near the class's hue (hues spread evenly over the classes)."""
    hue = (class_id / classes + rng.uniform(-0.04, 0.04)) % 1.0
    saturation, value = rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)
