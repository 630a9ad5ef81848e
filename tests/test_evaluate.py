"""mAP evaluation against an independent COCO evaluator (pycocotools' COCOeval, a test dependency), plus hand-
worked P/R/AP cases and the ``eval`` command end to end.

Tolerance: 1e-3 on mAP@0.5 and mAP@0.5:0.95 (the acceptance criterion); in practice both evaluators do the
same float64 arithmetic and agree to ~1e-16.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO_CFG_DIR, REPORT

from cfgsurgeon.train.evaluate import score

cocoeval = pytest.importorskip("pycocotools.cocoeval", reason="pycocotools is a test dependency")
coco_api = pytest.importorskip("pycocotools.coco")

NAMES = ["a", "b", "c", "gt-only", "dets-only"]
TOLERANCE = 1e-3
_worst: dict[str, float] = {}


# -- a random scene: crowded boxes, unmatched truths, images without truths, false positives -----------------


def _scene(seed: int, images: int = 16) -> tuple[list[tuple[int, int]], list[np.ndarray], list[np.ndarray]]:
    """Image sizes, truths ``[class, x0, y0, x1, y1]`` and detections ``[class, score, x0, y0, x1, y1]``
    in pixels."""
    rng = np.random.default_rng(seed)
    sizes, truths, dets = [], [], []
    for i in range(images):
        w, h = int(rng.integers(200, 641)), int(rng.integers(200, 641))
        gt = _truths(rng, w, h) if i % 5 else np.zeros((0, 5))  # every fifth image has no truth
        sizes.append((w, h))
        truths.append(gt)
        dets.append(_detections(rng, gt, w, h))
    return sizes, truths, dets


def _truths(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    rows = []
    for _ in range(int(rng.integers(1, 7))):
        cls = int(rng.choice([0, 1, 2, 3]))
        bw, bh = rng.uniform(10, w / 3), rng.uniform(10, h / 3)
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        rows.append([cls, x0, y0, x0 + bw, y0 + bh])
        for _ in range(int(rng.integers(0, 3))):  # a crowd: heavily overlapping boxes of the same class
            dx, dy = rng.normal(0, bw / 6), rng.normal(0, bh / 6)
            rows.append([cls, x0 + dx, y0 + dy, x0 + dx + bw * rng.uniform(0.8, 1.2), y0 + dy + bh])
    return np.array(rows)


def _detections(rng: np.random.Generator, gt: np.ndarray, w: int, h: int) -> np.ndarray:
    rows = []
    for cls, x0, y0, x1, y1 in gt:
        if cls == 3:
            continue  # class "gt-only" is never detected
        for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, found twice
            noise = rng.normal(0, rng.choice([0.03, 0.1, 0.25]) * (x1 - x0), size=4)
            label = cls if rng.random() > 0.1 else float(rng.integers(0, 3))  # sometimes the wrong class
            rows.append([label, rng.random(), x0 + noise[0], y0 + noise[1], x1 + noise[2], y1 + noise[3]])
    for _ in range(int(rng.integers(0, 5))):  # false positives, including the class without truths
        bw, bh = rng.uniform(10, w / 3), rng.uniform(10, h / 3)
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        rows.append([float(rng.choice([0, 1, 2, 4])), rng.random(), x0, y0, x0 + bw, y0 + bh])
    out = np.array(rows).reshape(-1, 6)
    out[:, 4:6] = np.maximum(out[:, 4:6], out[:, 2:4] + 1)  # keep a positive size after the noise
    return out


def _cocoeval(sizes, truths, dets) -> tuple[float, float, dict[int, tuple[float, float]]]:
    """mAP@0.5, mAP@0.5:0.95 and per-class (AP50, AP50:95) by pycocotools (one 'all' area range, no cap)."""
    gt_json = {
        "info": {},
        "images": [{"id": i + 1, "width": w, "height": h} for i, (w, h) in enumerate(sizes)],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(NAMES)],
        "annotations": [],
    }
    results = []
    for i, (gt, dt) in enumerate(zip(truths, dets, strict=True)):
        for cls, x0, y0, x1, y1 in gt:
            gt_json["annotations"].append(
                {
                    "id": len(gt_json["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        for cls, conf, x0, y0, x1, y1 in dt:
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": conf,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt_api = coco_api.COCO()
        gt_api.dataset = gt_json
        gt_api.createIndex()
        dt_api = gt_api.loadRes(results)
        evaluator = cocoeval.COCOeval(gt_api, dt_api, "bbox")
        evaluator.params.maxDets = [10**6]
        evaluator.params.areaRng = [[0, 1e12]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, 0]  # (iou, recall, class)
    per_class = {}
    for k in range(len(NAMES)):
        p = precision[:, :, k]
        if (p > -1).any():
            per_class[k] = (float(p[0].mean()), float(p.mean()))
    valid = precision > -1
    return float(precision[0][valid[0]].mean()), float(precision[valid].mean()), per_class


def _note(key: str, value: float) -> None:
    _worst[key] = max(_worst.get(key, 0.0), value)
    REPORT["eval vs pycocotools"] = ", ".join(f"max |Δ{k}| = {v:.1e}" for k, v in sorted(_worst.items()))


@pytest.mark.parametrize("seed", range(6))
def test_map_agrees_with_pycocotools(seed):
    sizes, truths, dets = _scene(seed)
    ours = score(dets, truths, NAMES)
    map50, map50_95, per_class = _cocoeval(sizes, truths, dets)
    assert 0.1 < ours.mAP50 < 0.95  # a scene where the interpolation matters, not a trivial 0 or 1
    _note("mAP50", abs(ours.mAP50 - map50))
    _note("mAP50:95", abs(ours.mAP50_95 - map50_95))
    assert ours.mAP50 == pytest.approx(map50, abs=TOLERANCE)
    assert ours.mAP50_95 == pytest.approx(map50_95, abs=TOLERANCE)
    scored = {c.class_id: (c.AP50, c.AP50_95) for c in ours.per_class if c.truths}
    assert scored.keys() == per_class.keys()  # the class without truths is left out by both
    for k, (ap50, ap) in per_class.items():
        assert scored[k] == pytest.approx((ap50, ap), abs=TOLERANCE)
    assert ours.per_class[3].AP50 == 0.0  # truths, never detected
    assert math.isnan(ours.per_class[4].AP50)  # detections, no truths


def test_map_agrees_with_pycocotools_on_tied_ious():
    """Duplicate truths (equal IoUs for a detection) and perfect boxes (IoU 1 at the 0.95 threshold)."""
    truths = [np.array([[0, 10, 10, 50, 50], [0, 10, 10, 50, 50], [1, 60, 60, 90, 95]])]
    dets = [np.array([[0, 0.9, 10, 10, 50, 50], [0, 0.8, 12, 10, 50, 52], [1, 0.7, 60, 60, 90, 95]])]
    ours = score(dets, truths, NAMES)
    map50, map50_95, _ = _cocoeval([(100, 100)], truths, dets)
    assert ours.mAP50 == pytest.approx(map50, abs=TOLERANCE)
    assert ours.mAP50_95 == pytest.approx(map50_95, abs=TOLERANCE)


# -- P, R and AP by hand -------------------------------------------------------------------------------------


def test_precision_recall_and_ap_by_hand():
    """Image A: one 'a' truth found twice (second is a duplicate → FP) and a low-score FP below the P/R
    threshold. Image B: two 'b' truths, one found with IoU 0.62, one covered by an 'a' box (wrong class).

    Above 0.25: 4 detections, 2 TP → P = 0.5; 3 truths → R = 2/3.
    'a': first detection TP, recall 1 at precision 1 → AP 1 at every IoU.
    'b': recall 0.5 at precision 1, never more → 51 of the 101 recall points → AP50 = 51/101; the IoU of 0.62
    passes the thresholds 0.50, 0.55, 0.60 only → AP50:95 = 3/10 · 51/101.
    """
    truths = [
        np.array([[0, 0, 0, 10, 10]]),
        np.array([[1, 0, 0, 10, 10], [1, 20, 20, 30, 30]]),
    ]
    dets = [
        np.array([[0, 0.9, 0, 0, 10, 10], [0, 0.8, 0, 0, 10, 10], [0, 0.1, 50, 50, 60, 60]]),
        np.array([[1, 0.7, 0, 0, 10, 6.2], [0, 0.6, 20, 20, 30, 30]]),
    ]
    m = score(dets, truths, ["a", "b"])
    assert pytest.approx(0.5) == m.P
    assert pytest.approx(2 / 3) == m.R
    a, b = m.per_class
    assert pytest.approx((1.0, 1.0)) == (a.AP50, a.AP50_95)
    assert (a.P, a.R, a.detections) == (pytest.approx(1 / 3), 1.0, 3)
    assert pytest.approx(51 / 101) == b.AP50
    assert pytest.approx(0.3 * 51 / 101) == b.AP50_95
    assert m.mAP50 == pytest.approx((1 + 51 / 101) / 2)


def test_no_truths_and_no_detections():
    m = score([np.zeros((0, 6))], [np.zeros((0, 5))], ["a"])
    assert math.isnan(m.mAP50) and math.isnan(m.P) and math.isnan(m.R)
    assert m.to_dict()["mAP50"] is None  # JSON has no NaN
    json.dumps(m.to_dict())


# -- the model path and the command --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nano_run(tmp_path_factory):
    """yolo-nano with random weights on a few synthetic images."""
    from cfgsurgeon.ir import load_cfg
    from cfgsurgeon.randinit import random_weights
    from cfgsurgeon.train.synthetic import make_synthetic_dataset
    from cfgsurgeon.weights import write_weights

    root = tmp_path_factory.mktemp("eval")
    data = make_synthetic_dataset(root / "synthetic", train=2, valid=12, seed=3)
    graph = load_cfg(REPO_CFG_DIR / "yolo-nano.cfg", warn=lambda _: None)
    random_weights(graph, seed=1)
    write_weights(graph, root / "nano.weights")
    return graph, data, root / "nano.weights"


def test_predict_feeds_the_same_numbers_to_pycocotools(nano_run):
    from cfgsurgeon.train.dataset import DetectionDataset
    from cfgsurgeon.train.evaluate import predict

    graph, data, _ = nano_run
    dataset = DetectionDataset.from_data(data, "valid", graph, augment=False)
    found, truths = predict(graph, dataset, batch_size=5)
    assert len(found) == len(truths) == 12 and sum(len(f) for f in found) > 100
    metrics = score(found, truths, NAMES[:3])
    map50, map50_95, _ = _cocoeval([(1, 1)] * 12, truths, found)
    _note("mAP50", abs(metrics.mAP50 - map50))
    assert metrics.mAP50 == pytest.approx(map50, abs=TOLERANCE)
    assert metrics.mAP50_95 == pytest.approx(map50_95, abs=TOLERANCE)
    labels = [_label_file(p.with_suffix(".txt")) for p in dataset.images]
    for label, truth in zip(labels, truths, strict=True):  # truths are the label files' boxes
        expected = np.c_[label[:, 0], label[:, 1:3] - label[:, 3:5] / 2, label[:, 1:3] + label[:, 3:5] / 2]
        np.testing.assert_allclose(truth, expected.reshape(-1, 5), atol=1e-6)


def _label_file(path) -> np.ndarray:
    return np.array([line.split() for line in path.read_text().splitlines()], dtype=float).reshape(-1, 5)


def test_predict_boxes_match_detect_image(nano_run):
    """The detections eval scores are the ones ``detect`` prints for the same image (128×128 = the input)."""
    from cfgsurgeon.detect import detect_image
    from cfgsurgeon.runtimes import make_runner
    from cfgsurgeon.train.dataset import DetectionDataset
    from cfgsurgeon.train.evaluate import predict

    graph, data, _ = nano_run
    dataset = DetectionDataset.from_data(data, "valid", graph, augment=False)
    found, _ = predict(graph, dataset, conf_thresh=0.2, batch_size=1)  # detect runs one image a pass
    result = detect_image(
        graph, make_runner(graph), dataset.images[0], [str(i) for i in range(3)], thresh=0.2
    )
    expected = sorted(
        (d.class_id, round(d.prob, 5), *(round(v / 128, 4) for v in d.box)) for d in result.detections
    )
    ours = sorted(
        (int(c), round(p, 5), round(x0, 4), round(y0, 4), round(x1 - x0, 4), round(y1 - y0, 4))
        for c, p, x0, y0, x1, y1 in found[0]
    )
    assert ours == expected and ours


def test_eval_command(nano_run):
    from cfgsurgeon.cli import main

    graph, data, weights = nano_run
    cfg = str(REPO_CFG_DIR / "yolo-nano.cfg")
    result = CliRunner().invoke(
        main, ["eval", "--cfg", cfg, "--weights", str(weights), "--data", str(data), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {"P", "R", "mAP50", "mAP50_95", "per_class"} <= out.keys()
    assert [c["name"] for c in out["per_class"]] == ["circle", "square", "triangle"]
    table = CliRunner().invoke(main, ["eval", "--cfg", cfg, "--weights", str(weights), "--data", str(data)])
    assert table.exit_code == 0 and "mAP@.5" in table.output and "triangle" in table.output


def test_eval_command_refuses_a_class_count_mismatch(nano_run, tmp_path):
    from cfgsurgeon.cli import main

    _, data, weights = nano_run
    bad = tmp_path / "four.data"
    bad.write_text(data.read_text().replace("classes=3", "classes=4").replace("names=synthetic.names\n", ""))
    cfg = str(REPO_CFG_DIR / "yolo-nano.cfg")
    result = CliRunner().invoke(main, ["eval", "--cfg", cfg, "--weights", str(weights), "--data", str(bad)])
    assert result.exit_code != 0
    assert "four.data" in result.output and "4" in result.output and "Traceback" not in result.output


# -- eval's class selection, table and saved boxes, by hand -------------------------------------------------


def _hand_case():
    """The scene of test_precision_recall_and_ap_by_hand."""
    truths = [np.array([[0, 0, 0, 10, 10]]), np.array([[1, 0, 0, 10, 10], [1, 20, 20, 30, 30]])]
    dets = [
        np.array([[0, 0.9, 0, 0, 10, 10], [0, 0.8, 0, 0, 10, 10], [0, 0.1, 50, 50, 60, 60]]),
        np.array([[1, 0.7, 0, 0, 10, 6.2], [0, 0.6, 20, 20, 30, 30]]),
    ]
    return dets, truths


def test_score_a_subset_of_classes():
    """Only 'b': one detection above 0.25, a hit → P = 1; one of its two truths → R = 1/2; AP50 = 51/101."""
    m = score(*_hand_case(), ["a", "b", "c"], classes=[1])
    assert [c.name for c in m.per_class] == ["b"]
    assert (m.P, m.R, m.truths) == (1.0, 0.5, 2)
    assert m.mAP50 == pytest.approx(51 / 101)


def test_table_lists_classes_with_truths_or_detections():
    m = score(*_hand_case(), ["a", "b", "c"])
    names = [line.split()[0] for line in m.table_lines()[1:-2]]
    assert names == ["a", "b", "all"]
    assert m.table_lines()[-1] == "1 of 3 classes have neither truths nor detections: not listed"
    every = [line.split()[0] for line in m.table_lines(all_classes=True)[1:-1]]
    assert every == ["a", "b", "c", "all"]


def test_select_classes_by_id_or_name():
    from cfgsurgeon.errors import UsageError
    from cfgsurgeon.train.evaluate import select_classes

    assert select_classes("2, circle,2", ["circle", "square", "triangle"], "x.data") == [0, 2]
    for bad in ("3", "dog", "1,", "-1"):
        with pytest.raises(UsageError, match=r"x\.data: unknown class"):
            select_classes(bad, ["circle", "square", "triangle"], "x.data")


@pytest.mark.parametrize(
    ("letterbox", "photo", "expected"),
    [
        # 200×100 letterboxed into 128×128: 128×64 placed 32 px down; the box spans network pixels x 32…64,
        # y 48…80 → photo x 32·200/128 = 50 … 100, y (48 − 32)·100/64 = 25 … 75
        (True, (200, 100), [50, 25, 100, 75]),
        # 100×200: 64×128 placed 32 px right → x (32 − 32)·100/64 = 0 … 50, y 48·200/128 = 75 … 125
        (True, (100, 200), [0, 75, 50, 125]),
        # a plain resize only scales: x 0.25·200 … 0.5·200, y 0.375·100 … 0.625·100
        (False, (200, 100), [50, 37.5, 100, 62.5]),
    ],
)
def test_photo_boxes_by_hand(letterbox, photo, expected):
    from cfgsurgeon.train.evaluate import Preparation, photo_boxes

    rows = np.array([[2, 0.5, 0.25, 0.375, 0.5, 0.625]])
    out = photo_boxes(rows, photo, Preparation(letterbox, 128, 128))
    np.testing.assert_allclose(out[0, 2:], expected, atol=1e-4)  # darknet's float32 arithmetic
    assert list(out[0, :2]) == [2, 0.5]
    assert photo_boxes(np.zeros((0, 6)), photo, Preparation(letterbox, 128, 128)).shape == (0, 6)


def test_darknet_lines_by_hand():
    from cfgsurgeon.train.evaluate import darknet_lines

    # 50…100 × 25…75 in a 200×100 photo: centre (75/200, 50/100), size (50/200, 50/100)
    lines = darknet_lines(np.array([[1, 0.25, 50, 25, 100, 75]]), (200, 100))
    assert lines == ["1 0.375000 0.500000 0.250000 0.500000 0.250000"]


def test_image_ids_are_stems_ints_when_all_digits():
    from pathlib import Path

    from cfgsurgeon.errors import UsageError
    from cfgsurgeon.train.evaluate import image_ids

    assert image_ids([Path("a/000000000139.jpg"), Path("b/2.png")]) == [139, 2]
    assert image_ids([Path("a/1.jpg"), Path("b/x1.png")]) == ["1", "x1"]  # one type for pycocotools' sort
    with pytest.raises(UsageError, match=r"a/1\.jpg and b/01\.png would both be image_id 1"):
        image_ids([Path("a/1.jpg"), Path("b/01.png")])
