"""``cfgsurgeon detect``: darknet's preprocessing (bit-exact), its box filters, NMS and print order, and the
acceptance check against what ``darknet detector test -ext_output`` printed for yolov3-tiny on the zoo photos.
"""

from __future__ import annotations

import json
import re
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPORT

from cfgsurgeon import UsageError, loads_cfg
from cfgsurgeon.cli import main
from cfgsurgeon.detect import Detection, correct_letterbox, detections, format_darknet, nms_sort, to_json
from cfgsurgeon.images import letterbox_image, load_image, resize_image

SHARED = Path(__file__).resolve().parents[2] / "shared"
ZOO = SHARED / "zoo"
MODELS = ZOO / "models"
PHOTOS = sorted((ZOO / "images").glob("*.jpg")) if ZOO.is_dir() else []
REFERENCE = ZOO / "darknet_reference" / "detections"
needs_model = pytest.mark.skipif(
    not (MODELS / "yolov3-tiny.weights").is_file(), reason=f"needs the shared zoo ({SHARED} is absent)"
)

PROB_TOLERANCE = 1  # percentage points
BOX_TOLERANCE = 2  # pixels
LINE = re.compile(
    r"^(?P<name>[^:]+): (?P<percent>\d+)%\t\(left_x: +(?P<left>-?\d+)   top_y: +(?P<top>-?\d+)   "
    r"width: +(?P<width>-?\d+)   height: +(?P<height>-?\d+)\)$"
)


def parse_lines(lines: list[str]) -> list[tuple[str, int, tuple[int, ...]]]:
    """darknet's ``-ext_output`` lines → ``(name, percent, (left, top, width, height))``."""
    parsed = []
    for line in lines:
        match = LINE.match(line)
        assert match, f"not a darknet detection line: {line!r}"
        box = tuple(int(match[key]) for key in ("left", "top", "width", "height"))
        parsed.append((match["name"], int(match["percent"]), box))
    return parsed


def deviations(ours: list[str], reference: list[str]) -> tuple[int, int]:
    """Pair each reference line with one of ours (same class, closest box); return the largest probability
    and box deviations. Fails when the sets of lines differ beyond the tolerances."""
    mine, theirs = parse_lines(ours), parse_lines(reference)
    assert [name for name, _, _ in mine] == [name for name, _, _ in theirs], (ours, reference)
    worst_prob = worst_box = 0
    unused = list(range(len(mine)))
    for name, percent, box in theirs:
        candidates = [i for i in unused if mine[i][0] == name]
        best = min(candidates, key=lambda i: max(abs(a - b) for a, b in zip(mine[i][2], box, strict=True)))
        unused.remove(best)
        box_error = max(abs(a - b) for a, b in zip(mine[best][2], box, strict=True))
        prob_error = abs(mine[best][1] - percent)
        assert box_error <= BOX_TOLERANCE and prob_error <= PROB_TOLERANCE, (mine[best], (name, percent, box))
        worst_prob, worst_box = max(worst_prob, prob_error), max(worst_box, box_error)
    return worst_prob, worst_box


# -- darknet's resize_image / letterbox_image ----------------------------------------------------------------


def _darknet_resize_loop(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet's resize_image written as its loops, one float32 operation at a time (slow, for tiny sizes)."""
    f = np.float32
    c, in_h, in_w = img.shape
    part = np.zeros((c, in_h, w), dtype=np.float32)
    w_scale, h_scale = f(in_w - 1) / f(w - 1), f(in_h - 1) / f(h - 1)
    for k in range(c):
        for r in range(in_h):
            for col in range(w):
                if col == w - 1 or in_w == 1:
                    part[k, r, col] = img[k, r, in_w - 1]
                else:
                    sx = f(col) * w_scale
                    ix = int(sx)
                    dx = sx - f(ix)
                    part[k, r, col] = (f(1) - dx) * img[k, r, ix] + dx * img[k, r, ix + 1]
    out = np.zeros((c, h, w), dtype=np.float32)
    for k in range(c):
        for r in range(h):
            sy = f(r) * h_scale
            iy = int(sy)
            dy = sy - f(iy)
            out[k, r] = (f(1) - dy) * part[k, iy]
            if r != h - 1 and in_h != 1:
                out[k, r] += dy * part[k, iy + 1]
    return out


def test_resize_2x2_to_3x3_hand_computed():
    img = np.array([[[0.0, 1.0], [0.5, 0.25]]], dtype=np.float32)  # 1 channel, 2 rows, 2 columns
    # scale (2-1)/(3-1) = .5: columns 0, .5, 1 (the last column is copied); then rows the same way
    expected = [[0.0, 0.5, 1.0], [0.25, 0.4375, 0.625], [0.5, 0.375, 0.25]]
    np.testing.assert_array_equal(resize_image(img, 3, 3), np.array([expected], dtype=np.float32))


def test_resize_same_size_is_a_copy():
    img = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    out = resize_image(img, 5, 4)
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_resize_keeps_darknets_last_row_quirk():
    # 4 → 38 rows: (38-1)·(3/37) is 2.9999998 in float32, so darknet's last row is (1 − .99999976)·row 2
    out = resize_image(np.ones((1, 4, 2), dtype=np.float32), 2, 38)
    assert out[0, -1, 0] == np.float32(1) - np.float32(0.99999976)
    assert out[0, -2, 0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("in_w", "in_h", "w", "h"), [(5, 7, 9, 4), (6, 3, 2, 5), (1, 4, 3, 3), (4, 1, 3, 3)])
def test_resize_bit_exact_to_darknets_loops(in_w: int, in_h: int, w: int, h: int):
    img = np.random.default_rng(in_w * 100 + in_h).random((2, in_h, in_w), dtype=np.float32)
    ours = resize_image(img, w, h)
    np.testing.assert_array_equal(ours.view(np.uint32), _darknet_resize_loop(img, w, h).view(np.uint32))


def test_letterbox_hand_computed():
    img = np.array([[[0.0, 1.0], [0.5, 0.25]]], dtype=np.float32)
    # 3/2 < 4/2 → new size 3 × (2·3)//2 = 3×3, pasted at ((3-3)//2, (4-3)//2) = (0, 0) on 0.5 grey
    expected = [[0.0, 0.5, 1.0], [0.25, 0.4375, 0.625], [0.5, 0.375, 0.25], [0.5, 0.5, 0.5]]
    np.testing.assert_array_equal(letterbox_image(img, 3, 4), np.array([expected], dtype=np.float32))


def test_letterbox_centres_a_wide_image():
    img = np.zeros((3, 2, 4), dtype=np.float32)  # 4 wide, 2 high → 4×2 inside 4×4, rows 1..2
    out = letterbox_image(img, 4, 4)
    assert (out[:, 1:3] == 0).all() and (out[:, 0] == 0.5).all() and (out[:, 3] == 0.5).all()


def test_correct_letterbox_undoes_the_padding():
    # photo 200×100 in a 4×4 network: new size 4×2, 1 row of grey above and below
    boxes = np.array([[0.5, 0.25, 0.5, 0.25], [0.5, 0.5, 1.0, 0.5]], dtype=np.float32)
    out = correct_letterbox(boxes, (200, 100), (4, 4))
    np.testing.assert_allclose(out, [[0.5, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])


# -- thresholds, NMS, print order and formats ----------------------------------------------------------------


def test_nms_suppresses_within_a_class_only():
    boxes = np.array([[0.5, 0.5, 0.4, 0.4], [0.52, 0.5, 0.4, 0.4], [0.9, 0.9, 0.1, 0.1]], dtype=np.float32)
    probs = np.array([[0.8, 0.0], [0.9, 0.7], [0.6, 0.0]], dtype=np.float32)
    out = nms_sort(boxes, probs, 0.45)
    # class 0: box 1 (0.9) wins, box 0 overlaps it (IoU .9) and loses; the far box 2 stays
    np.testing.assert_array_equal(out[:, 0], probs[:, 0] * [0, 1, 1])
    np.testing.assert_array_equal(out[:, 1], probs[:, 1])  # another class is never suppressed


def test_diou_kinds_suppress_less_than_plain_nms():
    boxes = np.array([[0.5, 0.5, 0.4, 0.4], [0.7, 0.5, 0.4, 0.4]], dtype=np.float32)  # IoU 1/3
    probs = np.array([[0.9], [0.8]], dtype=np.float32)
    assert nms_sort(boxes, probs, 0.3)[1, 0] == 0  # IoU .333 > .3
    assert nms_sort(boxes, probs, 0.3, kind="diounms", beta=0.6)[1, 0] == np.float32(0.8)  # minus a penalty
    assert nms_sort(boxes, probs, 0.3, kind="diou")[1, 0] == np.float32(0.8)  # greedynms: exponent 0.6


def _darknet_box_iou(a, b) -> np.float32:
    """darknet's box.c ``box_iou`` (overlap, box_intersection, box_union) in float32 scalars."""
    f, two = np.float32, np.float32(2)

    def overlap(x1, w1, x2, w2):
        return min(x1 + w1 / two, x2 + w2 / two) - max(x1 - w1 / two, x2 - w2 / two)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = f(0) if w < 0 or h < 0 else w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return f(0) if inter == 0 or union == 0 else f(inter / union)


def _darknet_do_nms_sort(boxes: np.ndarray, probs: np.ndarray, thresh: float) -> np.ndarray:
    """darknet's ``do_nms_sort`` loop, box by box (ties in the stable order our sort uses)."""
    probs = probs.copy()
    for k in range(probs.shape[1]):
        order = sorted((i for i in range(len(boxes)) if probs[i, k] > 0), key=lambda i: -probs[i, k])
        for pos, i in enumerate(order):
            if probs[i, k] == 0:
                continue
            for j in order[pos + 1 :]:
                if _darknet_box_iou(boxes[i], boxes[j]) > np.float32(thresh):
                    probs[j, k] = 0
    return probs


def _random_detections(seed: int, n: int = 70, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0.05, 0.6, (n, 4)).astype(np.float32)
    boxes[: n // 10, 2] = 0  # degenerate boxes (zero area)
    boxes[n // 10 : n // 5] = boxes[0]  # identical boxes
    probs = rng.choice(np.float32([0, 0.1, 0.3, 0.5, 0.7]), (n, classes))  # many ties
    return boxes, probs.astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_nms_equals_darknets_loop(seed: int):
    boxes, probs = _random_detections(seed)
    expected = _darknet_do_nms_sort(boxes, probs, 0.45)
    assert (expected == 0).sum() > (probs == 0).sum()  # something was suppressed
    np.testing.assert_array_equal(nms_sort(boxes, probs, 0.45), expected)


@pytest.mark.parametrize("kind", ["iou", "diou", "diounms"])
def test_nms_beyond_the_pairwise_limit_gives_the_same(kind: str, monkeypatch):
    """More boxes than PAIRWISE_LIMIT: the one-box-at-a-time path, same result (and for the DIoU kinds)."""
    import cfgsurgeon.detect as D

    boxes, probs = _random_detections(7, n=120)
    pairwise = nms_sort(boxes, probs, 0.3, kind, beta=0.8)
    monkeypatch.setattr(D, "PAIRWISE_LIMIT", 10)
    np.testing.assert_array_equal(nms_sort(boxes, probs, 0.3, kind, beta=0.8), pairwise)
    assert (pairwise == 0).sum() > (probs == 0).sum()


TINY_YOLO = """
[net]
width=4
height=4
channels=3

[convolutional]
filters=14
size=1
stride=1
pad=0
activation=linear

[yolo]
mask=0,1
anchors=2,2, 2,2
classes=2
num=2
"""


def _head(cells: dict[tuple[int, int, int], list[float]]) -> np.ndarray:
    """A [yolo] output (2 anchors × (5 + 2 classes), 4×4) with the given (anchor, row, col) entries."""
    out = np.zeros((2, 7, 4, 4), dtype=np.float32)
    for (anchor, row, col), values in cells.items():
        out[anchor, :, row, col] = values
    return out.reshape(14, 4, 4)


def test_detections_follow_darknet_filters_and_order():
    graph = loads_cfg(TINY_YOLO, warn=lambda _: None)
    head = _head(
        {
            (0, 0, 0): [0.5, 0.5, 0.0, 0.0, 0.9, 1.0, 0.0],  # class a 0.9
            (1, 0, 0): [0.6, 0.5, 0.0, 0.0, 0.8, 0.9, 0.5],  # a 0.72 (suppressed by the first), b 0.4
            (0, 3, 3): [0.5, 0.5, 0.0, 0.0, 0.25, 1.0, 1.0],  # objectness not above .25: no candidate
            (1, 2, 2): [0.5, 0.5, 0.0, 0.0, 0.5, 0.4, 0.6],  # a 0.2 (below), b 0.3
        }
    )
    dets = detections(graph, [head], (100, 100), names=["a", "b"])
    assert [(d.name, round(d.prob, 4)) for d in dets] == [("a", 0.9), ("b", 0.4), ("b", 0.3)]
    # box: centre (0.5/4) of a 0.5-wide box: left -12.5 px, which C's round prints as -13
    assert format_darknet(dets)[0] == "a: 90%\t(left_x:  -13   top_y:  -13   width:   50   height:   50)"


def test_second_class_of_a_box_follows_its_best_class():
    graph = loads_cfg(TINY_YOLO, warn=lambda _: None)
    head = _head({(0, 1, 1): [0.5, 0.5, 0.0, 0.0, 1.0, 0.3, 0.7]})
    dets = detections(graph, [head], (100, 100), names=["a", "b"])
    assert [d.name for d in dets] == ["b", "a"] and dets[0].box == dets[1].box


def test_too_few_names_is_a_usage_error():
    graph = loads_cfg(TINY_YOLO, warn=lambda _: None)
    with pytest.raises(UsageError, match="1 class names"):
        detections(graph, [_head({})], (10, 10), names=["only"])


def test_json_schema():
    dets = [Detection(16, "dog", 0.8123, (123.6, 220.2, 258.4, 297.5))]
    rows = json.loads(json.dumps(to_json("dog.jpg", dets)))
    box = [124, 220, 258, 298]  # rounded like darknet's printout
    assert rows == [{"image": "dog.jpg", "class": 16, "name": "dog", "prob": 0.8123, "box": box}]
    assert to_json("none.jpg", []) == []


def test_unreadable_image_is_one_line_usage_error(tmp_path: Path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(UsageError) as caught:
        load_image(bad)
    assert "cannot read the image" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UsageError):
        load_image(tmp_path / "missing.jpg")


# -- acceptance: yolov3-tiny on the zoo photos vs darknet ----------------------------------------------------


@cache
def _model():
    from cfgsurgeon import load_cfg, read_weights
    from cfgsurgeon.images import load_names
    from cfgsurgeon.runtimes import make_runner

    graph = load_cfg(MODELS / "yolov3-tiny.cfg", warn=lambda _: None)
    read_weights(graph, MODELS / "yolov3-tiny.weights")
    return graph, make_runner(graph, "torch"), load_names(MODELS / "coco.names")


_WORST: dict[str, tuple[int, int]] = {}


@pytest.mark.shared
@pytest.mark.slow
@needs_model
@pytest.mark.parametrize("photo", PHOTOS, ids=[p.name for p in PHOTOS])
def test_yolov3_tiny_matches_darknet(photo: Path):
    pytest.importorskip("torch")
    from cfgsurgeon.detect import detect_image

    graph, runner, names = _model()
    result = detect_image(graph, runner, photo, names)
    reference = (REFERENCE / f"{photo.stem}.txt").read_text().splitlines()
    ours = format_darknet(result.detections)
    if photo.stem == "scream":
        assert ours == [] and reference == []
    _WORST[photo.stem] = deviations(ours, reference)
    worst_prob = max(p for p, _ in _WORST.values())
    worst_box = max(b for _, b in _WORST.values())
    REPORT["detect vs darknet (yolov3-tiny, zoo photos)"] = (
        f"{len(_WORST)} photos, max prob deviation {worst_prob} points, max box deviation {worst_box} px"
    )
    print(f"{photo.name}: max prob deviation {_WORST[photo.stem][0]} points, box {_WORST[photo.stem][1]} px")


# -- the command line ----------------------------------------------------------------------------------------


def _model_args() -> list[str]:
    return [
        "--cfg",
        str(MODELS / "yolov3-tiny.cfg"),
        "--weights",
        str(MODELS / "yolov3-tiny.weights"),
        "--names",
        str(MODELS / "coco.names"),
    ]


@pytest.mark.shared
@pytest.mark.slow
@needs_model
def test_cli_detect_prints_darknet_lines_and_draws(tmp_path: Path):
    pytest.importorskip("torch")
    from PIL import Image

    photo = ZOO / "images" / "dog.jpg"
    result = CliRunner().invoke(main, ["detect", *_model_args(), "-o", str(tmp_path / "out"), str(photo)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"{re.escape(str(photo))}: Predicted in \d+\.\d+ ms\.", lines[0])
    deviations(lines[1:], (REFERENCE / "dog.txt").read_text().splitlines())
    with Image.open(tmp_path / "out" / "dog.png") as drawn:
        assert drawn.format == "PNG" and drawn.size == (768, 576)


@pytest.mark.shared
@pytest.mark.slow
@needs_model
def test_cli_detect_json(tmp_path: Path):
    pytest.importorskip("torch")
    photo = ZOO / "images" / "eagle.jpg"
    result = CliRunner().invoke(main, ["detect", *_model_args(), "--json", "-o", str(tmp_path), str(photo)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(row["image"], row["name"]) for row in rows] == [(str(photo), "bird")]
    assert set(rows[0]) == {"image", "class", "name", "prob", "box"} and len(rows[0]["box"]) == 4
    assert "Predicted in" in result.stderr and (tmp_path / "eagle.png").is_file()


def test_cli_missing_image_is_one_line(tmp_path: Path):
    args = ["--cfg", "x.cfg", "--weights", "x.weights", "--names", "x.names", str(tmp_path / "no.jpg")]
    result = CliRunner().invoke(main, ["detect", *args])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'no.jpg'}: no such image file"]


@pytest.mark.shared
@needs_model
def test_cli_refuses_to_draw_over_an_input(tmp_path: Path):
    photo = shutil.copy(ZOO / "images" / "dog.jpg", tmp_path / "dog.png")
    result = CliRunner().invoke(main, ["detect", *_model_args(), "-o", str(tmp_path), str(photo)])
    assert result.exit_code != 0 and "refusing to overwrite" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.shared
@needs_model
def test_cli_too_few_names(tmp_path: Path):
    names = tmp_path / "three.names"
    names.write_text("a\nb\nc\n")
    args = _model_args()
    args[-1] = str(names)
    result = CliRunner().invoke(main, ["detect", *args, "-o", str(tmp_path), str(ZOO / "images" / "dog.jpg")])
    assert result.exit_code != 0 and "3 class names, but the model has 80 classes" in result.output


def test_cli_help_explains_every_option():
    result = CliRunner().invoke(main, ["detect", "--help"])
    assert result.exit_code == 0
    for option in ("--cfg", "--weights", "--names", "--thresh", "--json", "--output", "--backend"):
        assert option in result.output
