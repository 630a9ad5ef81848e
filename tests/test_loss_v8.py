"""The YOLOv8 loss (cfgsurgeon/train/loss_v8.py) against ultralytics' own ``v8DetectionLoss`` on the same
batch and predictions: each term within 1e-4 (relative), and the gradients with respect to the predictions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from ultralytics_oracle import ultralytics_or_skip  # noqa: E402

from cfgsurgeon.train.loss_v8 import TERMS, V8DetectionLoss  # noqa: E402

CLASSES = 5
REG_MAX = 16
STRIDES = (8, 16, 32)
HEIGHT, WIDTH = 96, 128  # not square: rows and columns must not be swapped anywhere
TOLERANCE = 1e-4


class _DetectStandIn(torch.nn.Module):
    """What v8DetectionLoss.__init__ reads of a DetectionModel: a parameter (its device), ``args`` (the gains)
    and ``model[-1]`` (the Detect head's nc, no, reg_max and strides)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
        head = SimpleNamespace(
            nc=CLASSES,
            reg_max=REG_MAX,
            no=CLASSES + 4 * REG_MAX,
            stride=torch.tensor(STRIDES, dtype=torch.float32),
        )
        self.model = [head]


def _reference_loss(maps: list, targets):
    """ultralytics' loss of ``maps`` (per level ``[B, 4·reg_max + nc, H, W]``): its 3 terms × batch size."""
    ultralytics_or_skip()
    from ultralytics.utils.loss import v8DetectionLoss

    loss = v8DetectionLoss(_DetectStandIn())
    images = maps[0].shape[0]
    preds = {
        "boxes": torch.cat([m[:, : 4 * REG_MAX].reshape(images, 4 * REG_MAX, -1) for m in maps], dim=-1),
        "scores": torch.cat([m[:, 4 * REG_MAX :].reshape(images, CLASSES, -1) for m in maps], dim=-1),
        "feats": maps,
    }
    batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1], "bboxes": targets[:, 2:6]}
    terms, _ = loss.loss(preds, batch)
    return terms


def _targets(generator, per_image: list[int]):
    """``[image, class, cx, cy, w, h]`` rows, normalised, with a truth smaller than a stride and truths at the
    image's edges among them."""
    rows = []
    for image, count in enumerate(per_image):
        for _ in range(count):
            w, h = (torch.rand(2, generator=generator) * 0.5 + 0.05).tolist()
            cx = float(torch.rand(1, generator=generator)) * (1 - w) + w / 2
            cy = float(torch.rand(1, generator=generator)) * (1 - h) + h / 2
            label = int(torch.randint(CLASSES, (1,), generator=generator))
            rows.append([image, label, cx, cy, w, h])
    if len(rows) > 1:
        rows[0][4:6] = [3 / WIDTH, 5 / HEIGHT]  # narrower than every stride: widened to find its candidates
        rows[-1][2:6] = [0.9, 0.85, 0.2, 0.3]  # touching the bottom-right corner
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def _maps(generator, images: int, spread: float) -> list:
    """Random head maps; ``spread`` scales the box logits (large: peaked distributions, varied boxes)."""
    maps = []
    for stride in STRIDES:
        raw = torch.randn(
            images, 4 * REG_MAX + CLASSES, HEIGHT // stride, WIDTH // stride, generator=generator
        )
        raw[:, : 4 * REG_MAX] *= spread
        maps.append(raw.requires_grad_(True))
    return maps


def _compare(maps: list, targets) -> None:
    ours_maps = [m.detach().clone().requires_grad_(True) for m in maps]
    total, terms = V8DetectionLoss(CLASSES, STRIDES, REG_MAX)(ours_maps, targets.clone())
    reference = _reference_loss(maps, targets.clone())
    for k, name in enumerate(TERMS):
        expected, found = float(reference[k].detach()), float(terms[name].detach())
        assert abs(found - expected) <= TOLERANCE * abs(expected) + 1e-7, (name, found, expected)
    total.backward()
    reference.sum().backward()
    for ours, theirs in zip(ours_maps, maps, strict=True):
        scale = float(theirs.grad.abs().max())
        assert scale > 0
        assert float((ours.grad - theirs.grad).abs().max()) <= TOLERANCE * scale


@pytest.mark.parametrize(("seed", "spread"), [(0, 1.0), (1, 4.0), (2, 8.0)])
def test_terms_and_gradients_equal_ultralytics(seed: int, spread: float):
    """Four images with 3, 0, 1 and 6 truths."""
    ultralytics_or_skip()
    generator = torch.Generator().manual_seed(seed)
    targets = _targets(generator, [3, 0, 1, 6])
    _compare(_maps(generator, 4, spread), targets)


def test_a_batch_without_truths_equals_ultralytics():
    """No truth anywhere: box and dfl are 0, every class target is 0."""
    ultralytics_or_skip()
    generator = torch.Generator().manual_seed(3)
    _compare(_maps(generator, 2, 1.0), torch.zeros((0, 6)))


def test_positives_from_near_boxes_equal_ultralytics():
    """Predictions close to the truths: many candidates align above 0, so the top ten are truly chosen; a
    truth as large as the image, matched on the finest level's first column, has its right side more than
    ``reg_max − 1`` cells away from its positives (their distribution targets are clamped)."""
    ultralytics_or_skip()
    generator = torch.Generator().manual_seed(4)
    large = torch.tensor([[2, 1, 0.5, 0.5, 0.97, 0.96]])
    targets = torch.cat([_targets(generator, [5, 2, 3]), large])
    maps = [m.detach() for m in _maps(generator, 3, 1.0)]
    for m, stride in zip(maps, STRIDES, strict=True):
        _pull_towards(m, targets if stride == STRIDES[0] else targets[:-1], stride)
    maps[0][2, 4 * REG_MAX + 1, :, 0] += 8.0  # the first column scores the large truth's class best
    _compare([m.requires_grad_(True) for m in maps], targets)


def _pull_towards(raw, targets, stride: int) -> None:
    """Box logits of the cells inside each truth peaked at the bin nearest its side's distance."""
    _, _, rows, cols = raw.shape
    for image, _, cx, cy, w, h in targets.tolist():
        left, top = (cx - w / 2) * WIDTH / stride, (cy - h / 2) * HEIGHT / stride
        right, bottom = (cx + w / 2) * WIDTH / stride, (cy + h / 2) * HEIGHT / stride
        for row in range(int(top), min(rows, int(bottom) + 1)):
            for col in range(int(left), min(cols, int(right) + 1)):
                x, y = col + 0.5, row + 0.5
                for side, distance in enumerate((x - left, y - top, right - x, bottom - y)):
                    bin_ = min(REG_MAX - 1, max(0, round(distance)))
                    raw[int(image), side * REG_MAX + bin_, row, col] += 6.0
