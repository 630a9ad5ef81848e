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
network input normalised to 0…1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
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

    def table_lines(self) -> list[str]:
        """The per-class table, then the overall line."""
        lines = [
            f"{'class':<16} {'truths':>7} {'dets':>7} {'P':>7} {'R':>7} {'mAP@.5':>7} {'mAP@.5:.95':>10}"
        ]
        for c in self.per_class:
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
) -> Metrics:
    """Metrics from per-image ``detections`` (``n×6 [class, score, x0, y0, x1, y1]``) and ``truths``
    (``k×5 [class, x0, y0, x1, y1]``), images in the same order."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} images")
    dets = [np.asarray(d, dtype=np.float64).reshape(-1, 6) for d in detections]
    gts = [np.asarray(t, dtype=np.float64).reshape(-1, 5) for t in truths]
    per_class = [_class_metrics(k, name, dets, gts, pr_thresh) for k, name in enumerate(names)]
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
    model, dataset, conf_thresh: float = 0.001, iou_thresh: float = 0.45, batch_size: int = 16
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run ``model`` (a :class:`~cfgsurgeon.emit.torch.DarknetModel`, or a :class:`Graph` with weights) over
    an un-augmented ``dataset``; per image, detections ``n×6`` and truths ``k×5`` in network-input units."""
    import torch

    from ..detect import detections as decode_detections
    from ..detect import head_layers
    from ..emit.torch import to_torch
    from .dataset import make_loader, to_corners

    net = model if isinstance(model, torch.nn.Module) else to_torch(model)
    graph: Graph = net.graph
    keep = [layer.index for layer in head_layers(graph)]
    net_wh = (graph.net.width, graph.net.height)
    device = next(net.parameters(), torch.empty(0)).device
    found, truths = [], []
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for images, targets, _ in make_loader(dataset, batch_size):
                outputs = [out.float().cpu().numpy() for out in net(images.to(device), keep=keep)]
                for i in range(len(images)):
                    dets = decode_detections(
                        graph, [out[i] for out in outputs], net_wh, conf_thresh, nms=iou_thresh
                    )
                    found.append(_rows(dets, net_wh))
                    truths.append(to_corners(targets[targets[:, 0] == i, 1:].numpy()))
    finally:
        net.train(was_training)
    return found, truths


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


def evaluate_data(
    graph: Graph,
    data: str | Path,
    split: str = "valid",
    conf_thresh: float = 0.001,
    iou_thresh: float = 0.45,
    pr_thresh: float = 0.25,
    batch_size: int = 16,
    warn=print,
) -> Metrics:
    """``cfgsurgeon eval``: the metrics of ``graph`` (weights loaded) on a ``.data`` file's split."""
    from ..detect import _common_classes, head_layers
    from .dataset import DetectionDataset, read_data_file

    spec = read_data_file(data)
    classes = _common_classes(head_layers(graph))
    if classes != spec.classes:
        raise UsageError(f"classes={spec.classes}, but the model has {classes} classes", str(spec.source))
    dataset = DetectionDataset.from_data(spec, split, graph, augment=False)
    if dataset.missing_labels:
        warn(f"{dataset.missing_labels} of {len(dataset)} images have no label file (counted as empty)")
    return evaluate(graph, dataset, conf_thresh, iou_thresh, pr_thresh, batch_size, names=spec.names)
