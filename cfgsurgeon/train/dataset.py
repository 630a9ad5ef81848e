"""Darknet-format detection datasets: the ``.data`` file, image lists, YOLO txt labels, and a torch
``Dataset`` that letterboxes (or resizes) and augments images the way darknet's training does.

Conventions (darknet's):

* ``.data``: ``key = value`` lines (``#`` and ``;`` start comments; the first of a repeated key wins) with
  ``classes``, ``train``, ``valid`` (defaults to ``train``), ``names`` and optionally ``backup``.
* Paths in ``.data`` and in image lists are opened relative to the working directory, as darknet does; a
  relative path that is not there is looked up relative to the folder of the file naming it, so a dataset
  folder works from anywhere.
* Labels: one ``<class> <cx> <cy> <w> <h>`` line per object, normalised to the image. The label file of an
  image is darknet's ``replace_image_to_label`` (COCO's ``images/train2014|val2014|train2017|val2017`` and
  VOC's ``JPEGImages`` folders become ``labels``, the extension becomes ``.txt``, so usually the ``.txt`` lies
  beside the image), or else the ``/images/`` → ``/labels/`` layout of the original darknet. An image without
  a label file has no objects.

Samples are ``(image C×H×W float32 in [0, 1], targets K×5 [class, cx, cy, w, h], path)``; targets are
normalised to the network input after letterbox and augmentation. Augmentation (training): darknet's jitter
(a random crop/pad of up to ``jitter`` of each side, then resize), horizontal flip and HSV distortion (hue
shift, saturation and exposure scales from ``[net]``). Every random draw comes from a generator seeded with
``(seed, epoch, index)``, so batches do not depend on worker count or order.

Mosaic (``mosaic=1`` in ``[net]``), as darknet's ``load_data_detection``: a centre point is drawn in 20–80 %
of the network width and height; four images, each jittered, flipped and colour-distorted on its own to the
full network size (a *tile*), are placed with their inner corner on that point, one per quadrant (0 top-left,
1 top-right, 2 bottom-left, 3 bottom-right), and each quadrant shows the part of its tile nearest the centre.
A tile whose window reaches past its photo (fill) on an inner side is pushed across the centre by that fill,
at most a quadrant (darknet's ``left_shift`` … ``bot_shift``); half of the tiles first move their window to
the photo's outer edges, putting all the fill on the inner sides (darknet's "move each 2nd image to the
corner"). Boxes are shifted with their tile, clipped to their quadrant, and dropped when not wider and
taller than ``MIN_BOX_PIXELS``. Where this differs from darknet:

* darknet makes half of its *batches* mosaics; here each sample is one with probability ``MOSAIC_SHARE``
  (0.5), drawn from the sample's generator like everything else.
* The sample is one of the four, in a random quadrant; the other three are drawn without replacement from the
  other images (darknet draws four random paths, repeats allowed), so no rectangle appears twice.
* Boxes are always clipped to their quadrant, as darknet's ``mosaic_bound=1``: darknet's default clips only to
  the canvas, so a box can extend over a neighbouring tile's pixels. ``mosaic_bound`` is not read.
* darknet refuses to train ``letter_box=1`` with ``mosaic=1`` (which the Scaled-YOLOv4 cfgs, e.g.
  ``yolov4-csp.cfg``, set); here each tile is letterboxed (grey bands, then jitter) before it is cut.
* The fill hidden by the shift is measured in the window's own scale (darknet divides by the photo's size,
  ``−pleft·w/ow``, which is off when the window is not the photo's size), rounded down as darknet does.
* Fill is darknet's letterbox grey 0.5, not the photo's mean colour (as in every augmented sample here);
  ``mixup``, ``blur``, ``gaussian_noise`` and ``resize`` are not done (darknet ignores ``cutmix`` for
  detectors, and ``cutmix=1`` with ``mosaic=1`` is mosaic, as here).

Multi-scale training (``random=`` in the last ``[yolo]``/``[region]``) is a schedule the trainer applies per
optimizer step: :func:`multiscale_settings`, :func:`multiscale_size` and :func:`resize_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import layers as L
from ..errors import CfgError, Location, UsageError
from ..images import letterbox_image, letterbox_size, load_image, load_names, resize_image
from ..ir import Graph

GREY = 0.5  # darknet's letterbox fill, also used for the pixels a jitter crop adds
MIN_BOX_PIXELS = 2.0  # augmented boxes thinner than this (network pixels) are dropped


# -- the .data file ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``.data`` file. ``train``/``valid``/``backup`` are resolved paths (they may not exist)."""

    source: Path
    classes: int
    names: list[str]
    train: Path | None
    valid: Path | None
    backup: Path | None = None
    lines: dict[str, int] = field(default_factory=dict)  # the line of each key, for error messages

    def image_list(self, split: str) -> list[Path]:
        """The images of ``split`` (``train`` or ``valid``), checked to exist."""
        if split not in ("train", "valid"):
            raise UsageError(f"unknown split '{split}' (train or valid)")
        key = split if split in self.lines else "train"  # darknet: valid defaults to train
        path = self.train if key == "train" else self.valid
        if path is None:
            raise UsageError(f"no '{split}=' line", str(self.source))
        where = Location(str(self.source), self.lines[key])
        if not path.is_file():
            raise UsageError(f"no such image list '{path}'", where)
        return read_image_list(path)


def resolve(value: str, base: Path) -> Path:
    """``value`` as darknet opens it (relative to the working directory), else relative to ``base``."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    beside = base / path
    return beside if beside.exists() else path


def read_data_file(path: str | Path) -> DataSpec:
    """Parse a darknet ``.data`` file; missing or malformed entries are one-line errors with file:line."""
    path = Path(path)
    options, lines = _read_options(path)
    base = path.parent
    names = None
    if "names" in options:
        names_file = resolve(options["names"], base)
        if not names_file.is_file():
            raise UsageError(f"no such names file '{names_file}'", Location(str(path), lines["names"]))
        names = load_names(names_file)
    classes = _classes(options, lines, names, path)
    if names is None:
        names = [str(i) for i in range(classes)]
    elif len(names) < classes:
        message = f"{len(names)} class names for classes={classes}"
        raise UsageError(message, Location(str(path), lines["names"]))
    paths = {key: resolve(options[key], base) if key in options else None for key in ("train", "valid")}
    backup = resolve(options["backup"], base) if "backup" in options else None
    train, valid = paths["train"], paths["valid"] or paths["train"]
    return DataSpec(path, classes, names[:classes], train, valid, backup, lines)


def _read_options(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read the data file ({exc.strerror or exc})", str(path)) from None
    options: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            raise UsageError(f"expected 'key=value', found '{line}'", Location(str(path), number))
        key, value = (part.strip() for part in line.split("=", 1))
        options.setdefault(key, value)
        lines.setdefault(key, number)
    return options, lines


def _classes(options: dict[str, str], lines: dict[str, int], names: list[str] | None, path: Path) -> int:
    if "classes" not in options:
        if names is None:
            raise UsageError("no 'classes=' line (and no names file to count)", str(path))
        return len(names)
    try:
        classes = int(options["classes"])
    except ValueError:
        classes = 0
    if classes <= 0:
        message = f"classes must be a positive integer, not '{options['classes']}'"
        raise UsageError(message, Location(str(path), lines["classes"]))
    return classes


def read_image_list(path: str | Path) -> list[Path]:
    """Image paths, one a line (blank lines skipped); each must exist."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read the image list ({exc.strerror or exc})", str(path)) from None
    images = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        image = resolve(line, path.parent)
        if not image.is_file():
            raise UsageError(f"no such image file '{line}'", Location(str(path), number))
        images.append(image)
    return images


# -- labels --------------------------------------------------------------------------------------------------

# darknet's replace_image_to_label (AlexeyAB): these folder renames, each at its first occurrence, in order.
_LABEL_FOLDERS = (
    ("/images/train2017/", "/labels/train2017/"),
    ("/images/val2017/", "/labels/val2017/"),
    ("/JPEGImages/", "/labels/"),
    ("\\images\\train2017\\", "\\labels\\train2017\\"),
    ("\\images\\val2017\\", "\\labels\\val2017\\"),
    ("\\images\\train2014\\", "\\labels\\train2014\\"),
    ("\\images\\val2014\\", "\\labels\\val2014\\"),
    ("/images/train2014/", "/labels/train2014/"),
    ("/images/val2014/", "/labels/val2014/"),
    ("\\JPEGImages\\", "\\labels\\"),
)


def label_path(image: str | Path) -> Path:
    """darknet's label file for an image: the folder renames above, then the extension → ``.txt``."""
    text = str(image)
    for old, new in _LABEL_FOLDERS:
        text = text.replace(old, new, 1)
    return Path(text.strip(" \t")).with_suffix(".txt")


def find_label(image: str | Path) -> Path | None:
    """The label file of ``image``: darknet's rule, else ``…/images/…`` → ``…/labels/…``; None if neither."""
    candidates = [label_path(image)]
    parts = list(Path(image).parts)
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts[folders[-1]] = "labels"
        candidates.append(Path(*parts).with_suffix(".txt"))
    return next((path for path in candidates if path.is_file()), None)


def read_labels(path: str | Path, classes: int) -> np.ndarray:
    """``K×5`` float32 ``[class, cx, cy, w, h]``; boxes clipped to the image (those left empty dropped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read the label file ({exc.strerror or exc})", str(path)) from None
    rows = []
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            rows.append(_label_row(raw, classes, Location(str(path), number)))
    return clip_targets(np.array(rows, dtype=np.float32).reshape(-1, 5))


def _label_row(raw: str, classes: int, where: Location) -> list[float]:
    fields = raw.split()
    try:
        if len(fields) != 5:
            raise ValueError
        class_id, values = int(fields[0]), [float(f) for f in fields[1:]]
    except ValueError:
        raise UsageError(
            f"expected '<class> <x> <y> <width> <height>', found '{raw.strip()}'", where
        ) from None
    if not 0 <= class_id < classes:
        raise UsageError(f"class {class_id} is outside 0..{classes - 1}", where)
    if not all(math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
        raise UsageError(f"a box needs finite values and a positive width and height: '{raw.strip()}'", where)
    return [class_id, *values]


def to_corners(targets: np.ndarray) -> np.ndarray:
    """``[class, cx, cy, w, h]`` → ``[class, x0, y0, x1, y1]``."""
    out = targets.astype(np.float64).copy()
    out[:, 1:3] = targets[:, 1:3] - targets[:, 3:5] / 2
    out[:, 3:5] = targets[:, 1:3] + targets[:, 3:5] / 2
    return out


def from_corners(corners: np.ndarray) -> np.ndarray:
    """``[class, x0, y0, x1, y1]`` → float32 ``[class, cx, cy, w, h]``."""
    out = corners.copy()
    out[:, 1:3] = (corners[:, 1:3] + corners[:, 3:5]) / 2
    out[:, 3:5] = corners[:, 3:5] - corners[:, 1:3]
    return out.astype(np.float32)


def clip_targets(targets: np.ndarray, min_size: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Clip boxes to ``[0, 1]``; drop those whose clipped width/height is not above ``min_size``."""
    corners = to_corners(targets)
    corners[:, 1:] = np.clip(corners[:, 1:], 0.0, 1.0)
    keep = (corners[:, 3] - corners[:, 1] > min_size[0]) & (corners[:, 4] - corners[:, 2] > min_size[1])
    return from_corners(corners[keep])


# -- geometry: which part of the photo becomes the network input -------------------------------------------


def letterbox_targets(
    targets: np.ndarray, image_wh: tuple[int, int], net_wh: tuple[int, int], letterbox: bool = True
) -> np.ndarray:
    """Image-normalised targets → network-normalised, for :func:`cfgsurgeon.detect.letterbox_image`'s
    placement (centred, aspect kept) or, with ``letterbox=False``, a plain resize (unchanged)."""
    if not letterbox:
        return targets.astype(np.float32).copy()
    (image_w, image_h), (net_w, net_h) = image_wh, net_wh
    new_w, new_h = letterbox_size(image_w, image_h, net_w, net_h)
    offset_x, offset_y = (net_w - new_w) // 2, (net_h - new_h) // 2
    out = targets.astype(np.float64).copy()
    out[:, 1] = (out[:, 1] * new_w + offset_x) / net_w
    out[:, 2] = (out[:, 2] * new_h + offset_y) / net_h
    out[:, 3] *= new_w / net_w
    out[:, 4] *= new_h / net_h
    return out.astype(np.float32)


def _window_targets(targets: np.ndarray, image_wh: tuple[int, int], window: tuple[int, ...]) -> np.ndarray:
    """Targets after cropping the photo to ``window`` (left, top, right, bottom pixels) and resizing it."""
    left, top, right, bottom = window
    corners = to_corners(targets)
    corners[:, [1, 3]] = (corners[:, [1, 3]] * image_wh[0] - left) / (right - left)
    corners[:, [2, 4]] = (corners[:, [2, 4]] * image_wh[1] - top) / (bottom - top)
    return from_corners(corners)


def _crop(img: np.ndarray, window: tuple[int, ...]) -> np.ndarray:
    """``window`` of the photo; pixels outside it are grey."""
    left, top, right, bottom = window
    _, h, w = img.shape
    out = np.full((img.shape[0], bottom - top, right - left), GREY, dtype=np.float32)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    if x1 > x0 and y1 > y0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = img[:, y0:y1, x0:x1]
    return out


def _base_window(image_wh: tuple[int, int], net_wh: tuple[int, int], letterbox: bool) -> tuple[int, ...]:
    """The photo region that fills the network input before jitter: all of it, or the letterbox canvas."""
    image_w, image_h = image_wh
    if not letterbox:
        return (0, 0, image_w, image_h)
    new_w, new_h = letterbox_size(image_w, image_h, *net_wh)
    canvas_w, canvas_h = round(net_wh[0] * image_w / new_w), round(net_wh[1] * image_h / new_h)
    left, top = (image_w - canvas_w) // 2, (image_h - canvas_h) // 2
    return (left, top, left + canvas_w, top + canvas_h)


# -- augmentation --------------------------------------------------------------------------------------------

MOSAIC_SHARE = 0.5  # darknet makes half of its batches mosaics; here each sample is one with this chance
MOSAIC_CENTRE = (0.2, 0.8)  # the centre point's range, as a share of the network width / height


@dataclass(frozen=True)
class Augment:
    """darknet's training augmentation: ``jitter`` (of the last [yolo]/[region], as darknet reads it),
    ``hue``, ``saturation``, ``exposure``, ``flip`` and ``mosaic`` (from [net]; darknet's defaults)."""

    jitter: float = 0.2
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    flip: bool = True
    mosaic: bool = False

    @classmethod
    def from_graph(cls, graph: Graph) -> Augment:
        net = graph.net
        heads = _heads(graph)
        jitter = _option(heads[-1], "jitter", 0.2, float) if heads else 0.2
        return cls(
            jitter=min(max(jitter, 0.0), 0.45),  # darknet's crop must keep a positive size
            hue=_option(net, "hue", 0.0, float),
            saturation=_option(net, "saturation", 1.0, float),
            exposure=_option(net, "exposure", 1.0, float),
            flip=_option(net, "flip", 1, int) != 0,
            mosaic=_option(net, "mosaic", 0, int) != 0,
        )


def _heads(graph: Graph) -> list[L.Layer]:
    return [layer for layer in graph.layers if isinstance(layer, L.ANCHOR_HEADS)]


def _option(node: L.Node, key: str, default: float, kind: type) -> Any:
    """A training option darknet reads with ``option_find_*`` (not typed in :mod:`cfgsurgeon.layers`); a
    malformed value is a :class:`CfgError` naming its line."""
    option = L.Opt(default, kind)
    option.__set_name__(type(node), key)
    return option.__get__(node, type(node))


def _rand_scale(rng: np.random.Generator, s: float) -> float:
    """darknet's ``rand_scale``: a factor in [1, s], inverted half of the time."""
    scale = rng.uniform(1.0, max(s, 1.0))
    return scale if rng.random() < 0.5 else 1.0 / scale


def _jitter_window(rng: np.random.Generator, base: tuple[int, ...], jitter: float) -> tuple[int, ...]:
    left, top, right, bottom = base
    dw, dh = jitter * (right - left), jitter * (bottom - top)
    moves = rng.uniform(-1.0, 1.0, size=4) * np.array([dw, dh, dw, dh])
    left, top = left + int(moves[0]), top + int(moves[1])
    right, bottom = right - int(moves[2]), bottom - int(moves[3])
    return (left, top, max(right, left + 1), max(bottom, top + 1))


@dataclass(frozen=True)
class _Draw:
    """One image's random augmentation, drawn before it is applied (so mosaic can move the window)."""

    window: tuple[int, ...]  # the photo region (left, top, right, bottom pixels) that fills the input
    flip: bool
    hue: float
    saturation: float
    exposure: float


def _draw(rng: np.random.Generator, aug: Augment, base: tuple[int, ...]) -> _Draw:
    window = _jitter_window(rng, base, aug.jitter)
    flip = bool(aug.flip and rng.random() < 0.5)
    hue = rng.uniform(-aug.hue, aug.hue)
    return _Draw(window, flip, hue, _rand_scale(rng, aug.saturation), _rand_scale(rng, aug.exposure))


# -- mosaic geometry -----------------------------------------------------------------------------------------
# Quadrants are numbered as darknet's i_mixup: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.


def _quadrant(quadrant: int, centre: tuple[int, int], net_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """The canvas region (left, top, right, bottom) of ``quadrant`` around ``centre``."""
    (cx, cy), (w, h) = centre, net_wh
    right, bottom = quadrant % 2, quadrant // 2
    return (cx if right else 0, cy if bottom else 0, w if right else cx, h if bottom else cy)


def _to_corner(
    window: tuple[int, ...], image_wh: tuple[int, int], quadrant: int, flip: bool
) -> tuple[int, ...]:
    """darknet's "move each 2nd image to the corner": the window keeps its size but starts at the photo's
    outer edges, so all of its fill lies on the tile's inner sides, where :func:`_tile_offset` hides it."""
    left, top, right, bottom = window
    width, height = right - left, bottom - top
    inner_is_right = (quadrant % 2 == 0) != flip  # the left column's inner side; a flip mirrors the photo
    left = 0 if inner_is_right else image_wh[0] - width
    top = 0 if quadrant // 2 == 0 else image_wh[1] - height
    return (left, top, left + width, top + height)


def _fill(
    window: tuple[int, ...], image_wh: tuple[int, int], net_wh: tuple[int, int], flip: bool
) -> tuple[int, ...]:
    """Network pixels of fill (outside the photo) on each side of a tile: left, top, right, bottom."""
    left, top, right, bottom = window
    scale_x, scale_y = net_wh[0] / (right - left), net_wh[1] / (bottom - top)
    fill_left, fill_right = int(max(0, -left) * scale_x), int(max(0, right - image_wh[0]) * scale_x)
    if flip:
        fill_left, fill_right = fill_right, fill_left
    return (fill_left, int(max(0, -top) * scale_y), fill_right, int(max(0, bottom - image_wh[1]) * scale_y))


def _tile_offset(
    quadrant: int, centre: tuple[int, int], net_wh: tuple[int, int], fill: tuple[int, ...]
) -> tuple[int, int]:
    """Where a tile's top-left corner lands on the canvas: its inner corner on the centre point, pushed
    across it by the fill on its inner sides (at most a quadrant), so the quadrant shows photo rather than
    fill (darknet's ``left_shift`` … ``bot_shift``)."""
    (cx, cy), (w, h) = centre, net_wh
    fill_left, fill_top, fill_right, fill_bottom = fill
    x = cx - min(cx, fill_left) if quadrant % 2 else cx + min(w - cx, fill_right) - w
    y = cy - min(cy, fill_top) if quadrant // 2 else cy + min(h - cy, fill_bottom) - h
    return x, y


def _quadrant_targets(
    targets: np.ndarray, net_wh: tuple[int, int], region: tuple[int, ...], offset: tuple[int, int]
) -> np.ndarray:
    """A tile's targets on the canvas: shifted by ``offset``, clipped to ``region`` (darknet's
    ``mosaic_bound=1``), boxes thinner than :data:`MIN_BOX_PIXELS` dropped."""
    left, top, right, bottom = region
    source = (left - offset[0], top - offset[1], right - offset[0], bottom - offset[1])
    inside = _window_targets(targets, net_wh, source)
    inside = clip_targets(inside, (MIN_BOX_PIXELS / (right - left), MIN_BOX_PIXELS / (bottom - top)))
    # placing the region on the canvas is cropping it to a window that reaches past it on every side
    canvas = (-left, -top, net_wh[0] - left, net_wh[1] - top)
    return _window_targets(inside, (right - left, bottom - top), canvas)


def distort_hsv(img: np.ndarray, hue: float, saturation: float, exposure: float) -> np.ndarray:
    """darknet's ``distort_image``: hue shifted (wrapping), saturation and value scaled, clipped to [0, 1]."""
    if img.shape[0] != 3:
        return np.clip(img * exposure, 0.0, 1.0).astype(np.float32)
    h, s, v = _rgb_to_hsv(img)
    h = np.mod(h + hue, 1.0)
    return np.clip(_hsv_to_rgb(h, s * saturation, v * exposure), 0.0, 1.0).astype(np.float32)


def _rgb_to_hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = img
    v = img.max(axis=0)
    delta = v - img.min(axis=0)
    s = delta / np.where(v > 0, v, 1)
    safe = np.where(delta > 0, delta, 1)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    return np.where(delta > 0, np.mod(h / 6, 1), 0).astype(np.float32), s, v


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The sector formula in closed form: channel ``n`` (5, 3, 1 for r, g, b) is ``v − v·s·clip(min(k,
    4 − k), 0, 1)`` with ``k = (n + 6h) mod 6``."""
    channels = []
    for n in (5, 3, 1):
        k = np.mod(n + 6 * h, 6)
        channels.append(v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1))
    return np.stack(channels)


# -- the dataset ---------------------------------------------------------------------------------------------


class DetectionDataset(torch.utils.data.Dataset):
    """Images and their targets, resized to the network (letterboxed or not) and, for training, augmented.

    All labels are read (and checked) when the dataset is made, so a bad label is one error up front, not a
    failure inside a DataLoader worker. ``missing_labels`` counts the images that have no label file.
    """

    def __init__(
        self,
        images: Sequence[str | Path],
        net_wh: tuple[int, int],
        classes: int,
        channels: int = 3,
        letterbox: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
    ):
        self.images = [Path(p) for p in images]
        self.net_wh = net_wh
        self.channels = channels
        self.letterbox = letterbox
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        labels = [find_label(image) for image in self.images]
        self.missing_labels = sum(label is None for label in labels)
        empty = np.zeros((0, 5), dtype=np.float32)
        self.labels = [read_labels(label, classes) if label else empty for label in labels]

    @classmethod
    def from_data(
        cls, data: DataSpec | str | Path, split: str, graph: Graph, augment: bool | None = None, seed: int = 0
    ) -> DetectionDataset:
        """The ``train`` or ``valid`` images of a ``.data`` file, sized for ``graph``'s input; augmented for
        ``train`` unless ``augment`` says otherwise (with ``[net]``/``[yolo]``'s augmentation settings)."""
        spec = data if isinstance(data, DataSpec) else read_data_file(data)
        augmenting = split == "train" if augment is None else augment
        net = graph.net
        return cls(
            spec.image_list(split),
            (net.width, net.height),
            spec.classes,
            channels=net.channels,
            letterbox=bool(net.letter_box),
            augment=Augment.from_graph(graph) if augmenting else None,
            seed=seed,
        )

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of augmentations (call once per epoch, before iterating)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image, targets = self.sample(index)
        return torch.from_numpy(image), torch.from_numpy(targets), str(self.images[index])

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(C×H×W float32 image, K×5 targets)`` as the network sees them (numpy)."""
        if self.augment is None:
            img = self._load(index)
            image_wh = (img.shape[2], img.shape[1])
            if self.letterbox:
                targets = letterbox_targets(self.labels[index], image_wh, self.net_wh)
                return letterbox_image(img, *self.net_wh), targets
            return resize_image(img, *self.net_wh), self.labels[index].copy()
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if self.augment.mosaic and rng.random() < MOSAIC_SHARE:
            return self._mosaic(index, rng)
        img = self._load(index)
        out, targets = self._apply(img, self.labels[index], self._draw(img, rng))
        return out, clip_targets(targets, (MIN_BOX_PIXELS / self.net_wh[0], MIN_BOX_PIXELS / self.net_wh[1]))

    def _load(self, index: int) -> np.ndarray:
        return load_image(self.images[index], self.channels)

    def _draw(self, img: np.ndarray, rng: np.random.Generator) -> _Draw:
        assert self.augment is not None
        image_wh = (img.shape[2], img.shape[1])
        return _draw(rng, self.augment, _base_window(image_wh, self.net_wh, self.letterbox))

    def _apply(self, img: np.ndarray, targets: np.ndarray, draw: _Draw) -> tuple[np.ndarray, np.ndarray]:
        """The image at network size and its (unclipped) targets after ``draw``'s crop, flip and colours."""
        image_wh = (img.shape[2], img.shape[1])
        out = resize_image(_crop(img, draw.window), *self.net_wh)
        targets = _window_targets(targets, image_wh, draw.window)
        if draw.flip:
            out = np.ascontiguousarray(out[:, :, ::-1])
            targets[:, 1] = 1.0 - targets[:, 1]
        return distort_hsv(out, draw.hue, draw.saturation, draw.exposure), targets

    def _mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Four augmented images around a random centre point, each showing the quadrant nearest its inner
        corner (darknet's ``load_data_detection`` with ``mosaic=1``)."""
        net_w, net_h = self.net_wh
        low, high = MOSAIC_CENTRE
        centre = (
            int(rng.integers(int(net_w * low), int(net_w * high), endpoint=True)),
            int(rng.integers(int(net_h * low), int(net_h * high), endpoint=True)),
        )
        canvas = np.empty((self.channels, net_h, net_w), dtype=np.float32)
        targets = [
            self._paste_tile(canvas, quadrant, image_index, centre, rng)
            for quadrant, image_index in enumerate(self._mosaic_images(index, rng))
        ]
        return canvas, np.concatenate(targets)

    def _paste_tile(
        self, canvas: np.ndarray, quadrant: int, index: int, centre: tuple[int, int], rng: np.random.Generator
    ) -> np.ndarray:
        """Augment image ``index``, paste its part into ``quadrant`` of ``canvas``; its targets there."""
        img = self._load(index)
        image_wh = (img.shape[2], img.shape[1])
        draw = self._draw(img, rng)
        if rng.random() < 0.5:
            draw = replace(draw, window=_to_corner(draw.window, image_wh, quadrant, draw.flip))
        tile, targets = self._apply(img, self.labels[index], draw)
        region = _quadrant(quadrant, centre, self.net_wh)
        x, y = offset = _tile_offset(
            quadrant, centre, self.net_wh, _fill(draw.window, image_wh, self.net_wh, draw.flip)
        )
        left, top, right, bottom = region
        canvas[:, top:bottom, left:right] = tile[:, top - y : bottom - y, left - x : right - x]
        return _quadrant_targets(targets, self.net_wh, region, offset)

    def _mosaic_images(self, index: int, rng: np.random.Generator) -> list[int]:
        """The sample and three other images (distinct where the dataset has enough), the sample in a random
        quadrant."""
        others = len(self.images) - 1
        picks = [index] * 3
        if others > 0:
            picks = [int(p) + int(p >= index) for p in rng.choice(others, size=3, replace=others < 3)]
        picks.insert(int(rng.integers(4)), index)
        return picks


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, str]]):
    """``(images N×C×H×W, targets M×6 [image_index, class, cx, cy, w, h], paths)``."""
    images = torch.stack([image for image, _, _ in batch])
    rows = [
        torch.cat([torch.full((len(t), 1), float(i), dtype=t.dtype), t], dim=1)
        for i, (_, t, _) in enumerate(batch)
    ]
    targets = torch.cat(rows) if rows else torch.zeros((0, 6))
    return images, targets, [path for _, _, path in batch]


def make_loader(
    dataset: DetectionDataset, batch_size: int, shuffle: bool = False, workers: int = 0, seed: int = 0
) -> torch.utils.data.DataLoader:
    """A DataLoader with :func:`collate`; with ``shuffle``, the order is seeded by ``seed`` and the epoch."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + dataset.epoch)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        persistent_workers=False,
    )


# -- multi-scale training ------------------------------------------------------------------------------------

MULTISCALE_EVERY = 10  # darknet draws a new input size every 10 iterations
MULTISCALE_LAST_STEPS = 100  # and trains the last 100 at the largest size


class MultiScale(NamedTuple):
    """What ``random=`` asks for: sizes from about ``net / factor`` to ``net · factor``, in multiples of
    ``resize_step``."""

    factor: float
    resize_step: int


def multiscale_settings(graph: Graph) -> MultiScale | None:
    """The multi-scale training the cfg asks for, None if it does not.

    darknet reads ``random`` of the *last* [yolo]/[region] section only (``train_detector``), as a float:
    0 is off, exactly 1 means the factor 1.4, any other value is the factor itself (``random=1.5``). A
    factor below 1 draws from the same range as its inverse, so it is inverted. ``resize_step`` comes from
    [net] (default 32, read as a float and truncated).
    """
    heads = _heads(graph)
    if not heads:
        return None
    random = _option(heads[-1], "random", 0.0, float)
    if random < 0:
        raise CfgError(f"option 'random' must be 0, 1 or a factor, not {random}", heads[-1].where("random"))
    if random == 0:
        return None
    resize_step = int(_option(graph.net, "resize_step", 32.0, float))
    if resize_step <= 0:
        raise CfgError("option 'resize_step' must be positive", graph.net.where("resize_step"))
    return MultiScale(1.4 if random == 1 else max(random, 1 / random), resize_step)


def multiscale_size(
    net_wh: tuple[int, int],
    step: int,
    seed: int,
    every: int = MULTISCALE_EVERY,
    factor: float = 1.4,
    resize_step: int = 32,
    total_steps: int | None = None,
) -> tuple[int, int]:
    """The input size (width, height) of optimizer ``step`` under darknet's ``random=1`` multi-scale training.

    One size per window of ``every`` steps, drawn from ``(seed, window)`` alone: darknet's
    ``rand_scale(factor)`` (a scale in [1, factor], inverted half of the time) applied to both sides, each
    rounded as darknet does, ``round(scale · side / resize_step + 1) · resize_step`` — note the ``+ 1``: for
    416 and 1.4 the sizes are 320, 352, … 608; a scale below 1 that rounds above the cfg's size gives the
    cfg's size. Like darknet, the
    first window and the windows that start in the last 100 of ``total_steps`` (when given) use the largest
    size (darknet checks memory first and trains the end at full size). Targets are normalised, so only
    the images change (:func:`resize_batch`). Differences: darknet counts windows from the start of each
    process, not from step 0, and its ``dynamic_minibatch`` (batch size following the area) is not done.
    """
    window = step // every
    at_end = total_steps is not None and window * every > total_steps - MULTISCALE_LAST_STEPS
    largest = window == 0 or at_end
    scale = factor if largest else _rand_scale(np.random.default_rng((seed, window)), factor)
    width, height = (_size_multiple(scale, side, resize_step) for side in net_wh)
    if scale < 1 and (width > net_wh[0] or height > net_wh[1]):
        return net_wh
    return width, height


def _size_multiple(scale: float, side: int, resize_step: int) -> int:
    """darknet's ``roundl(scale · side / resize_step + 1) · resize_step`` in float32, at least one step."""
    steps = np.float32(scale) * np.float32(side) / np.float32(resize_step) + np.float32(1)
    return max(int(math.floor(steps + 0.5)) * resize_step, resize_step)  # roundl: halves away from zero


def resize_batch(images: torch.Tensor, wh: tuple[int, int]) -> torch.Tensor:
    """An ``N×C×H×W`` batch resized to ``wh`` (width, height) bilinearly, with darknet's ``resize_image``
    sampling (corner pixels aligned). darknet loads each photo at the new size instead; resizing the
    batch costs one more interpolation but keeps the data loader at one size."""
    width, height = wh
    if images.shape[-2:] == (height, width):
        return images
    return torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=True)
