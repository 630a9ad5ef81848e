"""Which layers magnitude pruning touches: pure IR rules, no TensorFlow.

Prunable: every [convolutional] and [connected] layer that owns its weights. Protected by default (kept
dense, byte for byte): the first and the last of them, and every one feeding a detection head (through
parameter-free single-input layers), because those carry the input statistics and the box/class
regressions that magnitude pruning hurts most. ``--prune-whole-model`` drops the default protection;
``--skip-layers`` protects more. Block sparsity also leaves out the layers whose ``(in × out)`` matrices
cannot be cut into whole blocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .. import layers as L
from ..errors import UsageError
from ..ir import Graph

PRUNABLE = (L.Convolutional, L.Connected)
HEADS = (L.Yolo, L.Region, L.Detection)  # [Gaussian_yolo] is a Yolo


@dataclass(frozen=True)
class Plan:
    """Layer indices to prune, and why each other prunable layer stays dense."""

    pruned: list[int]
    dense: dict[int, str] = field(default_factory=dict)


def parse_block(text: str) -> tuple[int, int]:
    """``"4,4"`` → ``(4, 4)``: block height (input channels) × width (output channels)."""
    try:
        rows, cols = (int(part) for part in text.split(","))
    except ValueError:
        message = f"`block` takes two integers 'rows,cols' (e.g. 1,16 or 4,4), got '{text}'"
        raise UsageError(message) from None
    if rows < 1 or cols < 1:
        raise UsageError(f"`block` must be positive, got '{text}'")
    return rows, cols


def parse_indices(text: str) -> list[int]:
    """``"0,3,5"`` → ``[0, 3, 5]`` (spaces allowed)."""
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UsageError(f"`skip` takes layer indices separated by commas, got '{text}'") from None


def prunable(graph: Graph) -> list[L.Layer]:
    """Convolutional / connected layers holding their own weights (a ``share_index`` layer borrows)."""
    return [
        layer
        for layer in graph.layers
        if isinstance(layer, PRUNABLE) and layer.weight_layout() and not getattr(layer, "xnor", 0)
    ]


def _feeding(graph: Graph, head: L.Layer) -> L.Layer | None:
    """The weighted layer whose output reaches ``head`` through parameter-free single-input layers."""
    node = head.inputs[0] if head.inputs else None
    while isinstance(node, L.Layer) and not isinstance(node, PRUNABLE) and len(node.inputs) == 1:
        if node.weight_layout():
            return None
        node = node.inputs[0]
    return node if isinstance(node, PRUNABLE) else None


def protected(graph: Graph) -> dict[int, str]:
    """The default protection: index → reason."""
    candidates = prunable(graph)
    if not candidates:
        return {}
    reasons = {candidates[0].index: "first convolution", candidates[-1].index: "last convolution"}
    for head in graph.layers:
        if isinstance(head, HEADS):
            feeder = _feeding(graph, head)
            if feeder is not None:
                reasons.setdefault(feeder.index, f"feeds [{head.header}] {head.index}")
    return reasons


def block_misfit(layer: L.Layer, block: tuple[int, int]) -> str | None:
    """Why ``layer`` cannot be cut into whole ``block``s (None when it can)."""
    if block == (1, 1):
        return None
    if isinstance(layer, L.Convolutional):
        groups = layer.effective_groups
        if groups > 1 and groups == layer.in_shape[0]:
            return "depthwise: no (in × out) matrix to cut into blocks"
        rows, cols = layer.in_shape[0] // groups, layer.filters
    else:
        rows, cols = int(np.prod(layer.in_shape)), layer.out_shape[0]
    if rows % block[0] or cols % block[1]:
        return f"(in {rows} × out {cols}) is not a whole number of {block[0]}×{block[1]} blocks"
    return None


def plan(
    graph: Graph, skip: Iterable[int] = (), whole_model: bool = False, block: tuple[int, int] = (1, 1)
) -> Plan:
    """The layers to prune under these options."""
    candidates = {layer.index: layer for layer in prunable(graph)}
    skip = list(skip)
    unknown = [i for i in skip if i not in candidates]
    if unknown:
        raise UsageError(
            f"`skip` {unknown}: not convolutional/connected layers with their own weights "
            f"(those are {sorted(candidates)})"
        )
    dense = {} if whole_model else protected(graph)
    dense.update({i: "--skip-layers" for i in skip if i not in dense})
    for index, layer in candidates.items():
        misfit = block_misfit(layer, block)
        if index not in dense and misfit:
            dense[index] = misfit
    return Plan(pruned=[i for i in candidates if i not in dense], dense=dict(sorted(dense.items())))


def sparsity(weights: np.ndarray) -> float:
    """Share of exact zeros."""
    return float(np.count_nonzero(weights == 0) / weights.size) if weights.size else 0.0


def layer_sparsity(graph: Graph) -> dict[int, float]:
    """Kernel sparsity of every prunable layer (biases and BN tensors are never pruned)."""
    return {layer.index: sparsity(layer.weights["weights"]) for layer in prunable(graph) if layer.weights}
