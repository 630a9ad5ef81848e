"""``darknet detector test`` in numpy: load a photo, resize it to the network, decode the heads, threshold,
NMS and print the lines darknet prints (``-ext_output``), plus JSON and an annotated PNG.

Every step follows darknet (AlexeyAB) closely enough to give its numbers: the photo is resized or
letterboxed by :mod:`cfgsurgeon.images` (bit-exact float32), the boxes and class probabilities are float32
as in darknet's ``detection`` structs, and the filters are darknet's:
``get_network_boxes`` (objectness > thresh for [yolo]; a class probability is kept only when > thresh),
``correct_yolo_boxes`` (undo letterboxing), ``do_nms_sort`` / ``diounms_sort`` (chosen by the last head's
``nms_kind``) and ``draw_detections_v3`` (print order). Fed stb-decoded pixels, yolov3-tiny prints exactly
darknet's lines for the zoo photos; the decoder here is Pillow's (libjpeg), whose pixels differ from stb's by
up to 3/255, which moves a probability by at most a point and a box by at most a pixel there.

The network itself runs in a runtime (``cfgsurgeon.runtimes``: torch, onnxruntime, openvino), so an exported
model is checked by exactly this pipeline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import layers as L
from .errors import UsageError
from .files import atomic_output
from .images import letterbox_size, load_image, network_input, open_rgb
from .ir import Graph
from .postprocess import decode
from .runtimes import Runner


@dataclass(frozen=True)
class Detection:
    """One line of darknet's output: a class of a box whose probability passed the threshold.

    ``box`` is ``(left, top, width, height)`` in pixels of the photo, unrounded (float32 arithmetic, as
    darknet computes them before ``round``); it may extend past the photo's border.
    """

    class_id: int
    name: str
    prob: float
    box: tuple[float, float, float, float]

    @property
    def corners(self) -> tuple[float, float, float, float]:
        """The box as ``(x1, y1, x2, y2)``: its left, top, right and bottom edges in pixels of the photo."""
        left, top, width, height = self.box
        return (left, top, left + width, top + height)

    @property
    def rounded_box(self) -> tuple[int | None, ...]:
        """The box as darknet prints it (C ``round``: halves away from zero); None for inf or nan."""
        return tuple(int(_c_round(v)) if math.isfinite(v) else None for v in self.box)


@dataclass
class _Candidates:
    """darknet's ``detection`` array for one image: boxes relative to the image, objectness, class probs."""

    boxes: np.ndarray  # (n, 4) float32 centre x, centre y, width, height
    objectness: np.ndarray  # (n,) float32
    probs: np.ndarray  # (n, classes) float32, 0 where not above the threshold


# -- backends ------------------------------------------------------------------------------------------------


def head_layers(graph: Graph) -> list[L.Layer]:
    """The layers whose outputs ``detector test`` decodes, in cfg order."""
    if any(isinstance(layer, L.Detection) for layer in graph.layers):
        raise UsageError(f"{graph.source}: [detection] (YOLOv1) heads are not supported by detect")
    heads = [layer for layer in graph.layers if isinstance(layer, L.ANCHOR_HEADS)]
    for layer in heads:
        if layer.options.get("tree"):  # darknet itself: hierarchy_top_prediction reads tree->child, never set
            raise UsageError(
                f"{graph.source}: layer {layer.index} [region] has a softmax tree; detect does not decode "
                "those (darknet's detector test reads tree links its read_tree never fills)"
            )
    if not heads:
        raise UsageError(f"{graph.source}: the model has no [yolo], [Gaussian_yolo] or [region] layer")
    return heads


# -- one photo, end to end ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageResult:
    image: Path
    size: tuple[int, int]  # the photo's width, height
    millis: float  # the network's forward pass only, as darknet's "Predicted in"
    detections: list[Detection]


def detect_image(
    graph: Graph, runner: Runner, path: str | Path, names: Sequence[str], thresh: float = 0.25
) -> ImageResult:
    """Load, resize, run, decode and filter one photo like ``darknet detector test``."""
    img = load_image(path, graph.net.channels)
    batch = network_input(graph, img)[None]
    start = time.perf_counter()
    outputs = runner(batch)
    millis = (time.perf_counter() - start) * 1000.0
    size = (img.shape[2], img.shape[1])
    found = detections(graph, [out[0] for out in outputs], size, thresh=thresh, names=names)
    return ImageResult(Path(path), size, millis, found)


def class_count(graph: Graph) -> int:
    """The number of classes of the model's detection heads (refused when they disagree)."""
    return _common_classes(head_layers(graph))


def check_names(graph: Graph, names: list[str], source: str | Path, warn: Callable[[str], None]) -> list[str]:
    """Refuse a names file with fewer names than the model has classes; warn when it has more."""
    classes = class_count(graph)
    if len(names) < classes:
        raise UsageError(f"{len(names)} class names, but the model has {classes} classes", str(source))
    if len(names) > classes:
        warn(f"{source}: {len(names)} class names for {classes} classes; the extra names are not used")
    return names


def check_images(images: Sequence[Path]) -> None:
    """Refuse a photo that is not a file (before a model is loaded to look at it)."""
    for image in images:
        if not Path(image).is_file():
            raise UsageError("no such image file", str(image))


def output_paths(images: Sequence[Path], outdir: Path) -> list[Path]:
    """``outdir/<stem>.png`` per photo; refuses missing photos and two photos drawn to one file."""
    check_images(images)
    outputs: dict[Path, Path] = {}
    for image in images:
        out = Path(outdir) / f"{Path(image).stem}.png"
        if out in outputs:
            raise UsageError(
                f"{outputs[out]} and {image} would both be drawn to {out}; detect them separately"
            )
        outputs[out] = Path(image)
    return list(outputs)


# -- boxes: get_network_boxes ------------------------------------------------------------------------------


def detections(
    graph: Graph,
    head_outputs: Sequence[np.ndarray],
    image_wh: tuple[int, int],
    thresh: float = 0.25,
    hier_thresh: float = 0.5,
    nms: float = 0.45,
    names: Sequence[str] | None = None,
) -> list[Detection]:
    """What ``darknet detector test`` prints for one image, in its order.

    ``head_outputs``: one array per :func:`head_layers` entry, for this image only (no batch axis).
    ``hier_thresh`` is accepted for darknet's signature; like darknet, [yolo] and [region] ignore it.
    ``names`` defaults to the class numbers; names starting with ``dont_show`` are never a box's main class.
    """
    del hier_thresh  # only darknet's softmax-tree regions use it; head_layers refuses those
    heads = head_layers(graph)
    if len(head_outputs) != len(heads):
        raise ValueError(f"{len(head_outputs)} head outputs for {len(heads)} detection heads")
    classes = _common_classes(heads)
    names = list(names) if names is not None else [str(i) for i in range(classes)]
    if len(names) < classes:
        raise UsageError(f"{len(names)} class names for a model with {classes} classes")
    with np.errstate(over="ignore", invalid="ignore"):  # untrained weights can give infinite boxes
        return _detections(graph, heads, head_outputs, image_wh, np.float32(thresh), np.float32(nms), names)


def _detections(
    graph: Graph,
    heads: list[L.Layer],
    head_outputs: Sequence[np.ndarray],
    image_wh: tuple[int, int],
    thresh: np.float32,
    nms: np.float32,
    names: list[str],
) -> list[Detection]:
    parts = [
        _head_candidates(layer, out, graph, thresh) for layer, out in zip(heads, head_outputs, strict=True)
    ]
    found = _Candidates(
        boxes=np.concatenate([p.boxes for p in parts]),
        objectness=np.concatenate([p.objectness for p in parts]),
        probs=np.concatenate([p.probs for p in parts]),
    )
    if graph.net.letter_box:
        found.boxes = correct_letterbox(found.boxes, image_wh, (graph.net.width, graph.net.height))
    if nms:
        kind, beta = nms_settings(heads[-1])
        found = _drop_zero_objectness(found)
        found.probs = nms_sort(found.boxes, found.probs, nms, kind, beta)
    return _print_order(found, image_wh, thresh, names)


def _common_classes(heads: list[L.Layer]) -> int:
    counts = {layer.classes for layer in heads}
    if len(counts) != 1:
        raise UsageError(f"the detection heads disagree on the number of classes ({sorted(counts)})")
    return counts.pop()


def _head_candidates(layer: L.Layer, output: np.ndarray, graph: Graph, thresh: np.float32) -> _Candidates:
    net_hw = (graph.net.height, graph.net.width)
    rows = decode(layer, output, net_hw)
    if isinstance(layer, L.Region):
        return _region_candidates(layer, rows, thresh)
    keep = rows[:, 4].astype(np.float32) > thresh
    boxes = rows[keep, :4].astype(np.float32)
    objectness = rows[keep, 4].astype(np.float32)
    probs = rows[keep, 5:].astype(np.float32)
    return _Candidates(boxes, objectness, np.where(probs > thresh, probs, np.float32(0)))


def _region_candidates(layer: L.Region, rows: np.ndarray, thresh: np.float32) -> _Candidates:
    """[region]: every box is a candidate (objectness 1); ``classfix=-1`` zeroes objectness below .5."""
    probs = rows[:, 5:].astype(np.float32)  # the float64 product of two float32s, rounded as darknet's
    if layer.options.get("classfix", "0").strip() == "-1":
        probs[rows[:, 4] < 0.5] = 0
    return _Candidates(
        boxes=rows[:, :4].astype(np.float32),
        objectness=np.ones(len(rows), dtype=np.float32),
        probs=np.where(probs > thresh, probs, np.float32(0)),
    )


def correct_letterbox(boxes: np.ndarray, image_wh: tuple[int, int], net_wh: tuple[int, int]) -> np.ndarray:
    """darknet's ``correct_yolo_boxes`` with ``letter``: network-relative boxes → photo-relative boxes."""
    (image_w, image_h), (net_w, net_h) = image_wh, net_wh
    new_w, new_h = letterbox_size(image_w, image_h, net_w, net_h)
    ratio_w, ratio_h = np.float32(new_w) / np.float32(net_w), np.float32(new_h) / np.float32(net_h)
    b = boxes.astype(np.float32).copy()
    b[:, 0] = ((b[:, 0] - (net_w - new_w) / 2.0 / net_w) / np.float64(ratio_w)).astype(np.float32)
    b[:, 1] = ((b[:, 1] - (net_h - new_h) / 2.0 / net_h) / np.float64(ratio_h)).astype(np.float32)
    b[:, 2] *= np.float32(1) / ratio_w
    b[:, 3] *= np.float32(1) / ratio_h
    return b


# -- NMS: do_nms_sort / diounms_sort -------------------------------------------------------------------------

# [yolo] reads cornersnms as default; [Gaussian_yolo] as corners, whose only effect is plain IoU suppression.
NMS_KINDS = {"default": "iou", "greedynms": "diou", "diounms": "diounms", "cornersnms": "iou"}


def nms_settings(layer: L.Layer) -> tuple[str, float]:
    """``(kind, beta_nms)`` from a head's options, as darknet parses them (unknown kinds → plain IoU)."""
    if not isinstance(layer, L.Yolo):
        return "iou", 0.6
    kind = NMS_KINDS.get(layer.options.get("nms_kind", "default").strip(), "iou")
    return kind, float(layer.options.get("beta_nms", "0.6"))


def _drop_zero_objectness(found: _Candidates) -> _Candidates:
    keep = found.objectness != 0
    return _Candidates(found.boxes[keep], found.objectness[keep], found.probs[keep])


# Boxes up to which nms_sort holds the boxes' pairwise "too close" flags in memory (N² bytes: 256 MiB).
PAIRWISE_LIMIT = 16384
_ROWS_PER_BLOCK = 256  # rows of the pairwise overlap computed at a time (float32 temporaries: 256 × N each)


def nms_sort(
    boxes: np.ndarray, probs: np.ndarray, thresh: float, kind: str = "iou", beta: float = 0.6
) -> np.ndarray:
    """Per class, by probability descending: zero the class in every later box too close to a kept one.

    ``kind``: ``iou`` (``do_nms_sort``), ``diou`` (greedynms: IoU − (d²/c²)^0.6) or ``diounms``
    (IoU − (d²/c²)^beta). Returns new probabilities; boxes are float32 ``(x, y, w, h)``.
    Closeness does not depend on the class, so it is computed once for every pair of boxes (the same float32
    arithmetic as one box against the rest), and each class's greedy pass only reads it.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    probs = np.array(probs, dtype=np.float32, copy=True)
    limit = np.float32(thresh)
    candidates = np.flatnonzero((probs > 0).any(axis=1))
    if len(candidates) > PAIRWISE_LIMIT:
        return _nms_sort_per_box(boxes, probs, limit, kind, beta)
    close = _close_pairs(boxes[candidates], limit, kind, beta)
    position = np.full(len(boxes), -1)
    position[candidates] = np.arange(len(candidates))
    for k in range(probs.shape[1]):
        order = np.argsort(-probs[:, k], kind="stable")
        order = order[probs[order, k] > 0]
        rows = position[order]
        alive = np.ones(len(order), dtype=bool)
        for pos in range(len(order) - 1):
            if alive[pos]:
                alive[pos + 1 :] &= ~close[rows[pos], rows[pos + 1 :]]
        probs[order[~alive], k] = 0
    return probs


def _close_pairs(boxes: np.ndarray, limit: np.float32, kind: str, beta: float) -> np.ndarray:
    """``close[i, j]``: box j is too close to box i to survive it (overlap score above ``limit``)."""
    close = np.empty((len(boxes), len(boxes)), dtype=bool)
    for start in range(0, len(boxes), _ROWS_PER_BLOCK):
        block = boxes[start : start + _ROWS_PER_BLOCK, None, :]
        close[start : start + _ROWS_PER_BLOCK] = _overlap_score(block, boxes, kind, beta) > limit
    return close


def _nms_sort_per_box(
    boxes: np.ndarray, probs: np.ndarray, limit: np.float32, kind: str, beta: float
) -> np.ndarray:
    """:func:`nms_sort` one kept box at a time (for more boxes than the pairwise flags may hold)."""
    for k in range(probs.shape[1]):
        order = np.argsort(-probs[:, k], kind="stable")
        order = order[probs[order, k] > 0]
        for pos, i in enumerate(order[:-1]):
            if probs[i, k] == 0:
                continue
            later = order[pos + 1 :]
            close = _overlap_score(boxes[i], boxes[later], kind, beta) > limit
            probs[later[close], k] = 0
    return probs


def _overlap_score(a: np.ndarray, b: np.ndarray, kind: str, beta: float) -> np.ndarray:
    iou = box_iou(a, b)
    if kind == "iou":
        return iou
    exponent = 0.6 if kind == "diou" else beta
    return iou - _centre_penalty(a, b, exponent)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """darknet's ``box_iou`` (float32) between boxes ``a`` and ``b``, ``(x, y, w, h)`` in the last axis,
    broadcast (one box against many: ``a`` (4,), ``b`` (N, 4); all pairs: ``a`` (M, 1, 4), ``b`` (N, 4))."""
    half = np.float32(2)
    ax, ay, aw, ah = (a[..., i] for i in range(4))
    bx, by, bw, bh = (b[..., i] for i in range(4))
    inter_w = np.minimum(ax + aw / half, bx + bw / half) - np.maximum(ax - aw / half, bx - bw / half)
    inter_h = np.minimum(ay + ah / half, by + bh / half) - np.maximum(ay - ah / half, by - bh / half)
    inter = np.where((inter_w < 0) | (inter_h < 0), np.float32(0), inter_w * inter_h)
    union = aw * ah + bw * bh - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((inter == 0) | (union == 0), np.float32(0), inter / union).astype(np.float32)


def _centre_penalty(a: np.ndarray, b: np.ndarray, exponent: float) -> np.ndarray:
    """``(d² / c²)^exponent``: centre distance over the enclosing box's diagonal (0 where c² is 0)."""
    half = np.float32(2)
    ax, ay, aw, ah = (a[..., i] for i in range(4))
    bx, by, bw, bh = (b[..., i] for i in range(4))
    enclose_w = np.maximum(ax + aw / half, bx + bw / half) - np.minimum(ax - aw / half, bx - bw / half)
    enclose_h = np.maximum(ay + ah / half, by + bh / half) - np.minimum(ay - ah / half, by - bh / half)
    c = enclose_w * enclose_w + enclose_h * enclose_h
    d = (ax - bx) * (ax - bx) + (ay - by) * (ay - by)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(c == 0, np.float32(0), d / c)
    penalty = np.power(ratio.astype(np.float64), exponent).astype(np.float32)
    return np.where(c == 0, np.float32(0), penalty)


# -- draw_detections_v3's text order -------------------------------------------------------------------------


def _print_order(
    found: _Candidates, image_wh: tuple[int, int], thresh: np.float32, names: list[str]
) -> list[Detection]:
    """Boxes with a class above ``thresh``, by left edge; per box its best class, then the others in order."""
    shown = np.array([not name.startswith("dont_show") for name in names[: found.probs.shape[1]]])
    masked = np.where(shown, found.probs, np.float32(0))
    selected = np.flatnonzero((masked > thresh).any(axis=1))
    lefts = found.boxes[selected, 0] - found.boxes[selected, 2] / np.float32(2)
    selected = selected[np.argsort(lefts, kind="stable")]
    result: list[Detection] = []
    for i in selected:
        best = int(np.argmax(masked[i]))  # the first of equal maxima, as darknet's strict '>' scan
        others = [j for j in np.flatnonzero(found.probs[i] > thresh) if j != best]
        box = _pixel_box(found.boxes[i], image_wh)
        result.extend(Detection(int(j), names[j], float(found.probs[i, j]), box) for j in [best, *others])
    return result


def _pixel_box(box: np.ndarray, image_wh: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(left, top, width, height)`` in pixels, in float32 as darknet computes them before rounding."""
    x, y, w, h = (np.float32(v) for v in box)
    iw, ih = np.float32(image_wh[0]), np.float32(image_wh[1])
    half = np.float32(2)
    return (float((x - w / half) * iw), float((y - h / half) * ih), float(w * iw), float(h * ih))


def _c_round(value: float) -> float:
    """C's ``round``: halves away from zero (Python's ``round`` goes to even); inf and nan stay."""
    if not math.isfinite(value):
        return value
    return math.copysign(math.floor(abs(value) + 0.5), value)


# -- output --------------------------------------------------------------------------------------------------


def percent(prob: float) -> str:
    """darknet's ``%.0f`` of ``prob * 100`` (the product in float32)."""
    return f"{float(np.float32(prob) * np.float32(100)):.0f}"


def format_darknet(dets: Sequence[Detection]) -> list[str]:
    """The lines ``darknet detector test -ext_output`` prints, one per detection."""
    lines = []
    for det in dets:
        left, top, width, height = (_c_round(v) for v in det.box)
        lines.append(
            f"{det.name}: {percent(det.prob)}%\t(left_x: {left:4.0f}   top_y: {top:4.0f}   "
            f"width: {width:4.0f}   height: {height:4.0f})"
        )
    return lines


def to_json(image: str, dets: Sequence[Detection]) -> list[dict]:
    """``[{"image", "class", "name", "prob", "box": [left, top, width, height]}]``, box in whole pixels."""
    return [
        {
            "image": image,
            "class": det.class_id,
            "name": det.name,
            "prob": round(det.prob, 4),
            "box": list(det.rounded_box),
        }
        for det in dets
    ]


# -- drawing -------------------------------------------------------------------------------------------------

_PALETTE = ((1, 0, 1), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 0, 0))


def class_colour(class_id: int, classes: int) -> tuple[int, int, int]:
    """darknet's box colour for a class (``get_color`` on offset ``class·123457 mod classes``)."""
    offset = class_id * 123457 % max(classes, 1)
    ratio = offset / max(classes, 1) * 5
    lo, hi = math.floor(ratio), math.ceil(ratio)
    frac = ratio - lo
    channel = [(1 - frac) * _PALETTE[lo][c] + frac * _PALETTE[hi][c] for c in (2, 1, 0)]
    return tuple(int(round(255 * v)) for v in channel)  # type: ignore[return-value]


def _grouped(dets: Sequence[Detection]) -> list[list[Detection]]:
    """Detections of the same box together (the box's best class first), as darknet draws one box each."""
    groups: dict[tuple[float, ...], list[Detection]] = {}
    for det in dets:
        groups.setdefault(det.box, []).append(det)
    return list(groups.values())


def draw(image_path: str | Path, dets: Sequence[Detection], out_png: str | Path, classes: int = 80) -> None:
    """Write the photo with a coloured box and a ``name prob%`` label per box, as a PNG (atomically)."""
    from PIL import ImageDraw, ImageFont

    image = open_rgb(image_path)
    canvas = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, round(image.height * 0.03)))
    width = max(2, round(image.height * 0.005))
    for group in sorted(_grouped(dets), key=lambda g: g[0].prob):  # strongest drawn last, on top
        colour = class_colour(group[0].class_id, classes)
        left, top, right, bottom = _clipped(group[0].box, image.size)
        canvas.rectangle((left, top, right, bottom), outline=colour, width=width)
        label = ", ".join(f"{det.name} {percent(det.prob)}%" for det in group)
        _label(canvas, font, label, (left, top), colour)
    with atomic_output(out_png) as out:
        image.save(out, format="PNG")


def _clipped(box: tuple[float, ...], size: tuple[int, int]) -> tuple[int, int, int, int]:
    left, top, w, h = box
    return (
        max(0, int(left)),
        max(0, int(top)),
        min(size[0] - 1, int(left + w)),
        min(size[1] - 1, int(top + h)),
    )


def _label(canvas, font, text: str, corner: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """Text on a filled strip in the box colour: above the box when there is room, else inside it."""
    x0, y0, x1, y1 = canvas.textbbox((0, 0), text, font=font)
    pad = 2
    text_h = y1 - y0 + 2 * pad
    left, top = corner
    y = top - text_h if top - text_h >= 0 else top
    canvas.rectangle((left, y, left + x1 - x0 + 2 * pad, y + text_h), fill=colour)
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luma > 128 else (255, 255, 255)
    canvas.text((left + pad - x0, y + pad - y0), text, fill=ink, font=font)
