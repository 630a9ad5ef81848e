"""Layer pruning: remove whole residual units ``x + f(x)``.

A unit is a ``[shortcut]`` with one ``from`` (x), unweighted and linear, whose other operand is a chain of
single-input layers starting at x and used by nothing else; x and the sum have the same shape, so dropping the
chain and the sum leaves a valid graph whose readers of the sum now read x. Consecutive units (each one's x
is the previous one's sum) form a stage; every stage keeps at least one unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import layers as L
from ..errors import UsageError
from ..ir import Graph, Node
from .criteria import CRITERIA


@dataclass
class ResidualUnit:
    shortcut: L.Shortcut
    body: list[L.Layer]  # the chain f, in order
    source: Node  # x
    stage: int = 0

    @property
    def layers(self) -> list[L.Layer]:
        return [*self.body, self.shortcut]


def residual_units(graph: Graph) -> list[ResidualUnit]:
    readers = graph.consumers()
    lenders = {
        id(layer.shares) for layer in graph.layers if isinstance(layer, L.Convolutional) and layer.shares
    }
    units: list[ResidualUnit] = []
    for layer in graph.layers:
        unit = _as_unit(layer, readers)
        if unit is not None and not any(id(node) in lenders for node in unit.body):  # weights lent elsewhere
            if units:
                unit.stage = units[-1].stage + (unit.source is not units[-1].shortcut)
            units.append(unit)
    return units


def _as_unit(layer: L.Layer, readers: dict[int, list[L.Layer]]) -> ResidualUnit | None:
    if not isinstance(layer, L.Shortcut) or len(layer.inputs) != 2:
        return None
    if layer.weight_layout() or layer.activation != "linear":
        return None
    source = layer.inputs[1]
    if source.out_shape != layer.out_shape:
        return None
    body: list[L.Layer] = []
    node = layer.inputs[0]
    consumer: L.Layer = layer
    while node is not source:
        if not isinstance(node, L.Layer) or len(node.inputs) != 1 or readers.get(id(node)) != [consumer]:
            return None
        if isinstance(node, L.Convolutional) and node.shares is not None:
            return None
        body.insert(0, node)
        consumer, node = node, node.inputs[0]
    return ResidualUnit(layer, body, source) if body else None


def unit_score(unit: ResidualUnit, criterion: str, rng: np.random.Generator) -> float:
    """Mean channel score of the unit's last batch-normalised convolution (what f(x) adds to x)."""
    convs = [layer for layer in unit.body if isinstance(layer, L.Convolutional) and layer.batch_normalize]
    if not convs:
        return float("inf")
    return float(np.mean(CRITERIA[criterion](convs[-1], rng)))


def prune_layers(
    graph: Graph, count: int, criterion: str = "bn-gamma", seed: int = 0
) -> tuple[Graph, list[int]]:
    """Remove the ``count`` lowest-scoring residual units; returns the new graph and the removed shortcut
    indices (in the original numbering)."""
    units = residual_units(graph)
    rng = np.random.default_rng(seed)
    removable = removable_units(graph, units)
    if count > removable:
        raise UsageError(
            f"--shortcuts {count}: this model has {len(units)} residual units in "
            f"{len({u.stage for u in units})} stages, so at most {removable} can be removed"
        )
    scores = [unit_score(u, criterion, rng) for u in units]
    left = {stage: sum(u.stage == stage for u in units) for stage in {u.stage for u in units}}
    removed: list[ResidualUnit] = []
    for i in np.argsort(scores, kind="stable"):
        if len(removed) == count:
            break
        if left[units[i].stage] > 1:
            left[units[i].stage] -= 1
            removed.append(units[i])
    dropped = {id(layer) for unit in removed for layer in unit.layers}
    kept = [layer for layer in graph.layers if id(layer) not in dropped]
    return graph.clone(kept), sorted(unit.shortcut.index for unit in removed)


def removable_units(graph: Graph, units: list[ResidualUnit] | None = None) -> int:
    """How many residual units can go (every stage keeps one); ``units``: :func:`residual_units`, if known."""
    units = residual_units(graph) if units is None else units
    stages = {u.stage for u in units}
    return len(units) - len(stages)
