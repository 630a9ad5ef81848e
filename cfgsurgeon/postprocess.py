"""Detection-head outputs → boxes, in numpy, shared by every runtime (torch, ONNX Runtime, OpenVINO, TF).

A head's raw output is what darknet stores for that layer (see ``emit/torch.py``: [yolo] already has its
logistic and ``scale_x_y`` applied; [region] is flattened channels-last with softmaxed classes). ``decode``
turns it into rows ``(x, y, w, h, objectness, p_class…)`` with the box centre and size relative to the network
input (0…1) and ``p_class = objectness · class score``, rows ordered by (row, column, anchor).
[Gaussian_yolo] also scales ``p_class`` by ``1 − mean(σx, σy, σw, σh)`` and shifts the box for ``yolo_point``,
as darknet does. ``[anchor_free]`` (YOLOv8) has no objectness: its output is already decoded (centre, size in
input pixels, class probabilities per cell), so ``p_class`` is the class probability itself and the objectness
column holds the best of them (a cell passes darknet's objectness filter when one of its classes would).
"""

from __future__ import annotations

import numpy as np

from . import layers as L

DEFAULT_ANCHOR = 0.5  # darknet's make_yolo_layer fills anchors the cfg does not give with .5


def anchor_table(layer: L.Yolo | L.Region) -> np.ndarray:
    """``(num, 2)`` anchor sizes, padded with darknet's default when the cfg lists fewer."""
    values = np.full(2 * layer.num, DEFAULT_ANCHOR, dtype=np.float64)
    given = np.asarray(layer.anchors[: 2 * layer.num], dtype=np.float64)
    values[: len(given)] = given
    return values.reshape(layer.num, 2)


def decode(layer: L.Layer, output: np.ndarray, net_hw: tuple[int, int]) -> np.ndarray:
    """Decode one image's head output (``C×H×W``, or the flat region buffer) into box rows."""
    if isinstance(layer, L.GaussianYolo):
        return _gaussian_adjust(layer, output, _decode_yolo(layer, output, net_hw, entries=(0, 2, 4, 6, 8)))
    if isinstance(layer, L.Yolo):
        return _decode_yolo(layer, output, net_hw, entries=(0, 1, 2, 3, 4))
    if isinstance(layer, L.Region):
        return _decode_region(layer, output)
    if isinstance(layer, L.AnchorFree):
        return _decode_anchor_free(layer, output, net_hw)
    raise TypeError(f"layer {layer.index} [{layer.header}] is not a detection head")


def _decode_yolo(
    layer: L.Yolo, output: np.ndarray, net_hw: tuple[int, int], entries: tuple[int, ...]
) -> np.ndarray:
    _, h, w = layer.out_shape
    n = len(layer.mask)
    per_anchor = layer.classes + layer.box_entries
    out = (
        np.asarray(output, dtype=np.float64).reshape(n, per_anchor, h, w).transpose(2, 3, 0, 1)
    )  # y, x, a, e
    ix, iy, iw, ih, iobj = entries
    anchors = anchor_table(layer)[np.asarray(layer.mask)]  # (n, 2)
    cols = np.arange(w, dtype=np.float64)[None, :, None]
    rows = np.arange(h, dtype=np.float64)[:, None, None]
    net_h, net_w = net_hw
    bx = (cols + out[..., ix]) / w
    by = (rows + out[..., iy]) / h
    if layer.new_coords:
        bw = out[..., iw] ** 2 * 4 * anchors[:, 0] / net_w
        bh = out[..., ih] ** 2 * 4 * anchors[:, 1] / net_h
    else:
        bw = np.exp(out[..., iw]) * anchors[:, 0] / net_w
        bh = np.exp(out[..., ih]) * anchors[:, 1] / net_h
    objectness = out[..., iobj]
    probs = objectness[..., None] * out[..., iobj + 1 :]
    rows_out = np.concatenate([np.stack([bx, by, bw, bh, objectness], axis=-1), probs], axis=-1)
    return rows_out.reshape(h * w * n, 5 + layer.classes)


def _gaussian_adjust(layer: L.GaussianYolo, output: np.ndarray, rows: np.ndarray) -> np.ndarray:
    _, h, w = layer.out_shape
    n = len(layer.mask)
    out = np.asarray(output, dtype=np.float32).reshape(n, layer.classes + 9, h, w).transpose(2, 3, 0, 1)
    sigmas = out.reshape(h * w * n, layer.classes + 9)[:, [1, 3, 5, 7]]
    uc_mean = np.float32(((sigmas[:, 0] + sigmas[:, 1]) + sigmas[:, 2] + sigmas[:, 3]) / 4.0)
    rows = rows.copy()
    rows[:, 5:] *= (1.0 - uc_mean.astype(np.float64))[:, None]
    sign = {"left_top": 1, "right_bottom": -1}.get(layer.options.get("yolo_point", "center"), 0)
    rows[:, 0] += sign * rows[:, 2] / 2
    rows[:, 1] += sign * rows[:, 3] / 2
    return rows


def _decode_region(layer: L.Region, output: np.ndarray) -> np.ndarray:
    """YOLOv2: logistic x, y; ``exp(t)·anchor / grid`` sizes (anchors in grid cells)."""
    _, h, w = layer.in_shape
    n, coords = layer.num, layer.coords
    out = np.asarray(output, dtype=np.float64).reshape(h, w, n, coords + 1 + layer.classes)
    anchors = anchor_table(layer)
    cols = np.arange(w, dtype=np.float64)[None, :, None]
    rows = np.arange(h, dtype=np.float64)[:, None, None]
    bx = (cols + _logistic(out[..., 0])) / w
    by = (rows + _logistic(out[..., 1])) / h
    bw = np.exp(out[..., 2]) * anchors[:, 0] / w
    bh = np.exp(out[..., 3]) * anchors[:, 1] / h
    objectness = out[..., coords]
    probs = objectness[..., None] * out[..., coords + 1 :]
    rows_out = np.concatenate([np.stack([bx, by, bw, bh, objectness], axis=-1), probs], axis=-1)
    return rows_out.reshape(h * w * n, 5 + layer.classes)


def _decode_anchor_free(layer: L.AnchorFree, output: np.ndarray, net_hw: tuple[int, int]) -> np.ndarray:
    """Rows ``(x, y, w, h, best class probability, p_class…)`` from the head's ``(4 + classes, cells, 1)``."""
    out = np.asarray(output, dtype=np.float64).reshape(4 + layer.classes, -1).T
    net_h, net_w = net_hw
    boxes = out[:, :4] / np.array([net_w, net_h, net_w, net_h], dtype=np.float64)
    probs = out[:, 4:]
    return np.concatenate([boxes, probs.max(axis=1, keepdims=True), probs], axis=1)


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
