"""What a selection costs, from the kept widths alone: params and BFLOPs of the pruned graph without cutting
a single tensor.

A layer's params and FLOPs depend only on its own input and output widths (spatial sizes never change), so
the pruned graph's totals are a sum over layers of each layer's own rule (``Layer.params``, ``bflops()``)
evaluated at its new widths. Costs are not additive over units (a conv's FLOPs are its input width times its
output width), so a plan is always costed whole; each (layer, widths) is evaluated once and remembered, which
makes costing many candidate plans of one graph cheap.
"""

from __future__ import annotations

import copy

import numpy as np

from .. import layers as L
from ..ir import Graph
from .groups import ChannelAnalysis
from .select import Spaces


class _Shape:
    """An input stand-in that has only an output shape (all a layer's shape and cost rules read)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.out_shape = shape


class WidthCost:
    """``cost(keep_unit) -> (params, bflops)`` of ``analysis.graph`` with the units where ``keep_unit`` is
    False removed, as :func:`~cfgsurgeon.surgery.channel.prune_channels` would build it."""

    def __init__(self, analysis: ChannelAnalysis):
        self.analysis = analysis
        self._layers = analysis.graph.layers
        inputs = [len(units) for units in analysis.input_units]
        self._spaces = Spaces(
            list(analysis.output_units) + [u for units in analysis.input_units for u in units]
        )
        self._input_start = np.concatenate([[0], np.cumsum(inputs)]) + len(self._layers)
        # which layer each space belongs to: its output spaces, then its inputs
        self._space_layer = np.concatenate(
            [np.arange(len(self._layers)), np.repeat(np.arange(len(inputs)), inputs)]
        )
        self._full_widths = self._spaces.widths(np.ones(len(analysis.unit_prunable), dtype=bool))
        self._cache: dict[tuple[int, int, tuple[int, ...]], tuple[int, float]] = {}
        self._full = [(layer.params, layer.bflops()) for layer in self._layers]
        self._full_total = (sum(p for p, _ in self._full), sum(f for _, f in self._full))

    def __call__(self, keep_unit: np.ndarray) -> tuple[int, float]:
        """Exactly what the pruned graph's ``params`` and ``bflops`` give (the same sum, in layer order)."""
        costs = self.per_layer(keep_unit)
        return sum(p for p, _ in costs), sum(f for _, f in costs)

    def quick(self, keep_unit: np.ndarray) -> tuple[int, float]:
        """The same up to float rounding of the BFLOPs sum: only the layers whose widths changed are
        evaluated (for searches that cost many plans)."""
        widths = self._widths(keep_unit)
        changed = np.unique(self._space_layer[widths != self._full_widths]).tolist()
        params, bflops = self._full_total
        for index in changed:
            p, f = self._layer(index, widths)
            params += p - self._full[index][0]
            bflops += f - self._full[index][1]
        return params, bflops

    def per_layer(self, keep_unit: np.ndarray) -> list[tuple[int, float]]:
        """Params and BFLOPs of each layer of the pruned graph (in ``analysis.graph``'s order)."""
        widths = self._widths(keep_unit)
        return [self._layer(index, widths) for index in range(len(self._layers))]

    def _widths(self, keep_unit: np.ndarray) -> np.ndarray:
        return self._spaces.widths(np.asarray(keep_unit, dtype=bool) | ~self.analysis.unit_prunable)

    def _layer(self, index: int, widths: np.ndarray) -> tuple[int, float]:
        ins = tuple(widths[self._input_start[index] : self._input_start[index + 1]].tolist())
        key = (index, int(widths[index]), ins)
        if key not in self._cache:
            self._cache[key] = _layer_cost(self._layers[index], key[1], ins)
        return self._cache[key]


def _layer_cost(layer: L.Layer, out: int, ins: tuple[int, ...]) -> tuple[int, float]:
    """The layer's params and BFLOPs with ``ins`` input channels and ``out`` output channels, by its own
    rules on a copy (widths set as channel.py's slicing sets them)."""
    probe = copy.copy(layer)
    probe.options = dict(layer.options)
    probe.inputs = [_Shape((c, *node.out_shape[1:])) for c, node in zip(ins, layer.inputs, strict=True)]
    if isinstance(layer, L.Convolutional) and layer.shares is None:
        groups = layer.effective_groups
        if groups > 1 and layer.in_shape[0] // groups == 1:  # depthwise: one group per kept input
            probe.groups = ins[0]
        probe.filters = out
    probe.out_shape = probe.infer()
    return probe.params, probe.bflops()


def graph_cost(graph: Graph) -> tuple[int, float]:
    """Params (floats of a full .weights after its header) and darknet's BFLOPs."""
    return graph.params, graph.bflops
