"""The PyTorch backend's detection heads ([yolo], [Gaussian_yolo], [region]) against float64 numpy versions
of darknet's output semantics, and ``postprocess.decode``'s box formulas against hand-computed values (the
harness and references are those of ``test_torch_layers.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import quiet

from cfgsurgeon import loads_cfg
from cfgsurgeon.postprocess import decode

torch = pytest.importorskip("torch")

from test_torch_layers import build, close, conv_layer, image, net, run, sigmoid, yolo_output  # noqa: E402

# -- detection heads -----------------------------------------------------------------------------------------

YOLO_ANCHORS = "anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319"


@pytest.mark.parametrize(
    ("options", "scale", "new_coords"),
    [
        ("", 1.0, 0),
        ("scale_x_y=1.2", 1.2, 0),
        ("scale_x_y=2.0\nnew_coords=1", 2.0, 1),
        ("new_coords=1", 1.0, 1),
    ],
)
def test_yolo_output(options: str, scale: float, new_coords: int) -> None:
    classes, mask = 3, [3, 4]
    text = (
        net(len(mask) * (5 + classes), 4, 6)
        + f"[yolo]\nmask=3,4\nclasses={classes}\nnum=6\n{YOLO_ANCHORS}\n{options}\n"
    )
    graph, model = build(text)
    x = image(graph)
    (ours,) = run(model, x, [0])
    close(ours, yolo_output(x[0].astype(np.float64), len(mask), classes, scale, new_coords))


def test_gaussian_yolo_output() -> None:
    """Entries x μ,σ, y μ,σ, w μ,σ, h μ,σ, obj, classes: logistic on 0–3, 5, 7, 8…; scale_x_y on 0 and 2."""
    classes, n, s = 2, 2, 1.1
    text = (
        net(n * (9 + classes), 3, 5)
        + f"[Gaussian_yolo]\nmask=0,1\nclasses={classes}\nnum=2\nanchors=10,14,23,27\nscale_x_y={s}\n"
    )
    graph, model = build(text)
    x = image(graph)
    (ours,) = run(model, x, [0])
    v = x[0].astype(np.float64).reshape(n, 9 + classes, 3, 5).copy()
    for a in range(n):
        for e in [0, 1, 2, 3, 5, 7, *range(8, 9 + classes)]:
            v[a, e] = sigmoid(v[a, e])
        for e in (0, 2):
            v[a, e] = v[a, e] * s - 0.5 * (s - 1)
    close(ours, v.reshape(x[0].shape))


@pytest.mark.parametrize("softmax", [1, 0])
def test_region_output(softmax: int) -> None:
    """[region]: flattened channels-last (out[(y·w + x)·n·E + k] = in[k][y][x]), logistic on entry 4 of every
    box, softmax over the classes when ``softmax=1``; coordinates stay raw."""
    n, classes, h, w = 2, 3, 3, 4
    e = 5 + classes
    text = (
        net(n * e, h, w)
        + f"[region]\nclasses={classes}\ncoords=4\nnum={n}\nsoftmax={softmax}\nanchors=1,2,3,4\n"
    )
    graph, model = build(text)
    x = image(graph)
    (ours,) = run(model, x, [0])
    v = x[0].astype(np.float64)
    flat = np.zeros(v.size)
    for k in range(n * e):
        for y in range(h):
            for xx in range(w):
                flat[(y * w + xx) * n * e + k] = v[k, y, xx]
    for i in range(h * w * n):
        flat[i * e + 4] = sigmoid(flat[i * e + 4])
        if softmax:
            block = flat[i * e + 5 : i * e + 5 + classes]
            flat[i * e + 5 : i * e + 5 + classes] = (
                np.exp(block - block.max()) / np.exp(block - block.max()).sum()
            )
    close(ours.reshape(-1), flat)


def test_decode_yolo_by_hand() -> None:
    """One box worked out by hand: grid 4×6 (h×w), anchor mask 4 → (135, 169), net 64×96 (h×w).
    Cell row 1, column 2, anchor index 1: x = 0.25, y = 0.5, w = ln 2, h = 0, objectness 0.8, classes
    (0.5, 0.25, 1) → box (0.375, 0.375, 2·135/96, 169/64), p = (0.4, 0.2, 0.8)."""
    graph = loads_cfg(net(16, 4, 6) + f"[yolo]\nmask=3,4\nclasses=3\nnum=6\n{YOLO_ANCHORS}\n", warn=quiet)
    layer = graph[0]
    out = np.zeros((2, 8, 4, 6))
    out[1, :, 1, 2] = [0.25, 0.5, math.log(2), 0.0, 0.8, 0.5, 0.25, 1.0]
    rows = decode(layer, out.reshape(16, 4, 6), (64, 96))
    row = rows[(1 * 6 + 2) * 2 + 1]  # rows ordered by (row, column, anchor)
    np.testing.assert_allclose(
        row, [2.25 / 6, 1.5 / 4, 2 * 135 / 96, 169 / 64, 0.8, 0.4, 0.2, 0.8], rtol=1e-12
    )
    # every other row: objectness 0 → class columns 0; size exp(0)·anchor / net
    other = rows[0]
    np.testing.assert_allclose(other, [0, 0, 81 / 96, 82 / 64, 0, 0, 0, 0], rtol=1e-12, atol=1e-15)


def test_decode_yolo_new_coords_by_hand() -> None:
    """new_coords=1: bw = w²·4·anchor_w / net_w."""
    graph = loads_cfg(
        net(8, 2, 2) + "[yolo]\nmask=0\nclasses=3\nnum=1\nanchors=12,16\nnew_coords=1\n", warn=quiet
    )
    out = np.zeros((8, 2, 2))
    out[:, 1, 0] = [0.75, 0.5, 0.5, 0.25, 0.6, 1.0, 0.5, 0.0]
    rows = decode(graph[0], out, (32, 40))
    np.testing.assert_allclose(
        rows[2], [0.75 / 2, 1.5 / 2, 0.25 * 4 * 12 / 40, 0.0625 * 4 * 16 / 32, 0.6, 0.6, 0.3, 0.0], rtol=1e-12
    )


def test_decode_yolo_missing_anchors_default_to_half() -> None:
    """darknet fills anchors the cfg does not list with 0.5 (make_yolo_layer)."""
    graph = loads_cfg(net(12, 1, 1) + "[yolo]\nmask=1,2\nclasses=1\nnum=3\nanchors=10,20,30\n", warn=quiet)
    rows = decode(graph[0], np.zeros((12, 1, 1)), (50, 100))
    np.testing.assert_allclose(rows[:, 2:4], [[30 / 100, 0.5 / 50], [0.5 / 100, 0.5 / 50]], rtol=1e-12)


def test_decode_region_by_hand() -> None:
    """YOLOv2: bx = (col + σ(tx)) / w, bw = e^tw · anchor_w / w (anchors in grid cells)."""
    n, classes, h, w = 2, 2, 2, 3
    graph = loads_cfg(
        net(n * 7, h, w) + f"[region]\nclasses={classes}\nnum={n}\nanchors=1,2,3,4\nsoftmax=1\n", warn=quiet
    )
    flat = np.zeros(h * w * n * 7)
    box = (1 * w + 2) * n + 1  # row 1, column 2, anchor 1
    flat[box * 7 : box * 7 + 7] = [0.0, math.log(3), math.log(2), 0.0, 0.5, 0.25, 0.75]
    rows = decode(graph[0], flat, (64, 64))
    np.testing.assert_allclose(
        rows[box], [2.5 / 3, 1.75 / 2, 2 * 3 / 3, 4 / 2, 0.5, 0.125, 0.375], rtol=1e-12
    )


def test_decode_gaussian_yolo_by_hand() -> None:
    """Boxes from entries 0, 2, 4, 6, objectness 8; p = obj · class · (1 − mean(σx, σy, σw, σh))."""
    text = net(11, 1, 2) + "[Gaussian_yolo]\nmask=0\nclasses=2\nnum=1\nanchors=8,4\n"
    graph = loads_cfg(text, warn=quiet)
    out = np.zeros((11, 1, 2))
    out[:, 0, 1] = [0.5, 0.1, 0.25, 0.3, 0.0, 0.2, math.log(2), 0.4, 0.5, 0.8, 0.4]
    rows = decode(graph[0], out, (16, 32))
    uncertainty = 1 - (0.1 + 0.3 + 0.2 + 0.4) / 4
    expected = [1.5 / 2, 0.25, 8 / 32, 2 * 4 / 16, 0.5, 0.4 * uncertainty, 0.2 * uncertainty]
    np.testing.assert_allclose(rows[1], expected, rtol=1e-6)
    left_top = loads_cfg(text + "yolo_point=left_top\n", warn=quiet)
    shifted = decode(left_top[0], out, (16, 32))[1]
    np.testing.assert_allclose(
        shifted[:2], [expected[0] + expected[2] / 2, expected[1] + expected[3] / 2], rtol=1e-6
    )


def test_yolo_end_to_end_through_decode() -> None:
    """A conv → [yolo] net: our rows equal darknet's get_yolo_box applied to a numpy forward."""
    text = net(3, 8, 10) + "[convolutional]\nfilters=16\nsize=3\npad=1\nactivation=linear\n\n"
    text += f"[yolo]\nmask=0,5\nclasses=3\nnum=6\n{YOLO_ANCHORS}\nscale_x_y=1.05\n"
    graph, model = build(text)
    x = image(graph)
    (ours,) = run(model, x, [1])
    raw = yolo_output(conv_layer(graph[0], x[0].astype(np.float64)), 2, 3, 1.05, 0)
    anchors = [(10, 14), (344, 319)]
    expected = []
    out = raw.reshape(2, 8, 8, 10)
    for row in range(8):
        for col in range(10):
            for a, (aw, ah) in enumerate(anchors):
                t = out[a, :, row, col]
                # the network input is 10 wide and 8 high, like the grid
                box = [(col + t[0]) / 10, (row + t[1]) / 8, math.exp(t[2]) * aw / 10, math.exp(t[3]) * ah / 8]
                expected.append([*box, t[4], *(t[4] * t[5:])])
    close(decode(graph[1], ours, (8, 10)), np.array(expected))
