"""Knowledge distillation from a teacher network with the same ``[yolo]`` heads (same anchors per slot,
classes and grids — e.g. the unpruned model teaching its pruned copy).

Both variants compare the raw logits feeding each ``[yolo]`` layer, entry by entry, with the same
"cross-entropy minus the target's entropy" used by :mod:`.loss` (0 when the student equals the teacher), on
logits divided by the temperature ``T`` and scaled by ``T²`` so the gradient size does not depend on ``T``:

* ``soft``: soft labels on objectness and class logits, every slot alike;
* ``detection``: objectness as in ``soft``; classes and box (x, y as logistic targets, w, h as squared
  distance of the raw logits) weighted per slot by the teacher's objectness probability, so that the
  student copies the teacher where the teacher sees objects rather than the vast background.

``detection`` is the default: on a real pruned yolov3-tiny (4 classes, 416×416) the ``soft`` term at weight
1 was about 100× the detection loss — class logits of background slots, which no label constrains, dominate
it — where ``detection``'s was about half of it.

With ``new_coords=1`` heads (raw outputs, no logistic) every term is ``½(student − teacher)²``. The sum is
divided by the number of images, like the detection loss it is added to (times ``weight``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import UsageError
from .loss import YoloHead, logistic_loss, squared_loss
from .options import DISTILL_MODES as MODES


class Distiller:
    def __init__(
        self,
        heads: Sequence[YoloHead],
        mode: str = "detection",
        weight: float = 1.0,
        temperature: float = 1.0,
    ):
        if mode not in MODES:
            raise UsageError(f"unknown distillation mode '{mode}' (one of: {', '.join(MODES)})")
        if temperature <= 0:
            raise UsageError(f"the distillation temperature must be > 0, found {temperature}")
        self.heads, self.mode, self.weight, self.temperature = list(heads), mode, weight, temperature

    def check_teacher(self, teacher_heads: Sequence[YoloHead]) -> None:
        """The teacher must describe the same outputs: per head, anchors of the mask and classes."""
        if len(teacher_heads) != len(self.heads):
            raise UsageError(
                f"the teacher has {len(teacher_heads)} [yolo] heads, the student {len(self.heads)}"
            )
        for mine, theirs in zip(self.heads, teacher_heads, strict=True):
            anchors = [mine.anchors[m] for m in mine.mask], [theirs.anchors[m] for m in theirs.mask]
            if (
                anchors[0] != anchors[1]
                or mine.classes != theirs.classes
                or mine.new_coords != theirs.new_coords
            ):
                raise UsageError(
                    f"teacher head (layer {theirs.layer}) does not match student head (layer {mine.layer}): "
                    "distillation needs the same anchors per slot, classes and new_coords"
                )

    def __call__(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        total = student[0].new_zeros(())
        for head, s_raw, t_raw in zip(self.heads, student, teacher, strict=True):
            if s_raw.shape != t_raw.shape:
                raise UsageError(
                    f"teacher output {tuple(t_raw.shape)} and student output {tuple(s_raw.shape)} differ at "
                    f"head layer {head.layer} (same input size and grids needed)"
                )
            total = total + self._head(
                head, _slots(head, s_raw.float()), _slots(head, t_raw.float().detach())
            )
        return self.weight * total / student[0].shape[0]

    def _head(self, head: YoloHead, s: Tensor, t: Tensor) -> Tensor:
        obj = self._soft(head, s[..., 4], t[..., 4])
        cls = self._soft(head, s[..., 5:], t[..., 5:]).sum(-1)
        if self.mode == "soft":
            return obj.sum() + cls.sum()
        presence = t[..., 4] if head.new_coords else torch.sigmoid(t[..., 4])
        box = self._box(head, s[..., :4], t[..., :4])
        return obj.sum() + (presence * (cls + box)).sum()

    def _soft(self, head: YoloHead, s: Tensor, t: Tensor) -> Tensor:
        if head.new_coords:
            return squared_loss(s, t)
        temperature = self.temperature
        return temperature**2 * logistic_loss(s / temperature, torch.sigmoid(t / temperature))

    def _box(self, head: YoloHead, s: Tensor, t: Tensor) -> Tensor:
        if head.new_coords:
            return squared_loss(s, t).sum(-1)
        xy = logistic_loss(s[..., :2], torch.sigmoid(t[..., :2])).sum(-1)
        return xy + squared_loss(s[..., 2:], t[..., 2:]).sum(-1)


def _slots(head: YoloHead, raw: Tensor) -> Tensor:
    batch, _, rows, cols = raw.shape
    return raw.view(batch, len(head.mask), head.entries, rows, cols).permute(0, 1, 3, 4, 2)
