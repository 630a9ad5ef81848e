"""The lowered ops (:mod:`.lower`) in numpy, float32, one image (C×H×W) at a time: a small inference engine
for checks that must not import a framework (the verification of a pruned model runs on every ``prune``).

Only the ops of the usual detectors have a function here; :func:`unsupported` names the first op of a graph
that has none. :func:`run` wires the layers along the graph's edges and frees each output after its last
reader. Its hooks let a check run a variant of the graph without copying it: other tensors for a layer, a
per-channel value for a convolution's padding instead of zeros, layers that pass their first input on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import layers as L
from ..activations import ELEMENTWISE
from ..ir import Graph
from . import lower as lo

Array = np.ndarray


def conv2d(x: Array, op: lo.Conv2d, weight: Array, bias: Array | None, pad_value: Array | None) -> Array:
    """Cross-correlation as one matrix product per group over the input's taps (im2col); ``pad_value``: the
    value each input channel is padded with (zeros when None)."""
    ph, pw = op.padding
    if ph or pw:
        x = _pad(x, ph, pw, pad_value)
    channels, height, width = x.shape
    span = (op.size - 1) * op.dilation + 1
    out_h, out_w = (height - span) // op.stride[0] + 1, (width - span) // op.stride[1] + 1
    columns = np.empty((channels, op.size, op.size, out_h, out_w), dtype=np.float32)
    for dy in range(op.size):
        for dx in range(op.size):
            top, left = dy * op.dilation, dx * op.dilation
            rows = slice(top, top + (out_h - 1) * op.stride[0] + 1, op.stride[0])
            cols = slice(left, left + (out_w - 1) * op.stride[1] + 1, op.stride[1])
            columns[:, dy, dx] = x[:, rows, cols]
    per_group, filters = channels // op.groups, op.filters // op.groups
    columns = columns.reshape(op.groups, per_group * op.size * op.size, out_h * out_w)
    weight = np.asarray(weight, dtype=np.float32).reshape(op.groups, filters, -1)
    # einsum's own loops, not BLAS: the matrices are tiny, and OpenBLAS's threads spin on a busy machine
    # (yolov4's check at 25x25 under load: 9 s of wall time through matmul, 1.5 s through einsum)
    y = np.einsum("gfk,gkn->gfn", weight, columns).reshape(op.filters, out_h, out_w)
    return y + np.asarray(bias, dtype=np.float32)[:, None, None] if bias is not None else y


def _pad(x: Array, ph: int, pw: int, value: Array | None) -> Array:
    c, h, w = x.shape
    out = np.zeros((c, h + 2 * ph, w + 2 * pw), dtype=np.float32)
    if value is not None:
        out += np.asarray(value, dtype=np.float32)[:, None, None]
    out[:, ph : ph + h, pw : pw + w] = x
    return out


def batch_norm(
    x: Array, op: lo.BatchNorm, weight: Array, bias: Array, running_mean: Array, running_var: Array
) -> Array:
    """darknet's normalize_cpu, then scale and bias (inference)."""
    variance = np.asarray(running_var, np.float32)
    gain = np.asarray(weight, np.float32) / np.sqrt(variance + np.float32(op.eps))
    shift = np.asarray(bias, np.float32) - np.asarray(running_mean, np.float32) * gain
    return x * gain[:, None, None] + shift[:, None, None]


def activation(x: Array, name: str) -> Array:
    return ELEMENTWISE[name](x).astype(np.float32, copy=False)


def maxpool(x: Array, op: lo.MaxPool) -> Array:
    """darknet's max pooling: padded taps (−inf) never win; the output cut to ``out_hw``."""
    top, bottom, left, right = op.pads
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right)), constant_values=-np.inf)
    windows = sliding_window_view(padded, (op.size, op.size), axis=(1, 2))
    pooled = windows[:, :: op.stride[0], :: op.stride[1]].max(axis=(3, 4))
    return pooled[:, : op.out_hw[0], : op.out_hw[1]]


def upsample(x: Array, op: lo.Upsample) -> Array:
    y = x.repeat(op.stride, axis=1).repeat(op.stride, axis=2)
    return y * np.float32(op.scale) if op.scale != 1 else y


def route_slice(x: Array, op: lo.Slice) -> Array:
    size = x.shape[0] // op.groups
    return x[op.group_id * size : (op.group_id + 1) * size]


def concat(xs: list[Array], op: lo.Concat) -> Array:
    return np.concatenate(xs)


def shortcut(xs: list[Array], op: lo.WeightedSum, weights: Array | None = None) -> Array:
    """``[shortcut]`` without weights: the first input plus the others, each cut to (or added to the first
    channels of) the first input's channels."""
    out = xs[0].copy()
    for other in xs[1:]:
        n = min(out.shape[0], other.shape[0])
        out[:n] += other[:n]
    return out


def scale_channels(xs: list[Array], op: lo.Scale) -> Array:
    return xs[1] * (xs[0][:1] if op.first_channel else xs[0])


def global_avgpool(x: Array, op: lo.GlobalAvgPool) -> Array:
    return x.mean(axis=(1, 2), keepdims=True)


def yolo_head(x: Array, op: lo.HeadAct) -> Array:
    """``[yolo]``'s output as darknet leaves it (see :class:`.lower.HeadAct`)."""
    _, h, w = x.shape
    y = x.reshape(op.anchors, op.entries, h, w).copy()
    for start, stop in op.logistic:
        y[:, start:stop] = ELEMENTWISE["logistic"](y[:, start:stop])
    if op.scale_x_y != 1:
        for k in op.scaled:
            y[:, k] = y[:, k] * np.float32(op.scale_x_y) - np.float32(0.5 * (op.scale_x_y - 1))
    return y.reshape(x.shape)


def distribution_head(x: Array, op: lo.DistributionHeadAct) -> Array:
    """``[anchor_free]``, one level (see :class:`.lower.DistributionHeadAct`)."""
    _, h, w = x.shape
    logits = x[: 4 * op.reg_max].reshape(4, op.reg_max, h, w)
    bins = np.exp(logits - logits.max(axis=1, keepdims=True))
    bins /= bins.sum(axis=1, keepdims=True)
    sides = np.einsum("skhw,k->shw", bins, np.arange(op.reg_max, dtype=np.float32))
    return np.concatenate([sides, ELEMENTWISE["logistic"](x[4 * op.reg_max :])]).astype(np.float32)


def anchor_free_boxes(xs: list[Array], op: lo.AnchorFreeBoxes) -> Array:
    """``[anchor_free]``, levels joined (see :class:`.lower.AnchorFreeBoxes`)."""
    levels = []
    for x, stride in zip(xs, op.strides, strict=True):
        c, h, w = x.shape
        cy, cx = np.mgrid[0:h, 0:w].astype(np.float32) + np.float32(0.5)
        x1, y1, x2, y2 = cx - x[0], cy - x[1], cx + x[2], cy + x[3]
        box = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) * np.float32(stride)
        levels.append(np.concatenate([box, x[4:]]).reshape(c, h * w))
    return np.concatenate(levels, axis=1)[..., None]


FUNCTIONS: dict[type, Callable[..., Array]] = {
    lo.MaxPool: maxpool,
    lo.Upsample: upsample,
    lo.Slice: route_slice,
    lo.Concat: concat,
    lo.WeightedSum: shortcut,
    lo.Scale: scale_channels,
    lo.GlobalAvgPool: global_avgpool,
    lo.HeadAct: yolo_head,
    lo.DistributionHeadAct: distribution_head,
    lo.AnchorFreeBoxes: anchor_free_boxes,
}


def _supported(op: lo.Op) -> bool:
    if isinstance(op, lo.Upsample):
        return op.stride > 0
    if isinstance(op, lo.WeightedSum):
        return op.weights is None
    return type(op) in (lo.Conv2d, lo.BatchNorm, lo.Act) or type(op) in FUNCTIONS


def unsupported(graph: Graph) -> str | None:
    """The first layer whose ops this engine cannot run, as ``layer N [type] (op)``; None if it runs all."""
    for layer in graph.layers:
        for op in lo.lower(layer).ops:
            if not _supported(op):
                return f"layer {layer.index} [{layer.header}] ({type(op).__name__})"
    return None


Tensors = dict[str, Array]  # a layer's tensors by .weights name


@dataclass
class Hooks:
    """How a check varies the graph it runs: ``tensors(layer)`` replaces the layer's ``.weights`` tensors;
    ``pad_value(layer)`` gives a convolution's padding value per input channel (None: zeros); the layers in
    ``bypass`` pass their first input on; ``seen(index, output)`` sees every layer's output."""

    tensors: Callable[[L.Layer], Tensors | None] = lambda layer: layer.weights
    pad_value: Callable[[L.Layer], Array | None] = lambda layer: None
    bypass: Iterable[int] = field(default_factory=set)
    seen: Callable[[int, Array], None] = lambda index, output: None


def run(graph: Graph, x: Array, outputs: list[int], hooks: Hooks | None = None) -> list[Array]:
    """The outputs of the layers ``outputs`` for the input ``x`` (C×H×W float32)."""
    hooks = hooks or Hooks()
    bypass = set(hooks.bypass)
    sources = [[_index(graph, node) for node in layer.inputs] for layer in graph.layers]
    last_use = {j: i for i, srcs in enumerate(sources) for j in srcs} | {j: math.inf for j in outputs}
    lowered = [lo.lower(layer) for layer in graph.layers]
    values: dict[int, Array] = {-1: np.asarray(x, dtype=np.float32)}
    for layer, srcs in zip(graph.layers, sources, strict=True):
        ins = [values[j] for j in srcs]
        if layer.index in bypass:
            values[layer.index] = ins[0]
        else:
            owner = lowered[layer.index].shares
            tensors = hooks.tensors(graph.layers[layer.index if owner is None else owner]) or {}
            slots = _slots(lowered[layer.index if owner is None else owner], tensors)
            values[layer.index] = _layer(lowered[layer.index], ins, slots, layer, hooks)
        hooks.seen(layer.index, values[layer.index])
        for j in set(srcs):
            if last_use.get(j) == layer.index:
                del values[j]
    return [values[i] for i in outputs]


def _index(graph: Graph, node: Any) -> int:
    return -1 if node is graph.net else node.index


def _layer(lowered: lo.Lowered, ins: list[Array], slots: Slots, layer: L.Layer, hooks: Hooks) -> Array:
    join = lowered.join
    mapped = len(lowered.ops) if join is None else join
    values: list[Array] = ins
    for op in lowered.ops[:mapped]:
        values = [_op(op, value, slots, layer, hooks) for value in values]
    y: Any = values if join is not None else values[0]
    for op in lowered.ops[mapped:]:
        y = _op(op, y, slots, layer, hooks)
    return y


Slots = dict[str, dict[str, Array]]  # slot → {tensor: array}


def _slots(lowered: lo.Lowered, tensors: Tensors) -> Slots:
    """``slot → {tensor: array}`` from the lowering's binding of the ``.weights`` tensors."""
    slots: Slots = {}
    for name, path in lowered.params.items():
        slot, _, tensor = path.partition(".")
        slots.setdefault(slot, {})[tensor or "weight"] = tensors[name]
    return slots


def _op(op: lo.Op, x: Any, slots: Slots, layer: L.Layer, hooks: Hooks) -> Array:
    if isinstance(op, lo.Conv2d):
        conv = slots["conv"]
        return conv2d(x, op, conv["weight"], conv.get("bias"), hooks.pad_value(layer))
    if isinstance(op, lo.BatchNorm):
        return batch_norm(x, op, **slots["bn"])
    if isinstance(op, lo.Act):
        return activation(x, op.name)
    return FUNCTIONS[type(op)](x, op)
