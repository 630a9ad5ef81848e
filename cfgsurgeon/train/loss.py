"""The YOLO training loss, driven by each ``[yolo]`` layer's options, with darknet's target assignment.

Darknet's ``forward_yolo_layer`` does not compute a loss to differentiate: it writes a *delta* per output
(``target − output``, times normalisers) and ``backward_yolo_layer`` hands it to the convolution below
unchanged, i.e. as minus the gradient with respect to the raw logits — the logistic's derivative is never
applied. This module writes a loss whose autograd gradient with respect to the raw logits *is* darknet's
delta (negated), per element:

* objectness and classes (logistic outputs): binary cross-entropy with logits — its gradient is
  ``σ(p) − t`` — minus the target's own entropy, so each term is 0 exactly when the output equals its target;
* x, y with ``iou_loss=mse``: the same cross-entropy towards ``t' = (t + (s−1)/2)/s`` times ``s`` (``s`` =
  ``scale_x_y``), whose gradient is ``s·σ(p) − (s−1)/2 − t``: the scaled output minus its target, as darknet;
* w, h with ``mse``: ``½(p − t)²`` with darknet's targets ``log(w·net_w/anchor_w)`` (``new_coords=1``:
  ``sqrt(w·net_w/(4·anchor_w))``);
* with ``new_coords=1`` nothing is logistic: every entry is ``½(out − t)²`` on the raw output.

Box terms of ``mse`` are weighted by ``iou_normalizer·(2 − w·h)``, objectness by ``obj_normalizer``,
classes by ``cls_normalizer`` (see below). ``iou_loss=iou|giou|diou|ciou``: ``iou_normalizer·(1 − IoU_kind)``
per assigned box with the textbook formulas, differentiated by autograd through the logistic and the
exponential (darknet hand-codes an approximate gradient there: ``dx_box_iou``, no logistic derivative),
gradients clipped to ``±max_delta`` per box as darknet clips its deltas. The sum over the batch is divided
by the number of images (darknet divides its learning rate by the batch), so the loss is a per-image mean.

Target assignment (``process_batch``), per head and image:

1. every prediction whose box overlaps some truth by IoU > ``ignore_thresh`` while one of its class
   probabilities exceeds 0.25 gets no objectness gradient (``objectness_smooth=1``: target = that IoU);
   IoU > ``truth_thresh`` (default 1: never) makes it a positive for the best-overlapping truth;
2. each truth (class in range, positive size) goes to the cell ``(int(x·w), int(y·h))`` (clamped to the grid)
   and to the anchor with the best IoU of centred boxes over **all** the layer's anchors (``num``, first best
   on ties); the head whose ``mask`` holds that anchor is responsible, the others treat the truth only through
   rule 1; with ``iou_thresh < 1`` every other anchor of the mask whose centred IoU (``iou_thresh_kind``)
   exceeds it is responsible too;
3. a responsible slot gets objectness target 1 (``objectness_smooth=1``: unchanged, as darknet), class
   targets 1 for every class assigned to it and 0 for the others (``label_smooth_eps`` e:
   ``t·(1 − e) + e/2``), and one box term per assigned truth (they add up); with ``iou_thresh < 1`` a slot's
   box terms are divided by the number of its classes whose target exceeds the output (darknet's
   ``averages_yolo_deltas``: the assigned classes, plus, with label smoothing or ``new_coords``, any other
   class whose output is below its target).

Where this differs from darknet's code, on purpose: ``cls_normalizer`` scales the class terms (darknet
applies it only together with ``counters_per_class``, which is not supported here); truths are not cut at the
first one with ``x = 0`` (darknet's end-of-list marker); a truth at ``x = 1`` lands in the last column
(darknet writes past the row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import layers as L
from ..errors import CfgError, UsageError
from ..ir import Graph
from . import options as opt

IOU_LOSSES = ("mse", "iou", "giou", "diou", "ciou")
CLASS_MATCH = 0.25  # compare_yolo_class: a prediction "has a class" when one probability exceeds this
WH_LOGIT_MAX = 12.0  # exp() of a wild width logit would overflow the IoU losses; darknet zeroes such NaNs

# [yolo] training keys whose non-default values this loss does not implement: value darknet uses by default.
UNSUPPORTED = {"focal_loss": "0", "counters_per_class": None, "map": None}


@dataclass(frozen=True)
class YoloHead:
    """One ``[yolo]`` layer's training settings (darknet's defaults where the cfg says nothing)."""

    layer: int  # index of the [yolo] layer
    source: int  # index of the layer feeding it: its raw logits are the loss's input
    anchors: tuple[tuple[float, float], ...]  # all `num` anchors, network pixels
    mask: tuple[int, ...]
    classes: int
    iou_loss: str
    iou_normalizer: float
    obj_normalizer: float
    cls_normalizer: float
    ignore_thresh: float
    truth_thresh: float
    iou_thresh: float
    iou_thresh_kind: str
    scale_x_y: float
    new_coords: bool
    label_smooth_eps: float
    objectness_smooth: bool
    max_delta: float

    @property
    def entries(self) -> int:
        return 5 + self.classes


def yolo_heads(graph: Graph) -> list[YoloHead]:
    """The training settings of every ``[yolo]`` layer; other detection heads are refused."""
    heads = []
    for layer in graph.layers:
        if isinstance(layer, L.GaussianYolo | L.Region | L.Detection):
            raise UsageError(
                f"layer {layer.index} [{layer.header}]: training supports [yolo] heads only", layer.where()
            )
        if isinstance(layer, L.Yolo):
            heads.append(_head(layer, graph))
    if not heads:
        raise UsageError("the model has no [yolo] layer to train", graph.source)
    return heads


def _head(layer: L.Yolo, graph: Graph) -> YoloHead:
    _check_supported(layer)
    num = layer.num
    values = [0.5] * (2 * num)  # make_yolo_layer's initial biases; anchors= fills at most 2·num of them
    for k, value in enumerate(layer.anchors[: 2 * num]):
        values[k] = value
    mask = tuple(layer.mask)
    if any(not 0 <= m < num for m in mask):
        raise CfgError(
            f"layer {layer.index} [yolo] mask {list(mask)} is outside 0..{num - 1}", layer.where("mask")
        )
    iou_loss = opt.text(layer, "iou_loss", "mse")
    kind = opt.text(layer, "iou_thresh_kind", "iou")
    for key, value in (("iou_loss", iou_loss), ("iou_thresh_kind", kind)):
        if value not in IOU_LOSSES:
            raise CfgError(f"{key}={value} is not one of {', '.join(IOU_LOSSES)}", layer.where(key))
    head = YoloHead(
        layer=layer.index,
        source=graph.index_of(layer.inputs[0]),
        anchors=tuple((values[2 * k], values[2 * k + 1]) for k in range(num)),
        mask=mask,
        classes=layer.classes,
        iou_loss=iou_loss,
        iou_normalizer=opt.number(layer, "iou_normalizer", 0.75),
        obj_normalizer=opt.number(layer, "obj_normalizer", 1.0),
        cls_normalizer=opt.number(layer, "cls_normalizer", 1.0),
        ignore_thresh=opt.number(layer, "ignore_thresh", 0.5),
        truth_thresh=opt.number(layer, "truth_thresh", 1.0),
        iou_thresh=opt.number(layer, "iou_thresh", 1.0),
        iou_thresh_kind="iou" if kind == "mse" else kind,
        scale_x_y=layer.scale_x_y,
        new_coords=bool(layer.new_coords),
        label_smooth_eps=opt.number(layer, "label_smooth_eps", 0.0),
        objectness_smooth=bool(opt.integer(layer, "objectness_smooth", 0)),
        max_delta=opt.number(layer, "max_delta", math.inf),
    )
    if head.objectness_smooth and head.truth_thresh < 1:
        raise UsageError(
            f"layer {layer.index} [yolo]: objectness_smooth=1 with truth_thresh < 1 is not supported",
            layer.where("truth_thresh"),
        )
    return head


def _check_supported(layer: L.Yolo) -> None:
    for key, default in UNSUPPORTED.items():
        value = layer.options.get(key)
        if value is not None and value.strip() != default:
            raise UsageError(
                f"layer {layer.index} [yolo] {key}={value}: not supported by the training loss",
                layer.where(key),
            )


# -- boxes -------------------------------------------------------------------------------------------------


def box_iou_kind(a: Tensor, b: Tensor, kind: str = "iou", eps: float = 1e-9) -> Tensor:
    """IoU / GIoU / DIoU / CIoU of boxes ``(…, 4)`` as ``cx, cy, w, h`` (broadcast), the textbook formulas.

    darknet's ``box_iou`` is 0 when the boxes do not overlap; CIoU's trade-off ``α`` is a constant (detached),
    as in its paper and in darknet's ``box_ciou``."""
    a_lo, a_hi = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b_lo, b_hi = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    overlap = (torch.minimum(a_hi, b_hi) - torch.maximum(a_lo, b_lo)).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    iou = inter / (union + eps)
    if kind in ("iou", "mse"):
        return iou
    hull = torch.maximum(a_hi, b_hi) - torch.minimum(a_lo, b_lo)
    if kind == "giou":
        hull_area = hull[..., 0] * hull[..., 1]
        return iou - (hull_area - union) / (hull_area + eps)
    diagonal = (hull**2).sum(-1) + eps
    diou = iou - ((a[..., :2] - b[..., :2]) ** 2).sum(-1) / diagonal
    if kind == "diou":
        return diou
    shape = (4 / math.pi**2) * (
        torch.atan(b[..., 2] / (b[..., 3] + eps)) - torch.atan(a[..., 2] / (a[..., 3] + eps))
    ) ** 2
    with torch.no_grad():
        alpha = shape / (1 - iou + shape + 1e-6)
    return diou - alpha * shape


def centred_iou(wh: Tensor, anchors_wh: Tensor, kind: str = "iou") -> Tensor:
    """IoU (of ``kind``) between truths ``(M, 2)`` and anchors ``(A, 2)`` placed at the same centre:
    ``(M, A)``, darknet's anchor matching (``truth_shift``)."""
    zeros_t, zeros_a = torch.zeros_like(wh), torch.zeros_like(anchors_wh)
    truth = torch.cat([zeros_t, wh], dim=-1)[:, None]
    anchor = torch.cat([zeros_a, anchors_wh], dim=-1)[None]
    return box_iou_kind(truth, anchor, kind)


class _ClipGrad(torch.autograd.Function):
    """Identity whose gradient is clipped to ``±limit`` (darknet's ``max_delta`` on box deltas)."""

    @staticmethod
    def forward(ctx, x: Tensor, limit: float) -> Tensor:  # type: ignore[override]
        ctx.limit = limit
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad.clamp(-ctx.limit, ctx.limit), None


def logistic_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of ``σ(logits)`` against ``target`` minus the target's entropy: ≥ 0, 0 at the target;
    its gradient is ``σ(logits) − target``. A target outside [0, 1] (x, y of a ``truth_thresh`` positive
    whose truth lies in another cell, as darknet computes it) keeps that gradient; only the constant uses
    the clamped target."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    t = target.clamp(0, 1)
    return bce + torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t)


def squared_loss(values: Tensor, target: Tensor) -> Tensor:
    return 0.5 * (values - target) ** 2


# -- the loss ----------------------------------------------------------------------------------------------


@dataclass
class LossTerms:
    """The loss of a batch (a per-image mean) and its parts; ``positives`` counts responsible slots' boxes
    (anchor points for ``[anchor_free]``, whose loss has no objectness but a ``dfl`` term)."""

    total: Tensor
    box: Tensor
    obj: Tensor
    cls: Tensor
    positives: int
    dfl: Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        names = ("total", "box", "obj", "cls") + (("dfl",) if self.dfl is not None else ())
        return {name: float(getattr(self, name).detach()) for name in names}


@dataclass
class Assigned:
    """Responsible (image, slot, row, col) of each (truth, anchor) pair, one entry per pair."""

    image: Tensor
    slot: Tensor
    row: Tensor
    col: Tensor
    truth: Tensor
    anchor: Tensor

    @staticmethod
    def cat(parts: Sequence[Assigned]) -> Assigned:
        fields = ("image", "slot", "row", "col", "truth", "anchor")
        return Assigned(*(torch.cat([getattr(p, name) for p in parts]) for name in fields))


class YoloLoss:
    """``loss(outputs, targets)``: ``outputs`` are the raw logits feeding the ``[yolo]`` layers, in the
    order of :attr:`sources` (``DarknetModel(x, keep=loss.sources)``); ``targets`` is ``M×6``
    ``[image_index, class, cx, cy, w, h]`` normalised to the network input (the datasets' ``collate``)."""

    terms = ("box", "obj", "cls")

    def __init__(self, graph: Graph):
        self.heads = yolo_heads(graph)
        self.net_wh = (graph.net.width, graph.net.height)

    @property
    def sources(self) -> list[int]:
        return [head.source for head in self.heads]

    @property
    def classes(self) -> int:
        return self.heads[0].classes

    def __call__(self, outputs: Sequence[Tensor], targets: Tensor) -> LossTerms:
        if len(outputs) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} head inputs, got {len(outputs)}")
        images = outputs[0].shape[0]
        targets = targets.to(device=outputs[0].device, dtype=torch.float32)
        parts = [
            self.head_loss(head, raw.float(), targets) for head, raw in zip(self.heads, outputs, strict=True)
        ]
        box, obj, cls = (sum(part[k] for part in parts) / images for k in range(3))  # type: ignore[misc]
        positives = sum(int(part[3]) for part in parts)
        return LossTerms(box + obj + cls, box, obj, cls, positives)  # type: ignore[arg-type]

    # -- one head -------------------------------------------------------------------------------------------
    def head_loss(self, head: YoloHead, raw: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """Summed (box, objectness, class) terms of one head and its number of box terms."""
        batch, _, rows, cols = raw.shape
        n = len(head.mask)
        p = raw.view(batch, n, head.entries, rows, cols).permute(0, 1, 3, 4, 2)  # (b, slot, row, col, entry)
        truths = targets[_valid_truths(targets, head.classes)]
        with torch.no_grad():
            boxes = self._predicted_boxes(head, p)
            has_class = self._class_probs(head, p).amax(-1) > CLASS_MATCH
        obj_target = torch.zeros(p.shape[:4], device=p.device)
        obj_weight = torch.full(p.shape[:4], head.obj_normalizer, device=p.device)
        found = [self._assign_by_truth(head, truths, (rows, cols))]
        if len(truths):
            found.append(self._overlaps(head, boxes, has_class, truths, obj_target, obj_weight))
        assigned = Assigned.cat(found)
        cls_target, positive = self._class_targets(head, p, truths, assigned)
        if not head.objectness_smooth:
            obj_target[positive] = 1.0
            obj_weight[positive] = head.obj_normalizer
        obj = (obj_weight * self._entry_loss(head, p[..., 4], obj_target)).sum()
        cls = head.cls_normalizer * self._entry_loss(head, p[..., 5:][positive], cls_target[positive]).sum()
        box = self._box_loss(head, p, truths, assigned, cls_target)
        return box, obj, cls, len(assigned.truth)

    def _entry_loss(self, head: YoloHead, values: Tensor, target: Tensor) -> Tensor:
        return squared_loss(values, target) if head.new_coords else logistic_loss(values, target)

    def _class_probs(self, head: YoloHead, p: Tensor) -> Tensor:
        return p[..., 5:] if head.new_coords else torch.sigmoid(p[..., 5:])

    def _scaled_xy(self, head: YoloHead, p_xy: Tensor) -> Tensor:
        s = head.scale_x_y
        out = p_xy if head.new_coords else torch.sigmoid(p_xy)
        return out * s - 0.5 * (s - 1)

    def _wh(self, head: YoloHead, p_wh: Tensor, anchors: Tensor) -> Tensor:
        """Box size (fraction of the network input) from the width/height logits and the anchors (pixels)."""
        net = torch.tensor(self.net_wh, dtype=p_wh.dtype, device=p_wh.device)
        if head.new_coords:
            return p_wh * p_wh * 4 * anchors / net
        return torch.exp(p_wh.clamp(max=WH_LOGIT_MAX)) * anchors / net

    def _predicted_boxes(self, head: YoloHead, p: Tensor) -> Tensor:
        """``(b, slot, row, col, 4)`` boxes ``cx, cy, w, h`` as fractions of the input (get_yolo_box)."""
        _, _, rows, cols, _ = p.shape
        grid_y, grid_x = torch.meshgrid(
            torch.arange(rows, device=p.device), torch.arange(cols, device=p.device), indexing="ij"
        )
        xy = self._scaled_xy(head, p[..., :2])
        cx = (grid_x + xy[..., 0]) / cols
        cy = (grid_y + xy[..., 1]) / rows
        anchors = self._mask_anchors(head, p.device).view(1, -1, 1, 1, 2)
        wh = self._wh(head, p[..., 2:4], anchors)
        return torch.cat([cx[..., None], cy[..., None], wh], dim=-1)

    def _mask_anchors(self, head: YoloHead, device: torch.device) -> Tensor:
        return torch.tensor([head.anchors[m] for m in head.mask], dtype=torch.float32, device=device)

    # -- assignment -----------------------------------------------------------------------------------------
    def _overlaps(
        self,
        head: YoloHead,
        boxes: Tensor,
        has_class: Tensor,
        truths: Tensor,
        obj_target: Tensor,
        obj_weight: Tensor,
    ) -> Assigned:
        """Rule 1: predictions already overlapping a truth (ignore / soft target), and ``truth_thresh``
        positives, which are returned."""
        found = []
        for b in truths[:, 0].long().unique().tolist():
            rows = torch.nonzero(truths[:, 0] == b).flatten()
            iou = box_iou_kind(boxes[b].reshape(-1, 1, 4), truths[rows, 2:6][None], "iou")  # (cells, truths)
            best_iou, best_t = iou.max(dim=1)
            best_match = torch.where(has_class[b].reshape(-1), best_iou, torch.zeros_like(best_iou))
            ignore = (best_match > head.ignore_thresh).view(has_class[b].shape)
            if head.objectness_smooth:
                obj_target[b][ignore] = best_match.view(ignore.shape)[ignore]
            else:
                obj_weight[b][ignore] = 0.0
            if head.truth_thresh < 1:
                cell = torch.nonzero((best_iou > head.truth_thresh).view(ignore.shape))
                slot, row, col = cell.unbind(1)
                mask = torch.tensor(head.mask, device=cell.device)
                flat = (slot * ignore.shape[1] + row) * ignore.shape[2] + col
                found.append(
                    Assigned(torch.full_like(slot, b), slot, row, col, rows[best_t[flat]], mask[slot])
                )
        return Assigned.cat(found) if found else _no_assignment(truths.device)

    def _assign_by_truth(self, head: YoloHead, truths: Tensor, grid: tuple[int, int]) -> Assigned:
        """Rule 2: the best anchor over all anchors, kept by this head if its mask holds it; plus the mask's
        anchors above ``iou_thresh``."""
        rows, cols = grid
        device = truths.device
        if not len(truths):
            return _no_assignment(device)
        anchors = torch.tensor(head.anchors, dtype=torch.float32, device=device)
        anchors_wh = anchors / torch.tensor(self.net_wh, dtype=torch.float32, device=device)
        best = centred_iou(truths[:, 4:6], anchors_wh).argmax(dim=1)  # first best on ties, as darknet
        slot_of = torch.full((len(anchors),), -1, dtype=torch.long, device=device)
        for slot in reversed(range(len(head.mask))):  # int_index: the first slot naming an anchor
            slot_of[head.mask[slot]] = slot
        chosen = torch.zeros((len(truths), len(anchors)), dtype=torch.bool, device=device)
        chosen[torch.arange(len(truths), device=device), best] = True
        if head.iou_thresh < 1:
            kind = centred_iou(truths[:, 4:6], anchors_wh, head.iou_thresh_kind)
            chosen |= kind > head.iou_thresh
        chosen &= (slot_of >= 0)[None]
        truth, anchor = torch.nonzero(chosen).unbind(1)
        col = (truths[truth, 2] * cols).long().clamp(0, cols - 1)
        row = (truths[truth, 3] * rows).long().clamp(0, rows - 1)
        image = truths[truth, 0].long()
        return Assigned(image, slot_of[anchor], row, col, truth, anchor)

    def _class_targets(
        self, head: YoloHead, p: Tensor, truths: Tensor, assigned: Assigned
    ) -> tuple[Tensor, Tensor]:
        """Class targets of every slot (multi-hot over its assigned truths, label-smoothed) and the mask of
        responsible slots."""
        cells = (assigned.image, assigned.slot, assigned.row, assigned.col)
        hot = torch.zeros(p.shape[:4] + (head.classes,), device=p.device)
        hot[(*cells, truths[assigned.truth, 1].long())] = 1.0
        positive = torch.zeros(p.shape[:4], dtype=torch.bool, device=p.device)
        positive[cells] = True
        eps = head.label_smooth_eps
        return hot * (1 - eps) + 0.5 * eps, positive

    # -- box terms ------------------------------------------------------------------------------------------
    def _box_loss(
        self, head: YoloHead, p: Tensor, truths: Tensor, assigned: Assigned, cls_target: Tensor
    ) -> Tensor:
        if not len(assigned.truth):
            return p.sum() * 0.0
        cells = (assigned.image, assigned.slot, assigned.row, assigned.col)
        logits = p[cells][:, :4]
        truth = truths[assigned.truth, 2:6]
        anchors = torch.tensor(head.anchors, dtype=torch.float32, device=p.device)[assigned.anchor]
        if head.iou_loss == "mse":
            per_box = self._mse_box(head, logits, truth, assigned, anchors, p.shape[2:4])
        else:
            per_box = self._iou_box(head, logits, truth, assigned, anchors, p.shape[2:4])
        if head.iou_thresh < 1:  # averages_yolo_deltas: over the classes whose delta (target − out) is > 0
            with torch.no_grad():
                pulled_up = cls_target[cells] > self._class_probs(head, p[cells][None])[0]
            per_box = per_box / pulled_up.sum(-1).clamp(min=1)
        return per_box.sum()

    def _mse_box(
        self, head: YoloHead, logits: Tensor, truth: Tensor, assigned: Assigned, anchors: Tensor, grid: tuple
    ) -> Tensor:
        rows, cols = grid
        net = torch.tensor(self.net_wh, dtype=torch.float32, device=logits.device)
        weight = head.iou_normalizer * (2 - truth[:, 2] * truth[:, 3])
        t_xy = torch.stack([truth[:, 0] * cols - assigned.col, truth[:, 1] * rows - assigned.row], dim=1)
        s = head.scale_x_y
        if head.new_coords:
            xy = squared_loss(self._scaled_xy(head, logits[:, :2]), t_xy) / s
            t_wh = torch.sqrt(truth[:, 2:4] * net / (4 * anchors))
        else:
            xy = s * logistic_loss(logits[:, :2], (t_xy + 0.5 * (s - 1)) / s)
            t_wh = torch.log(truth[:, 2:4] * net / anchors)
        wh = squared_loss(logits[:, 2:4], t_wh)
        return weight * (xy.sum(1) + wh.sum(1))

    def _iou_box(
        self, head: YoloHead, logits: Tensor, truth: Tensor, assigned: Assigned, anchors: Tensor, grid: tuple
    ) -> Tensor:
        rows, cols = grid
        if math.isfinite(head.max_delta):
            logits = _ClipGrad.apply(logits, head.max_delta)
        xy = self._scaled_xy(head, logits[:, :2])
        cx = (assigned.col + xy[:, 0]) / cols
        cy = (assigned.row + xy[:, 1]) / rows
        wh = self._wh(head, logits[:, 2:4], anchors)
        pred = torch.cat([cx[:, None], cy[:, None], wh], dim=1)
        return head.iou_normalizer * (1 - box_iou_kind(pred, truth, head.iou_loss))


def _valid_truths(targets: Tensor, classes: int) -> Tensor:
    """Rows darknet would train on: class in range (else it warns and skips), positive width and height."""
    cls = targets[:, 1]
    return (cls >= 0) & (cls < classes) & (targets[:, 4] > 0) & (targets[:, 5] > 0)


def _no_assignment(device: torch.device) -> Assigned:
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return Assigned(empty, empty, empty, empty, empty, empty)
