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
shift, saturation and exposure scales from ``[net]``). Mosaic is not implemented. Every random draw comes from
a generator seeded with ``(seed, epoch, index)``, so batches do not depend on worker count or order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import layers as L
from ..detect import letterbox_image, letterbox_size, load_image, load_names, resize_image
from ..errors import Location, UsageError
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


@dataclass(frozen=True)
class Augment:
    """darknet's training augmentation: ``jitter`` (per [yolo]), ``hue``, ``saturation``, ``exposure`` and
    ``flip`` (from [net]; darknet's defaults)."""

    jitter: float = 0.2
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    flip: bool = True

    @classmethod
    def from_graph(cls, graph: Graph) -> Augment:
        net = graph.net.options
        heads = [layer for layer in graph.layers if isinstance(layer, L.Yolo | L.Region)]
        jitter = float(heads[0].options.get("jitter", "0.2")) if heads else 0.2
        return cls(
            jitter=min(max(jitter, 0.0), 0.45),  # darknet's crop must keep a positive size
            hue=float(net.get("hue", "0")),
            saturation=float(net.get("saturation", "1")),
            exposure=float(net.get("exposure", "1")),
            flip=net.get("flip", "1").strip() != "0",
        )


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
        img = load_image(self.images[index], self.channels)
        image_wh = (img.shape[2], img.shape[1])
        targets = self.labels[index]
        if self.augment is None:
            if self.letterbox:
                return letterbox_image(img, *self.net_wh), letterbox_targets(targets, image_wh, self.net_wh)
            return resize_image(img, *self.net_wh), targets.copy()
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return self._augmented(img, targets, rng)

    def _augmented(
        self, img: np.ndarray, targets: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        aug = self.augment
        assert aug is not None
        image_wh = (img.shape[2], img.shape[1])
        window = _jitter_window(rng, _base_window(image_wh, self.net_wh, self.letterbox), aug.jitter)
        out = resize_image(_crop(img, window), *self.net_wh)
        targets = _window_targets(targets, image_wh, window)
        if aug.flip and rng.random() < 0.5:
            out = np.ascontiguousarray(out[:, :, ::-1])
            targets[:, 1] = 1.0 - targets[:, 1]
        hue = rng.uniform(-aug.hue, aug.hue)
        out = distort_hsv(out, hue, _rand_scale(rng, aug.saturation), _rand_scale(rng, aug.exposure))
        min_size = (MIN_BOX_PIXELS / self.net_wh[0], MIN_BOX_PIXELS / self.net_wh[1])
        return out, clip_targets(targets, min_size)


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
