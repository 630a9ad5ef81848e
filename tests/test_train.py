"""Training: the YOLO loss against darknet's rules (written out again here, loop by loop, from
``yolo_layer.c``), the BN-L1 sparsity penalty, and the trainer (sparse training with and without mixed
precision, 2-process torchrun DDP against 1 process, resume)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cfgsurgeon.ir import loads_cfg  # noqa: E402
from cfgsurgeon.train.loss import YoloLoss  # noqa: E402

ANCHORS = "4,5, 8,9, 12,18, 24,24, 40,50, 60,60"

# Two [yolo] heads on a 64x64 input: a 4x4 grid (anchors 3,4,5) and an 8x8 grid (anchors 0,1,2), 3 classes.
HEADS_CFG = """
[net]
width=64
height=64
channels=3

[convolutional]
filters=8
size=3
stride=8
pad=1
activation=leaky

[convolutional]
filters=24
size=1
stride=2
activation=linear

[yolo]
mask=3,4,5
anchors={anchors}
classes=3
num=6
{options}

[route]
layers=0

[convolutional]
filters=24
size=1
stride=1
activation=linear

[yolo]
mask=0,1,2
anchors={anchors}
classes=3
num=6
{options}
"""

GRIDS = [(4, 4), (8, 8)]


def heads_graph(options: str = ""):
    return loads_cfg(HEADS_CFG.format(anchors=ANCHORS, options=options), "heads.cfg", warn=lambda m: None)


# -- darknet's process_batch, transcribed loop by loop (numpy, float64) ------------------------------------


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def _overlap(x1, w1, x2, w2):
    return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)


def _iou(a, b):
    w, h = _overlap(a[0], a[2], b[0], b[2]), _overlap(a[1], a[3], b[1], b[3])
    inter = 0.0 if w < 0 or h < 0 else w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return 0.0 if inter == 0 or union == 0 else inter / union


def darknet_delta(raw, truths, mask, opts, net=(64, 64)):
    """Darknet's ``l.delta`` for one [yolo] layer (iou_loss=mse, no counters_per_class / focal loss).

    ``raw``: (batch, n*(5+classes), h, w) conv outputs; ``truths``: per image, a list of (x, y, w, h, class).
    """
    anchors = [float(v) for v in ANCHORS.split(",")]
    classes = 3
    batch, _, lh, lw = raw.shape
    n_mask = len(mask)
    out = raw.astype(np.float64).reshape(batch, n_mask, 5 + classes, lh, lw).copy()
    new_coords = opts.get("new_coords", 0)
    if not new_coords:
        out[:, :, [0, 1]] = _logistic(out[:, :, [0, 1]])
        out[:, :, 4:] = _logistic(out[:, :, 4:])
    s = opts.get("scale_x_y", 1.0)
    out[:, :, [0, 1]] = out[:, :, [0, 1]] * s - 0.5 * (s - 1)
    delta = np.zeros_like(out)
    ignore, iou_norm = opts.get("ignore_thresh", 0.5), opts.get("iou_normalizer", 0.75)
    obj_norm, truth_thresh = opts.get("obj_normalizer", 1.0), opts.get("truth_thresh", 1.0)
    iou_thresh, eps = opts.get("iou_thresh", 1.0), opts.get("label_smooth_eps", 0.0)

    def pred_box(b, n, j, i, anchor):
        tw, th = out[b, n, 2, j, i], out[b, n, 3, j, i]
        scale_w, scale_h = (tw * tw * 4, th * th * 4) if new_coords else (math.exp(tw), math.exp(th))
        return (
            (i + out[b, n, 0, j, i]) / lw,
            (j + out[b, n, 1, j, i]) / lh,
            scale_w * anchors[2 * anchor] / net[0],
            scale_h * anchors[2 * anchor + 1] / net[1],
        )

    def delta_box(truth, b, n, j, i, anchor):
        scale = 2 - truth[2] * truth[3]
        tx, ty = truth[0] * lw - i, truth[1] * lh - j
        tw = math.log(truth[2] * net[0] / anchors[2 * anchor])
        th = math.log(truth[3] * net[1] / anchors[2 * anchor + 1])
        if new_coords:
            tw = math.sqrt(truth[2] * net[0] / (4 * anchors[2 * anchor]))
            th = math.sqrt(truth[3] * net[1] / (4 * anchors[2 * anchor + 1]))
        for k, target in enumerate((tx, ty, tw, th)):
            delta[b, n, k, j, i] += scale * (target - out[b, n, k, j, i]) * iou_norm

    def delta_class(b, n, j, i, class_id):
        if delta[b, n, 5 + class_id, j, i]:
            delta[b, n, 5 + class_id, j, i] = (1 - eps) + 0.5 * eps - out[b, n, 5 + class_id, j, i]
            return
        for c in range(classes):
            y = (1.0 if c == class_id else 0.0) * (1 - eps) + 0.5 * eps
            delta[b, n, 5 + c, j, i] = y - out[b, n, 5 + c, j, i]

    for b in range(batch):
        for j in range(lh):
            for i in range(lw):
                for n in range(n_mask):
                    pred = pred_box(b, n, j, i, mask[n])
                    best_match, best_iou, best_t = 0.0, 0.0, 0
                    for t, truth in enumerate(truths[b]):
                        class_match = any(out[b, n, 5 + c, j, i] > 0.25 for c in range(classes))
                        iou = _iou(pred, truth)
                        if iou > best_match and class_match:
                            best_match = iou
                        if iou > best_iou:
                            best_iou, best_t = iou, t
                    delta[b, n, 4, j, i] = obj_norm * (0 - out[b, n, 4, j, i])
                    if best_match > ignore:
                        delta[b, n, 4, j, i] = 0
                    if best_iou > truth_thresh:
                        delta[b, n, 4, j, i] = obj_norm * (1 - out[b, n, 4, j, i])
                        delta_class(b, n, j, i, int(truths[b][best_t][4]))
                        delta_box(truths[b][best_t], b, n, j, i, mask[n])
        for truth in truths[b]:
            i, j = int(truth[0] * lw), int(truth[1] * lh)
            best_iou, best_n = 0.0, 0
            for n in range(len(anchors) // 2):
                anchor = (0, 0, anchors[2 * n] / net[0], anchors[2 * n + 1] / net[1])
                iou = _iou(anchor, (0, 0, truth[2], truth[3]))
                if iou > best_iou:
                    best_iou, best_n = iou, n
            responsible = [best_n] if best_n in mask else []
            if iou_thresh < 1:
                for n in mask:
                    anchor = (0, 0, anchors[2 * n] / net[0], anchors[2 * n + 1] / net[1])
                    if n != best_n and _iou(anchor, (0, 0, truth[2], truth[3])) > iou_thresh:
                        responsible.append(n)
            for n in responsible:
                slot = mask.index(n)
                delta_box(truth, b, slot, j, i, n)
                delta[b, slot, 4, j, i] = obj_norm * (1 - out[b, slot, 4, j, i])
                delta_class(b, slot, j, i, int(truth[4]))
        if iou_thresh < 1:
            for j in range(lh):
                for i in range(lw):
                    for n in range(n_mask):
                        if delta[b, n, 4, j, i] != 0:
                            count = sum(delta[b, n, 5 + c, j, i] > 0 for c in range(classes))
                            if count:
                                delta[b, n, :4, j, i] /= count
    return delta.reshape(raw.shape)


def loss_gradients(graph, raws, truths):
    """Gradient of our loss (times the batch: darknet's deltas are per image) w.r.t. each head's logits."""
    loss = YoloLoss(graph)
    inputs = [torch.tensor(r, dtype=torch.float64, requires_grad=True) for r in raws]
    rows = [[b, t[4], *t[:4]] for b, image in enumerate(truths) for t in image]
    targets = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    terms = loss([x.float() for x in inputs], targets)
    terms.total.backward()
    return [x.grad.numpy() * len(truths) for x in inputs], terms


def random_case(seed: int, batch: int = 3):
    rng = np.random.default_rng(seed)
    raws = [rng.normal(0, 1.5, size=(batch, 24, h, w)).astype(np.float32) for h, w in GRIDS]
    truths = []
    for _ in range(batch):
        count = int(rng.integers(0, 5))
        sizes = rng.uniform(0.04, 0.9, size=(count, 2))
        centres = rng.uniform(0.02, 0.98, size=(count, 2))
        truths.append([(*c, *s, int(rng.integers(0, 3))) for c, s in zip(centres, sizes, strict=True)])
    return raws, truths


CASES = {
    "defaults": ({}, ""),
    "darknet-yolov4-like": (
        {"scale_x_y": 1.1, "iou_thresh": 0.213, "iou_normalizer": 0.07, "ignore_thresh": 0.3},
        "scale_x_y=1.1\niou_thresh=0.213\niou_normalizer=0.07\nignore_thresh=0.3",
    ),
    "smoothing-and-normalisers": (
        {"label_smooth_eps": 0.1, "obj_normalizer": 0.4, "ignore_thresh": 0.2, "truth_thresh": 0.6},
        "label_smooth_eps=0.1\nobj_normalizer=0.4\nignore_thresh=0.2\ntruth_thresh=0.6",
    ),
    "new-coords": (
        {"new_coords": 1, "scale_x_y": 2.0, "iou_thresh": 0.2, "ignore_thresh": 0.4},
        "new_coords=1\nscale_x_y=2.0\niou_thresh=0.2\nignore_thresh=0.4",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_gradient_is_darknets_delta(case: str):
    """Across random predictions and truths, -∂loss/∂logit equals darknet's delta element by element; the
    case also has to exercise ignored predictions and several assignments (else it proves little)."""
    opts, text = CASES[case]
    graph = heads_graph(text)
    masks = [[3, 4, 5], [0, 1, 2]]
    ignored = assigned = 0
    for seed in range(4):
        raws, truths = random_case(seed)
        grads, terms = loss_gradients(graph, raws, truths)
        assert math.isfinite(float(terms.total.detach()))
        for raw, grad, mask in zip(raws, grads, masks, strict=True):
            delta = darknet_delta(raw, truths, mask, opts)
            np.testing.assert_allclose(-grad, delta, atol=2e-5, rtol=1e-4)
            obj = delta.reshape(raw.shape[0], 3, 8, *raw.shape[2:])[:, :, 4]
            ignored += int((obj == 0).sum())
            assigned += int((obj > 0).sum())
    assert ignored > 0 and assigned > 3


def _one_truth_gradients(truth, options=""):
    graph = heads_graph(options)
    raws = [np.zeros((1, 24, h, w), dtype=np.float32) - 4.0 for h, w in GRIDS]  # confident "nothing"
    grads, _ = loss_gradients(graph, raws, [[truth]])
    return [g.reshape(1, 3, 8, *g.shape[2:])[0] for g in grads]  # (slot, entry, row, col)


def test_assignment_best_anchor_over_all_heads():
    """A 24x24 px truth at (0.3, 0.6) of a 64x64 input: its best anchor of all six is 24,24 (index 3, IoU 1),
    so only head 1 (mask 3,4,5), slot 0, cell (col int(0.3*4)=1, row int(0.6*4)=2) is pushed towards
    objectness 1 (negative gradient); every other slot of both heads is pushed towards 0."""
    coarse, fine = _one_truth_gradients((0.3, 0.6, 24 / 64, 24 / 64, 2))
    assert coarse[0, 4, 2, 1] < 0
    others = np.ones(coarse.shape[:1] + coarse.shape[2:], dtype=bool)
    others[0, 2, 1] = False
    assert (coarse[:, 4][others] > 0).all()
    assert (fine[:, 4] > 0).all()
    assert coarse[0, 7, 2, 1] < 0 and coarse[0, 5, 2, 1] > 0 and coarse[0, 6, 2, 1] > 0  # class 2 of 0..2


def test_assignment_extra_anchors_above_iou_thresh():
    """A 10x16 px truth: centred IoUs with the anchors 4x5, 8x9, 12x18 are 20/160, 72/160, 160/216 (best:
    anchor 2, in head 2's mask). With iou_thresh=0.4 the mask's anchor 1 (0.45) is responsible too, anchor 0
    (0.125) is not; head 1 gets nothing."""
    truth = (0.55, 0.2, 10 / 64, 16 / 64, 0)
    col, row = int(0.55 * 8), int(0.2 * 8)
    coarse, fine = _one_truth_gradients(truth)
    assert fine[2, 4, row, col] < 0 and fine[1, 4, row, col] > 0 and (coarse[:, 4] > 0).all()
    coarse, fine = _one_truth_gradients(truth, "iou_thresh=0.4")
    assert fine[2, 4, row, col] < 0 and fine[1, 4, row, col] < 0 and fine[0, 4, row, col] > 0
    assert (coarse[:, 4] > 0).all()


def test_assignment_ignores_good_predictions():
    """Slot 2 (anchor 60x60) of cell (0, 0) predicts a 60x60 px box centred at (1/8, 1/8); a 50x50 px truth
    there overlaps it by IoU 2500/3600 = 0.69 > ignore_thresh 0.5 but is assigned to anchor 40x50 (IoU 0.8,
    slot 1). The prediction gets no objectness gradient only while one of its class probabilities is above
    0.25; with all of them at σ(-4) = 0.018 it is still pushed towards 0."""
    graph = heads_graph("ignore_thresh=0.5")
    raws = [np.zeros((1, 24, h, w), dtype=np.float32) - 4.0 for h, w in GRIDS]
    coarse = raws[0].reshape(1, 3, 8, 4, 4)
    coarse[0, 2, 0:4, 0, 0] = 0.0  # x, y at the cell centre; w, h = the anchor
    truth = (0.125, 0.125, 50 / 64, 50 / 64, 1)
    grads, _ = loss_gradients(graph, raws, [[truth]])
    obj = grads[0].reshape(3, 8, 4, 4)[:, 4, 0, 0]
    assert obj[1] < 0 and obj[2] > 0
    coarse[0, 2, 5, 0, 0] = 0.0  # class 0 probability 0.5
    grads, _ = loss_gradients(graph, raws, [[truth]])
    obj = grads[0].reshape(3, 8, 4, 4)[:, 4, 0, 0]
    assert obj[1] < 0 and obj[2] == 0 and obj[0] > 0


@pytest.mark.parametrize(
    ("kind", "expected"),
    # pred 24x24 px at (24, 40), truth 24x24 px at (30, 44): intersection 18x20 = 360, union 792, hull 30x28
    [
        ("iou", 360 / 792),
        ("giou", 360 / 792 - (840 - 792) / 840),
        ("diou", 360 / 792 - (6**2 + 4**2) / (30**2 + 28**2)),
        ("ciou", 360 / 792 - (6**2 + 4**2) / (30**2 + 28**2)),  # equal aspect ratios: no shape term
    ],
)
def test_iou_losses_by_hand(kind: str, expected: float):
    """iou_loss=KIND: box term = iou_normalizer·(1 − IoU_kind) for the one responsible prediction. Logits 0
    put slot 0 (anchor 24x24) of cell (col 1, row 2) of the 16-px grid at (24, 40), 24x24 px."""
    graph = heads_graph(f"iou_loss={kind}\niou_normalizer=1")
    raws = [np.zeros((1, 24, h, w), dtype=np.float32) for h, w in GRIDS]
    _, terms = loss_gradients(graph, raws, [[(30 / 64, 44 / 64, 24 / 64, 24 / 64, 0)]])
    assert float(terms.box.detach()) == pytest.approx(1 - expected, abs=1e-5)
    assert terms.positives == 1
