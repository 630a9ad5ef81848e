"""The YOLOv8 detection loss: task-aligned assignment, CIoU, distribution focal loss and class cross-entropy,
with the settings the ``ultralytics`` package (8.4) trains a ``DetectionModel`` with.

Input: one raw map per level, ``[B, 4·reg_max + nc, H, W]`` — the box logits, ``reg_max`` bins for each side
(left, top, right, bottom, in that order), then the ``nc`` class logits — and each level's stride; targets
are the trainer's ``M×6`` rows ``[image, class, cx, cy, w, h]`` normalised to the input, whose size is the
first level's ``H × W`` times its stride. Each cell's centre is an anchor point; a side's distance from it,
in cells, is the expectation ``Σ k·p_k`` of the softmax ``p`` over its bins.

Assignment, per image and without gradient (TOOD's task-aligned assigner):

1. a truth's *candidates* are the anchor points strictly inside its box, where a side shorter than the
   second-finest stride (the finest with one level) is first widened to it about the centre;
2. a candidate's *alignment* is ``s^α·u^β`` (α = 0.5, β = 6): ``s`` its predicted probability of the truth's
   class, ``u`` the CIoU of its predicted box with the truth, clamped at 0;
3. the :data:`TOPK` highest alignments of a truth over all anchors that are candidates are its *positives* —
   when fewer than ten candidates align above 0, ``torch.topk``'s choice among the zeros decides, as in
   ultralytics;
4. an anchor positive for several truths keeps the truth with which its ``u`` is highest among all truths;
5. a positive's class target is one-hot in its truth's class, scaled to ``t·u_max / t_max`` (``t`` its
   alignment, ``t_max`` and ``u_max`` the truth's highest alignment and ``u`` over its positives).

Terms, each divided by ``S``, the sum of all class targets (at least 1):

* ``cls``: binary cross-entropy with logits of every anchor's class logits against its targets (all 0 off
  the positives);
* ``box``: over the positives, ``1 − CIoU`` of the predicted box with the truth, weighted by the positive's
  class target;
* ``dfl``: over the positives, the distribution focal loss of each side (the truth's distance in cells,
  clamped to ``[0, reg_max − 1.01]``, split between the two bins around it by linear interpolation), mean
  over the four sides, with the same weight.

Gains :class:`Gains` (ultralytics' defaults box 7.5, cls 0.5, dfl 1.5) and then the batch size multiply
every term: the loss of a batch is its mean times its size, ultralytics' convention. Rows of ``targets`` with
a class outside ``[0, nc)`` or no width or height are left out, as the darknet loss leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import layers as L
from ..errors import UsageError
from ..ir import Graph
from .loss import LossTerms, _valid_truths, box_iou_kind

TOPK = 10  # positives per truth
ALPHA = 0.5  # weight of the class probability in the alignment
BETA = 6.0  # weight of the CIoU in the alignment
EPS = 1e-9  # candidates: strictly inside by more than this; alignment normalisation
DFL_MARGIN = 0.01  # a distance target stays this far below the last bin
TERMS = ("box", "cls", "dfl")


@dataclass(frozen=True)
class Gains:
    """Weights of the three terms (ultralytics' hyperparameters ``box``, ``cls``, ``dfl``)."""

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5


@dataclass
class Truths:
    """The targets of a batch padded to the most per image: ``labels (B, G)``, pixel ``boxes (B, G, 4)``
    as x1, y1, x2, y2, and ``valid (B, G)`` for the rows that hold a truth."""

    labels: Tensor
    boxes: Tensor
    valid: Tensor

    @property
    def count(self) -> int:
        return self.labels.shape[1]


@dataclass
class Assignment:
    """Per anchor: ``positive (B, A)``, the index of its truth ``truth (B, A)`` (meaningless off the
    positives) and its class targets ``scores (B, A, nc)``."""

    positive: Tensor
    truth: Tensor
    scores: Tensor


@dataclass
class Anchors:
    """Every level's cell centres in cells ``points (A, 2)`` as x, y, and their ``stride (A, 1)``."""

    points: Tensor
    stride: Tensor


class V8DetectionLoss:
    """``loss(maps, targets) -> (total, {"box", "cls", "dfl"})`` for ``classes`` classes and levels of
    ``strides`` (pixels per cell), finest first as the maps come."""

    def __init__(self, classes: int, strides: Sequence[int], reg_max: int = 16, gains: Gains = Gains()):
        if classes < 1 or reg_max < 2 or not strides:
            raise ValueError(
                f"need classes ≥ 1, reg_max ≥ 2 and strides, got {classes}, {reg_max}, {strides}"
            )
        self.classes, self.strides, self.reg_max, self.gains = classes, list(strides), reg_max, gains
        # ultralytics widens a truth's short side to the second-finest stride before finding its candidates
        self.min_side = float(self.strides[1] if len(self.strides) > 1 else self.strides[0])

    @property
    def channels(self) -> int:
        return 4 * self.reg_max + self.classes

    def __call__(self, maps: Sequence[Tensor], targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        terms, _ = self.breakdown(maps, targets)
        return terms["box"] + terms["cls"] + terms["dfl"], terms

    def breakdown(self, maps: Sequence[Tensor], targets: Tensor) -> tuple[dict[str, Tensor], int]:
        """The three terms and the number of positives."""
        distribution, logits = self._flatten(maps)
        anchors = self._anchors(maps)
        images = distribution.shape[0]
        height, width = maps[0].shape[2] * self.strides[0], maps[0].shape[3] * self.strides[0]
        truths = self._truths(targets.to(device=logits.device, dtype=torch.float32), images, (width, height))
        sides = self._sides(distribution)
        boxes = torch.cat([anchors.points - sides[..., :2], anchors.points + sides[..., 2:]], dim=-1)
        assignment = assign(
            logits.detach().sigmoid(),
            boxes.detach() * anchors.stride,
            anchors.points * anchors.stride,
            truths,
            self.min_side,
        )
        normaliser = assignment.scores.sum().clamp(min=1)
        cls = (
            F.binary_cross_entropy_with_logits(logits, assignment.scores, reduction="none").sum() / normaliser
        )
        box, dfl = self._box_terms(distribution, boxes, anchors, truths, assignment, normaliser)
        terms = {
            "box": box * self.gains.box * images,
            "cls": cls * self.gains.cls * images,
            "dfl": dfl * self.gains.dfl * images,
        }
        return terms, int(assignment.positive.sum())

    # -- the predictions ------------------------------------------------------------------------------------
    def _flatten(self, maps: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """The box logits ``(B, A, 4·reg_max)`` and class logits ``(B, A, nc)`` of every anchor, level by
        level, row by row."""
        if len(maps) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} maps (one per stride), got {len(maps)}")
        for level, raw in enumerate(maps):
            if raw.dim() != 4 or raw.shape[1] != self.channels:
                raise ValueError(
                    f"map {level} has shape {tuple(raw.shape)}; expected [B, {self.channels}, H, W]"
                )
        flat = torch.cat([raw.float().flatten(2) for raw in maps], dim=2).transpose(1, 2)
        return flat[..., : 4 * self.reg_max], flat[..., 4 * self.reg_max :]

    def _anchors(self, maps: Sequence[Tensor]) -> Anchors:
        points, strides = [], []
        for raw, stride in zip(maps, self.strides, strict=True):
            rows, cols = raw.shape[2:]
            y, x = torch.meshgrid(
                torch.arange(rows, device=raw.device, dtype=torch.float32) + 0.5,
                torch.arange(cols, device=raw.device, dtype=torch.float32) + 0.5,
                indexing="ij",
            )
            points.append(torch.stack([x, y], dim=-1).view(-1, 2))
            strides.append(torch.full((rows * cols, 1), float(stride), device=raw.device))
        return Anchors(torch.cat(points), torch.cat(strides))

    def _sides(self, distribution: Tensor) -> Tensor:
        """Distances (cells) to the left, top, right and bottom sides: the expected bin ``(B, A, 4)``."""
        bins = torch.arange(self.reg_max, dtype=distribution.dtype, device=distribution.device)
        shape = distribution.shape[:2] + (4, self.reg_max)
        return distribution.view(shape).softmax(-1) @ bins

    # -- the targets ----------------------------------------------------------------------------------------
    def _truths(self, targets: Tensor, images: int, size: tuple[int, int]) -> Truths:
        """``targets`` padded per image (in their order) with pixel corner boxes."""
        targets = targets[_valid_truths(targets, self.classes)]
        targets = targets[torch.argsort(targets[:, 0], stable=True)]
        image = targets[:, 0].long()
        per_image = torch.bincount(image, minlength=images)
        count = int(per_image.max()) if len(targets) else 0
        slot = torch.arange(len(targets), device=targets.device) - (per_image.cumsum(0) - per_image)[image]
        labels = torch.zeros((images, count), dtype=torch.long, device=targets.device)
        boxes = torch.zeros((images, count, 4), device=targets.device)
        valid = torch.zeros((images, count), dtype=torch.bool, device=targets.device)
        scale = torch.tensor(size, dtype=torch.float32, device=targets.device)
        centre, extent = targets[:, 2:4] * scale, targets[:, 4:6] * scale
        labels[image, slot] = targets[:, 1].long()
        boxes[image, slot] = torch.cat([centre - extent / 2, centre + extent / 2], dim=1)
        valid[image, slot] = True
        return Truths(labels, boxes, valid)

    # -- box and distribution terms -------------------------------------------------------------------------
    def _box_terms(
        self,
        distribution: Tensor,
        boxes: Tensor,
        anchors: Anchors,
        truths: Truths,
        assignment: Assignment,
        normaliser: Tensor,
    ) -> tuple[Tensor, Tensor]:
        positive = assignment.positive
        weight = assignment.scores[positive].sum(-1)
        index = assignment.truth[..., None].expand(-1, -1, 4)
        target = truths.boxes.gather(1, index) / anchors.stride if truths.count else torch.zeros_like(boxes)
        iou = corner_ciou(boxes[positive], target[positive])
        box = ((1 - iou) * weight).sum() / normaliser
        points = anchors.points.expand_as(target[..., :2])
        sides = torch.cat([points - target[..., :2], target[..., 2:] - points], dim=-1)
        sides = sides[positive].clamp(0, self.reg_max - 1 - DFL_MARGIN)
        logits = distribution[positive].view(-1, 4, self.reg_max)
        dfl = (distribution_focal_loss(logits, sides).mean(-1) * weight).sum() / normaliser
        return box, dfl


class AnchorFreeLoss:
    """The trainer's loss of a model whose head is an ``[anchor_free]`` layer: ``loss(outputs, targets)``,
    ``outputs`` the head's inputs (``DarknetModel(x, keep=loss.sources)``), ``targets`` as the datasets'
    ``collate`` gives them. Its terms are ultralytics' logged ``box``, ``cls`` and ``dfl`` — the batch's
    loss before the batch-size factor — so the trainer's averaging over subdivisions and ranks keeps their
    meaning. (ultralytics' SGD ``lr0`` 0.01 on 64 images a step moves the weights as a learning rate of about
    0.64 on this loss.)"""

    terms = TERMS

    def __init__(self, graph: Graph):
        heads = [layer for layer in graph.layers if isinstance(layer, L.AnchorFree)]
        if len(heads) != 1:
            raise UsageError(
                f"training needs one [anchor_free] layer, the model has {len(heads)}", graph.source
            )
        head = heads[0]
        if head.reg_max < 2:
            raise UsageError(
                f"layer {head.index} [anchor_free] reg_max={head.reg_max}: training needs reg_max ≥ 2 (DFL)",
                head.where("reg_max"),
            )
        self.classes = head.classes
        self.sources = [graph.index_of(node) for node in head.inputs]
        self.loss = V8DetectionLoss(head.classes, head.strides, head.reg_max)

    def __call__(self, outputs: Sequence[Tensor], targets: Tensor) -> LossTerms:
        terms, positives = self.loss.breakdown(outputs, targets)
        box, cls, dfl = (terms[name] / outputs[0].shape[0] for name in TERMS)
        return LossTerms(box + cls + dfl, box, box.new_zeros(()), cls, positives, dfl=dfl)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the softmax over the last axis of ``logits`` against the two bins around ``target``
    (shape ``logits.shape[:-1]``), each weighted by the target's distance to the other (GFL's DFL)."""
    log_p = logits.log_softmax(-1)
    left = target.long()
    right_weight = target - left
    at_left = log_p.gather(-1, left[..., None])[..., 0]
    at_right = log_p.gather(-1, (left + 1)[..., None])[..., 0]
    return -(at_left * (1 - right_weight) + at_right * right_weight)


def corner_ciou(a: Tensor, b: Tensor) -> Tensor:
    """CIoU of boxes ``(…, 4)`` given as x1, y1, x2, y2 (:func:`~cfgsurgeon.train.loss.box_iou_kind`)."""
    return box_iou_kind(_centre_size(a), _centre_size(b), "ciou", eps=1e-7)


def _centre_size(corners: Tensor) -> Tensor:
    return torch.cat([(corners[..., :2] + corners[..., 2:]) / 2, corners[..., 2:] - corners[..., :2]], dim=-1)


# -- the assigner ------------------------------------------------------------------------------------------


@torch.no_grad()
def assign(scores: Tensor, boxes: Tensor, points: Tensor, truths: Truths, min_side: float) -> Assignment:
    """The task-aligned assignment of a batch: class probabilities ``scores (B, A, nc)``, predicted pixel
    corner boxes ``(B, A, 4)``, anchor points ``(A, 2)`` in pixels, truths in pixels."""
    images, count, anchors, classes = scores.shape[0], truths.count, points.shape[0], scores.shape[2]
    if count == 0:
        positive = torch.zeros((images, anchors), dtype=torch.bool, device=scores.device)
        return Assignment(positive, positive.long(), torch.zeros_like(scores))
    candidate = _candidates(points, truths, min_side)  # (B, G, A)
    overlaps, alignment = _alignment(scores, boxes, truths, candidate)
    top = alignment.topk(min(TOPK, anchors), dim=-1).indices
    positive = torch.zeros_like(candidate).scatter_(-1, top, True) & candidate
    positive = _one_truth_each(positive, overlaps)
    is_positive, truth = positive.to(torch.uint8).max(dim=1)
    is_positive = is_positive.bool()
    labels = truths.labels.gather(1, truth)
    alignment, overlaps = alignment * positive, overlaps * positive
    best_alignment = alignment.amax(-1, keepdim=True)
    best_overlap = overlaps.amax(-1, keepdim=True)
    weight = (alignment * best_overlap / (best_alignment + EPS)).amax(1)  # (B, A)
    target = F.one_hot(labels, classes).float() * (weight * is_positive)[..., None]
    return Assignment(is_positive, truth, target)


def _candidates(points: Tensor, truths: Truths, min_side: float) -> Tensor:
    """``(B, G, A)``: the anchor point lies inside the truth (widened to ``min_side``) by more than EPS."""
    centre = (truths.boxes[..., :2] + truths.boxes[..., 2:]) / 2
    extent = truths.boxes[..., 2:] - truths.boxes[..., :2]
    widen = (extent < min_side) & truths.valid[..., None]
    extent = torch.where(widen, torch.full_like(extent, min_side), extent)
    low, high = (centre - extent / 2)[:, :, None], (centre + extent / 2)[:, :, None]
    inside = ((points - low) > EPS).all(-1) & ((high - points) > EPS).all(-1)
    return inside & truths.valid[..., None]


def _alignment(scores: Tensor, boxes: Tensor, truths: Truths, candidate: Tensor) -> tuple[Tensor, Tensor]:
    """CIoU (clamped at 0) and alignment ``s^α·u^β`` of every candidate ``(B, G, A)``, 0 elsewhere."""
    image, truth, anchor = torch.nonzero(candidate, as_tuple=True)
    overlap = corner_ciou(truths.boxes[image, truth], boxes[image, anchor]).clamp(min=0)
    probability = scores[image, anchor, truths.labels[image, truth]]
    overlaps = torch.zeros(candidate.shape, dtype=boxes.dtype, device=boxes.device)
    alignment = torch.zeros(candidate.shape, dtype=scores.dtype, device=scores.device)
    overlaps[image, truth, anchor] = overlap
    alignment[image, truth, anchor] = probability.pow(ALPHA) * overlap.pow(BETA)
    return overlaps, alignment


def _one_truth_each(positive: Tensor, overlaps: Tensor) -> Tensor:
    """An anchor positive for several truths keeps only the truth it overlaps most (of all truths)."""
    shared = positive.sum(1, keepdim=True) > 1  # (B, 1, A)
    best = F.one_hot(overlaps.argmax(1), positive.shape[1]).transpose(1, 2).bool()
    return torch.where(shared, best, positive)
