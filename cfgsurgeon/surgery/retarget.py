"""Retargeting a detector to another set of classes: darknet's custom-dataset recipe as a graph pass.

Every ``[yolo]``/``[region]`` head gets ``classes=N`` and the convolution feeding it gets the matching width
(``filters = anchors × (box entries + N)``); every other tensor is kept. A head convolution's output
channels are laid out per anchor as ``[box entries…, class scores…]``, so its rows are rebuilt anchor by
anchor: the box and objectness rows are kept, a new class that corresponds to an old one (``sources[k]``,
e.g. matched by name) takes that class's rows — so the retargeted model scores those classes exactly as
the original did — and a class with no counterpart is initialised afresh (small seeded random weights, the
old classes' mean bias).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import layers as L
from ..errors import UsageError
from ..ir import Graph


def head_entries(head: L.Layer) -> int:
    """Channels per anchor before the class scores (box coordinates and objectness)."""
    return head.box_entries if isinstance(head, L.Yolo) else head.coords + 1


def head_anchors(head: L.Layer) -> int:
    return len(head.mask) if isinstance(head, L.Yolo) else head.num


def match_classes(new_names: Sequence[str], old_names: Sequence[str]) -> list[int | None]:
    """For each new class, the index of the old class of the same name (case and spaces ignored), or None."""
    key = {name.strip().lower(): index for index, name in reversed(list(enumerate(old_names)))}
    return [key.get(name.strip().lower()) for name in new_names]


def retarget(graph: Graph, classes: int, sources: Sequence[int | None] | None = None, seed: int = 0) -> Graph:
    """A copy of ``graph`` (weights loaded or not) whose heads predict ``classes`` classes.

    ``sources[k]`` is the old class whose trained rows new class ``k`` inherits (None: initialised afresh);
    by default none is inherited. The input graph is not modified.
    """
    if classes < 1:
        raise UsageError(f"classes must be at least 1, not {classes}")
    sources = list(sources) if sources is not None else [None] * classes
    if len(sources) != classes:
        raise UsageError(f"{len(sources)} class sources for {classes} classes")
    out = graph.clone()
    heads = [layer for layer in out.layers if isinstance(layer, L.ANCHOR_HEADS)]
    if not heads:
        raise UsageError("the model has no [yolo] or [region] head to retarget", graph.source)
    rng = np.random.default_rng(seed)
    for head in heads:
        _retarget_head(out, head, classes, sources, rng)
    out.infer()
    return out


def _head_conv(graph: Graph, head: L.Layer) -> L.Convolutional:
    conv = head.inputs[0]
    if not isinstance(conv, L.Convolutional) or conv.batch_normalize or conv.effective_groups != 1:
        raise UsageError(
            f"layer {head.index} [{head.header}] must read a plain convolution "
            "(no batch_normalize, no groups) to be retargeted",
            head.where(),
        )
    readers = [layer for layer in graph.layers if conv in layer.inputs and layer is not head]
    if readers:
        raise UsageError(
            f"the convolution feeding layer {head.index} [{head.header}] is also read by layer "
            f"{readers[0].index}: its width cannot change",
            conv.where(),
        )
    return conv


def _retarget_head(
    graph: Graph, head: L.Layer, classes: int, sources: list[int | None], rng: np.random.Generator
) -> None:
    conv = _head_conv(graph, head)
    old_classes, entries, anchors = head.classes, head_entries(head), head_anchors(head)
    outside = [s for s in sources if s is not None and not 0 <= s < old_classes]
    if outside:
        raise UsageError(f"class source {outside[0]} is outside the model's classes 0..{old_classes - 1}")
    rows: list[int | None] = []
    for anchor in range(anchors):
        base = anchor * (entries + old_classes)
        rows += list(range(base, base + entries))
        rows += [None if s is None else base + entries + s for s in sources]
    if conv.weights is not None:
        conv.weights = _new_rows(conv.weights, rows, _class_rows(anchors, entries, old_classes), rng)
    head.options["classes"] = str(classes)
    conv.options["filters"] = str(len(rows))


def _class_rows(anchors: int, entries: int, classes: int) -> list[int]:
    per = entries + classes
    return [a * per + entries + c for a in range(anchors) for c in range(classes)]


def _new_rows(
    weights: dict[str, np.ndarray], rows: list[int | None], class_rows: list[int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The conv's tensors with output rows ``rows`` (None: a fresh class row)."""
    kernel, bias = np.asarray(weights["weights"]), np.asarray(weights["biases"])
    scale = float(kernel[class_rows].std()) if class_rows else 0.01
    fresh_bias = float(bias[class_rows].mean()) if class_rows else 0.0
    new_kernel = np.empty((len(rows), *kernel.shape[1:]), dtype=np.float32)
    new_bias = np.empty(len(rows), dtype=np.float32)
    for k, row in enumerate(rows):
        if row is None:
            new_kernel[k] = rng.normal(0.0, 0.1 * scale, kernel.shape[1:])
            new_bias[k] = fresh_bias
        else:
            new_kernel[k], new_bias[k] = kernel[row], bias[row]
    return {**weights, "weights": new_kernel, "biases": new_bias}
