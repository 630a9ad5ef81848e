"""Detection metrics: P, R, mAP@0.5 and mAP@0.5:0.95, per class and overall, computed as COCO does.

* Detections are what ``darknet detector map`` scores: every (box, class) pair whose probability
  (objectness × class score) is above ``conf_thresh`` (0.001) after darknet's per-class NMS
  (:func:`cfgsurgeon.detect.detections`, ``iou_thresh`` 0.45).
* Matching (COCO ``evaluateImg``): per image and class, detections by descending score each take the
  still-unmatched ground truth of highest IoU, if that IoU is at least the threshold (on equal IoUs the later
  truth); unmatched detections are false positives. No crowd regions, one area range (all), no cap on the
  detections per image.
* AP (COCO ``accumulate``): detections of a class pooled over the images (in image order, stable-sorted by
  score), precision made non-increasing from the right, then sampled at the 101 recall points 0, 0.01, …, 1
  (the precision at the first rank reaching that recall, 0 where it is never reached) and averaged. AP@0.5
  uses IoU 0.5; AP@0.5:0.95 averages IoU 0.50, 0.55, …, 0.95. mAP averages the classes that have ground truth
  (a class without any is left out, as COCO's -1).
* P and R: at confidence ``pr_thresh`` (0.25, the point darknet prints) and IoU 0.5 with the same matching,
  pooled over all classes: P = TP / detections above ``pr_thresh``, R = TP / ground-truth boxes (per class in
  the table). NaN where the denominator is 0 (``null`` in JSON).

Box coordinates may be in any unit (IoU does not change under axis scaling); :func:`predict` uses the
network input normalised to 0…1. :func:`evaluate_data` also maps each detection back to the pixels of its
photo (undoing the letterbox or the plain resize, as ``detect`` does), for the files it can write:

* COCO results JSON (:func:`save_coco_json`): ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``
  with ``bbox`` in photo pixels (left, top, width, height; not clipped to the photo, as scored) and
  ``category_id`` the class's 0-based line in the names file. ``image_id`` is the photo's file name without
  its extension, as an int when every photo's stem is all digits (COCO's ``000000139.jpg`` → 139), else as a
  string for every photo (pycocotools sorts the ids, so they must all be of one type).
* darknet txt (:func:`save_darknet_txt`): ``NAME.txt`` per photo ``NAME.ext``, a line per detection
  ``<class> <cx> <cy> <w> <h> <prob>``, the label layout normalised to the photo, plus the probability.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..files import atomic_output, refuse_overwrite
from ..ir import Graph

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
_IOU_CEILING = 1 - 1e-10  # COCO caps the threshold below 1 so that a perfect box still matches at "1.0"


@dataclass(frozen=True)
class ClassMetrics:
    class_id: int
    name: str
    truths: int
    detections: int  # above pr_thresh
    true_positives: int  # among those, at IoU 0.5
    P: float
    R: float
    AP50: float
    AP50_95: float


@dataclass(frozen=True)
class Metrics:
    P: float
    R: float
    mAP50: float
    mAP50_95: float
    per_class: list[ClassMetrics]
    images: int
    truths: int
    pr_thresh: float

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None."""
        return _json_safe(asdict(self))

    def table_lines(self, all_classes: bool = False) -> list[str]:
        """The per-class table, then the overall line. Without ``all_classes`` a class is listed only when
        it has ground truth or detections above ``pr_thresh`` (a COCO model on 4 classes: 4 rows, not 80)."""
        listed = [c for c in self.per_class if all_classes or c.truths or c.detections]
        lines = [
            f"{'class':<16} {'truths':>7} {'dets':>7} {'P':>7} {'R':>7} {'mAP@.5':>7} {'mAP@.5:.95':>10}"
        ]
        for c in listed:
            lines.append(
                f"{c.name[:16]:<16} {c.truths:>7} {c.detections:>7} {_fmt(c.P):>7} {_fmt(c.R):>7} "
                f"{_fmt(c.AP50):>7} {_fmt(c.AP50_95):>10}"
            )
        detections = sum(c.detections for c in self.per_class)
        lines.append(
            f"{'all':<16} {self.truths:>7} {detections:>7} {_fmt(self.P):>7} {_fmt(self.R):>7} "
            f"{_fmt(self.mAP50):>7} {_fmt(self.mAP50_95):>10}"
        )
        lines.append(
            f"{self.images} images; P and R at confidence > {self.pr_thresh:g} and IoU 0.5; "
            "mAP: COCO 101-point interpolation"
        )
        if len(listed) < len(self.per_class):
            hidden = len(self.per_class) - len(listed)
            lines.append(
                f"{hidden} of {len(self.per_class)} classes have neither truths nor detections: not listed"
            )
        return lines


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# -- scoring -------------------------------------------------------------------------------------------------


def score(
    detections: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    names: Sequence[str],
    pr_thresh: float = 0.25,
    classes: Sequence[int] | None = None,
) -> Metrics:
    """Metrics from per-image ``detections`` (``n×6 [class, score, x0, y0, x1, y1]``) and ``truths``
    (``k×5 [class, x0, y0, x1, y1]``), images in the same order. ``classes`` (ids): score only these, so
    mAP, P and R are over them alone; all of ``names`` by default."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} images")
    dets = [np.asarray(d, dtype=np.float64).reshape(-1, 6) for d in detections]
    gts = [np.asarray(t, dtype=np.float64).reshape(-1, 5) for t in truths]
    chosen = range(len(names)) if classes is None else classes
    per_class = [_class_metrics(k, names[k], dets, gts, pr_thresh) for k in chosen]
    scored = [c for c in per_class if c.truths > 0]
    tp = sum(c.true_positives for c in per_class)
    found = sum(c.detections for c in per_class)
    total = sum(c.truths for c in per_class)
    return Metrics(
        P=tp / found if found else math.nan,
        R=tp / total if total else math.nan,
        mAP50=float(np.mean([c.AP50 for c in scored])) if scored else math.nan,
        mAP50_95=float(np.mean([c.AP50_95 for c in scored])) if scored else math.nan,
        per_class=per_class,
        images=len(gts),
        truths=total,
        pr_thresh=pr_thresh,
    )


def _class_metrics(
    class_id: int, name: str, dets: list[np.ndarray], gts: list[np.ndarray], pr_thresh: float
) -> ClassMetrics:
    scores, matched = [], []
    truths = 0
    for d, g in zip(dets, gts, strict=True):
        d, g = d[d[:, 0] == class_id], g[g[:, 0] == class_id]
        d = d[np.argsort(-d[:, 1], kind="mergesort")]
        truths += len(g)
        scores.append(d[:, 1])
        matched.append(match(iou_matrix(d[:, 2:], g[:, 1:]), IOU_THRESHOLDS))
    all_scores = np.concatenate([np.zeros(0), *scores])
    order = np.argsort(-all_scores, kind="mergesort")
    tp = np.concatenate([np.zeros((len(IOU_THRESHOLDS), 0), bool), *matched], axis=1)[:, order]
    all_scores = all_scores[order]
    above = all_scores > pr_thresh
    tp50 = int(tp[0, above].sum())
    ap = average_precision(tp, truths) if truths else np.full(len(IOU_THRESHOLDS), math.nan)
    return ClassMetrics(
        class_id=class_id,
        name=name,
        truths=truths,
        detections=int(above.sum()),
        true_positives=tp50,
        P=tp50 / int(above.sum()) if above.any() else math.nan,
        R=tp50 / truths if truths else math.nan,
        AP50=float(ap[0]),
        AP50_95=float(np.mean(ap)),
    )


def iou_matrix(boxes: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """IoU of corner boxes ``(n, 4)`` against ``(k, 4)``, in float64 as COCO's ``bbox`` IoU."""
    x0 = np.maximum(boxes[:, None, 0], truths[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], truths[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], truths[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], truths[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_d = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_t = (truths[:, 2] - truths[:, 0]) * (truths[:, 3] - truths[:, 1])
    union = area_d[:, None] + area_t[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match(ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(len(thresholds), n)`` bool: which detections (rows of ``ious``, best score first) are true
    positives, by COCO's greedy matching."""
    n, k = ious.shape
    tp = np.zeros((len(thresholds), n), dtype=bool)
    if not k:
        return tp
    best_possible = ious.max(axis=1)
    for t_index, threshold in enumerate(thresholds):
        limit = min(threshold, _IOU_CEILING)
        taken = np.zeros(k, dtype=bool)
        for d in np.flatnonzero(best_possible >= limit):  # the others cannot match at this threshold
            candidates = np.where(taken, -np.inf, ious[d])
            best = candidates.max()
            if best >= limit:
                g = k - 1 - int(np.argmax(candidates[::-1] == best))  # the last of equal IoUs
                taken[g] = True
                tp[t_index, d] = True
    return tp


def average_precision(tp: np.ndarray, truths: int) -> np.ndarray:
    """101-point interpolated AP per threshold from ``tp`` (thresholds × detections by score)."""
    if tp.shape[1] == 0:
        return np.zeros(len(tp))
    hits = np.cumsum(tp, axis=1, dtype=np.float64)
    misses = np.cumsum(~tp, axis=1, dtype=np.float64)
    recall = hits / truths
    precision = hits / (hits + misses + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # non-increasing from the right
    ap = np.zeros(len(tp))
    for t in range(len(tp)):
        ranks = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        sampled = np.where(ranks < tp.shape[1], precision[t, np.minimum(ranks, tp.shape[1] - 1)], 0.0)
        ap[t] = sampled.mean()
    return ap


# -- running a model -----------------------------------------------------------------------------------------


def predict(
    model,
    dataset,
    conf_thresh: float = 0.001,
    iou_thresh: float = 0.45,
    batch_size: int = 16,
    progress: bool = False,
    runner: Callable[[np.ndarray], list[np.ndarray]] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run ``model`` (a :class:`~cfgsurgeon.emit.torch.DarknetModel`, or a :class:`Graph` with weights) over
    an un-augmented ``dataset``; per image, detections ``n×6`` and truths ``k×5`` in network-input units.
    ``progress``: a bar over the images on stderr, shown only when stderr is a terminal. ``runner``: a
    runtime's runner (``runtimes.make_runner``) runs the network instead, one image at a time, and ``model``
    is the :class:`Graph` it was made from."""
    import torch
    from tqdm import tqdm

    from ..detect import detections as decode_detections
    from ..detect import head_layers
    from ..runtimes import make_runner
    from .dataset import make_loader, to_corners

    if runner is None and not isinstance(model, torch.nn.Module):
        runner = make_runner(model, "torch")  # what detect runs (BN folded), so eval scores detect's boxes
    net = None if runner is not None else model
    graph: Graph = model if net is None else net.graph
    keep = [layer.index for layer in head_layers(graph)]
    net_wh = (graph.net.width, graph.net.height)
    device = torch.device("cpu") if net is None else next(net.parameters(), torch.empty(0)).device
    found, truths = [], []
    was_training = net is not None and net.training
    if net is not None:
        net.eval()
    bar = tqdm(total=len(dataset), desc="eval", unit="image", leave=False, disable=None if progress else True)
    try:
        with torch.inference_mode(), bar:
            for images, targets, _ in make_loader(dataset, batch_size):
                outputs = _head_outputs(net, runner, images.to(device), keep)
                for i in range(len(images)):
                    dets = decode_detections(
                        graph, [out[i] for out in outputs], net_wh, conf_thresh, nms=iou_thresh
                    )
                    found.append(_rows(dets, net_wh))
                    truths.append(to_corners(targets[targets[:, 0] == i, 1:].numpy()))
                bar.update(len(images))
    finally:
        if net is not None:
            net.train(was_training)
    return found, truths


def _head_outputs(net, runner, images, keep: list[int]) -> list[np.ndarray]:
    if runner is None:
        return [out.float().cpu().numpy() for out in net(images, keep=keep)]
    per_image = [runner(image[None]) for image in images.numpy()]  # exported models may have batch 1
    return [np.concatenate(heads) for heads in zip(*per_image, strict=True)]


def _rows(dets, net_wh: tuple[int, int]) -> np.ndarray:
    """Detections → ``[class, prob, x0, y0, x1, y1]`` normalised to the network input."""
    w, h = net_wh
    rows = [
        (d.class_id, d.prob, d.box[0] / w, d.box[1] / h, (d.box[0] + d.box[2]) / w, (d.box[1] + d.box[3]) / h)
        for d in dets
    ]
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def evaluate(
    model,
    dataset,
    conf_thresh: float = 0.001,
    iou_thresh: float = 0.45,
    pr_thresh: float = 0.25,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
) -> Metrics:
    """Metrics of ``model`` on ``dataset`` (see the module's documentation for the definitions)."""
    found, truths = predict(model, dataset, conf_thresh, iou_thresh, batch_size)
    graph = model if isinstance(model, Graph) else model.graph
    if names is None:
        from ..detect import _common_classes, head_layers

        names = [str(i) for i in range(_common_classes(head_layers(graph)))]
    return score(found, truths, names, pr_thresh)


# -- cfgsurgeon eval: a .data file's split, with timing and the boxes in photo pixels ------------------------


@dataclass(frozen=True)
class Preparation:
    """How a photo becomes the network input, as ``detect`` does it: letterboxed (aspect ratio kept, grey
    borders) when the cfg's ``[net]`` says ``letter_box=1``, else resized to width × height."""

    letterbox: bool
    width: int
    height: int

    @classmethod
    def of(cls, graph: Graph) -> Preparation:
        return cls(bool(graph.net.letter_box), graph.net.width, graph.net.height)

    def describe(self) -> str:
        size = f"{self.width}×{self.height}"
        if self.letterbox:
            return f"images letterboxed to {size}: aspect ratio kept, grey borders (the cfg's letter_box=1)"
        return f"images resized to {size} without keeping their aspect ratio (the cfg has no letter_box=1)"

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.describe()}


@dataclass(frozen=True)
class Evaluation:
    """What ``cfgsurgeon eval`` reports and saves."""

    metrics: Metrics
    images: list[Path]
    image_sizes: list[tuple[int, int]]  # each photo's width, height
    detections: list[np.ndarray]  # per photo, n×6 [class, prob, x0, y0, x1, y1] in its pixels
    seconds: float  # predicting and scoring, reading the photos included
    preparation: Preparation
    missing_labels: int  # images without a label file
    classes: list[int] | None  # the classes scored (and kept in ``detections``); None: all
    inputs: list[Path]  # the files read (image list, photos, labels): never written over

    @property
    def ms_per_image(self) -> float:
        return self.seconds * 1000.0 / len(self.images) if self.images else math.nan

    def timing_line(self) -> str:
        """``scored 100 images in 12.3 s (123 ms/image)``."""
        return f"scored {len(self.images)} images in {self.seconds:.1f} s ({self.ms_per_image:.0f} ms/image)"

    def to_dict(self) -> dict:
        """The metrics' dictionary, plus timing, preparation, missing labels and the classes scored."""
        extra = {
            "seconds": self.seconds,
            "ms_per_image": self.ms_per_image,
            "preparation": self.preparation.to_dict(),
            "missing_labels": self.missing_labels,
            "classes": self.classes,
        }
        return _json_safe({**self.metrics.to_dict(), **extra})


def evaluate_data(
    graph: Graph,
    data: str | Path,
    split: str = "valid",
    conf_thresh: float = 0.001,
    iou_thresh: float = 0.45,
    pr_thresh: float = 0.25,
    batch_size: int = 16,
    warn: Callable[[str], None] = print,
    classes: str | None = None,
    progress: bool = False,
    runner: Callable[[np.ndarray], list[np.ndarray]] | None = None,
) -> Evaluation:
    """``cfgsurgeon eval``: ``graph`` (weights loaded) on a ``.data`` file's split. ``classes``: ids or names,
    comma separated (:func:`select_classes`); ``progress``: a bar on a terminal; ``runner``: another runtime
    runs the network (see :func:`predict`).

    A split where no image has a label file is refused (a wrong folder layout, not a dataset without
    objects); when some have none, ``warn`` says how many and names one."""
    from ..detect import _common_classes, head_layers
    from .dataset import DetectionDataset, find_label, read_data_file

    spec = read_data_file(data)
    model_classes = _common_classes(head_layers(graph))
    if model_classes != spec.classes:
        message = f"classes={spec.classes}, but the model has {model_classes} classes"
        raise UsageError(message, str(spec.source))
    chosen = None if classes is None else select_classes(classes, spec.names, spec.source)
    dataset = DetectionDataset.from_data(spec, split, graph, augment=False)
    image_list = spec.train if split == "train" else spec.valid
    labels = [find_label(image) for image in dataset.images]
    _check_labels(dataset.images, labels, image_list, warn)
    start = time.perf_counter()
    found, truths = predict(graph, dataset, conf_thresh, iou_thresh, batch_size, progress, runner)
    metrics = score(found, truths, spec.names, pr_thresh, chosen)
    seconds = time.perf_counter() - start
    if chosen is not None:
        found = [rows[np.isin(rows[:, 0], chosen)] for rows in found]
    preparation = Preparation.of(graph)
    sizes = [_photo_size(image) for image in dataset.images]
    return Evaluation(
        metrics=metrics,
        images=dataset.images,
        image_sizes=sizes,
        detections=[photo_boxes(rows, size, preparation) for rows, size in zip(found, sizes, strict=True)],
        seconds=seconds,
        preparation=preparation,
        missing_labels=dataset.missing_labels,
        classes=chosen,
        inputs=[image_list, *dataset.images, *(label for label in labels if label is not None)],
    )


def select_classes(text: str, names: Sequence[str], source: str | Path) -> list[int]:
    """Class ids from ``text``: ids or names (a name wins over an id), comma separated; sorted, unique."""
    chosen = set()
    for item in (part.strip() for part in text.split(",")):
        if item in names:
            chosen.add(list(names).index(item))
        elif item.isascii() and item.isdigit() and int(item) < len(names):
            chosen.add(int(item))
        else:
            shown = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
            raise UsageError(
                f"unknown class '{item}': expected an id 0..{len(names) - 1} or a name ({shown})", str(source)
            )
    return sorted(chosen)


def _check_labels(images: list[Path], labels: list[Path | None], image_list: Path, warn) -> None:
    from .dataset import label_path

    missing = [image for image, label in zip(images, labels, strict=True) if label is None]
    if not missing:
        return
    example = label_path(missing[0])
    if len(missing) == len(images):
        raise UsageError(
            f"none of its {len(images)} images has a label file (for the first, {missing[0]}, looked for "
            f"{example}: the image's path with the extension .txt, or images/ → labels/)",
            str(image_list),
        )
    warn(
        f"{image_list}: {len(missing)} of {len(images)} images have no label file (counted as images without "
        f"objects), e.g. {example}"
    )


def _photo_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:  # reads the header only
        return image.size


def photo_boxes(rows: np.ndarray, image_wh: tuple[int, int], preparation: Preparation) -> np.ndarray:
    """Detections ``[class, prob, x0, y0, x1, y1]`` normalised to the network input → the same in the photo's
    pixels, undoing the letterbox (darknet's ``correct_yolo_boxes``) or the plain resize."""
    from ..detect import correct_letterbox

    corners = rows[:, 2:6]
    if preparation.letterbox:
        centred = np.c_[(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]]
        boxes = correct_letterbox(centred, image_wh, (preparation.width, preparation.height))
        corners = np.c_[boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2].astype(np.float64)
    out = rows.copy()
    out[:, 2:6] = corners * np.tile(np.asarray(image_wh, dtype=np.float64), 2)
    return out


# -- saving detections ---------------------------------------------------------------------------------------


def image_ids(images: Sequence[Path]) -> list[int | str]:
    """COCO ``image_id`` per photo: its stem, as an int when every stem is all digits (see the module doc)."""
    stems = [Path(image).stem for image in images]
    numeric = all(stem.isascii() and stem.isdigit() for stem in stems)
    ids: list[int | str] = [int(stem) if numeric else stem for stem in stems]
    _refuse_duplicates(ids, images, "image_id")
    return ids


def _refuse_duplicates(keys: Sequence, images: Sequence[Path], what: str) -> None:
    first: dict = {}
    for key, image in zip(keys, images, strict=True):
        if key in first:
            raise UsageError(f"{first[key]} and {image} would both be {what} {key!r}; rename one")
        first[key] = image


def _refuse_overwriting_inputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """:func:`~cfgsurgeon.files.refuse_overwrite` for thousands of files: pairs found by inode, not by
    comparing every output with every input."""
    by_inode = {}
    for source in inputs:
        with contextlib.suppress(OSError):
            stat = source.stat()
            by_inode[(stat.st_dev, stat.st_ino)] = source
    for out in outputs:
        with contextlib.suppress(OSError):
            stat = out.stat()
            if (stat.st_dev, stat.st_ino) in by_inode:
                refuse_overwrite([out], [by_inode[(stat.st_dev, stat.st_ino)]])


def coco_results(evaluation: Evaluation) -> list[dict]:
    """The detections in the COCO results format (see the module doc)."""
    results = []
    for image_id, rows in zip(image_ids(evaluation.images), evaluation.detections, strict=True):
        for class_id, prob, x0, y0, x1, y1 in rows.tolist():
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(class_id),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(str(np.float32(prob))),  # the float32's shortest digits: same order
                }
            )
    return results


def save_coco_json(evaluation: Evaluation, path: str | Path) -> Path:
    """Write :func:`coco_results` to ``path`` (atomically; never over one of the files evaluated)."""
    path = Path(path)
    _refuse_overwriting_inputs([path], evaluation.inputs)
    results = coco_results(evaluation)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "w") as out:
        json.dump(results, out)
        out.write("\n")
    return path


def darknet_lines(rows: np.ndarray, image_wh: tuple[int, int]) -> list[str]:
    """``<class> <cx> <cy> <w> <h> <prob>`` per detection (photo pixels in), normalised to the photo."""
    w, h = image_wh
    lines = []
    for class_id, prob, x0, y0, x1, y1 in rows.tolist():
        box = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)
        lines.append(f"{int(class_id)} " + " ".join(f"{v:.6f}" for v in (*box, prob)))
    return lines


def save_darknet_txt(evaluation: Evaluation, folder: str | Path) -> list[Path]:
    """Write ``folder/NAME.txt`` per photo ``NAME.ext`` (:func:`darknet_lines`; empty without detections),
    each atomically; refuses to write over a file evaluated (a label file beside its photo, say)."""
    folder = Path(folder)
    stems = [image.stem for image in evaluation.images]
    _refuse_duplicates(stems, evaluation.images, "written to the same file, stem")
    outputs = [folder / f"{stem}.txt" for stem in stems]
    _refuse_overwriting_inputs(outputs, evaluation.inputs)
    folder.mkdir(parents=True, exist_ok=True)
    for out, rows, size in zip(outputs, evaluation.detections, evaluation.image_sizes, strict=True):
        with atomic_output(out, "w") as file:
            file.write("".join(line + "\n" for line in darknet_lines(rows, size)))
    return outputs
