"""Per-unit pruning plans: a rate for each prunable unit instead of one global ratio.

A **unit** here is one coupled channel group of :func:`~cfgsurgeon.surgery.groups.analyse` (a conv's own
channels, or the channels a shortcut ties across several convs), named by its producer layers (``"12"``,
``"4+8+11"``): the name is readable, stable for a given cfg, and unique because groups are defined by their
producer sets. A plan maps unit keys to rates; :func:`prune_units` removes, in each named unit, the
``round(rate · channels)`` lowest-scoring channels (half up), with the same guards, width policy and
compensation as :func:`~cfgsurgeon.surgery.prune.prune`. Pure numpy on the IR; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..ir import Graph
from .cost import WidthCost, graph_cost
from .criteria import CRITERIA, unit_scores
from .groups import ChannelAnalysis, Group, analyse
from .prune import PruneResult, apply_keep, require_weights
from .select import RoundTo, check_round_to, keep_every_layer, round_widths

__all__ = ["Planner", "Unit", "graph_cost", "prunable_units", "prune_units", "units_of"]


@dataclass(frozen=True)
class Unit:
    """One prunable unit: a coupled channel group (``group``: its index in ``analyse(graph).groups``) made by
    the conv layers ``producers``, with ``channels`` units (channels per producer)."""

    key: str
    group: int
    producers: tuple[int, ...]
    channels: int


def unit_key(group: Group) -> str:
    return "+".join(str(p) for p in group.producers)


def units_of(analysis: ChannelAnalysis) -> list[Unit]:
    return [Unit(unit_key(g), g.id, tuple(g.producers), g.size) for g in analysis.groups]


def prunable_units(graph: Graph) -> list[Unit]:
    """The graph's prunable units, in group order."""
    return units_of(analyse(graph))


def removed_count(rate: float, channels: int) -> int:
    """Channels a rate removes from a unit: ``round(rate · channels)`` half up, at least one kept."""
    return min(int(rate * channels + 0.5), channels - 1)


class Planner:
    """One graph's units, channel scores and cost rule, to turn many candidate plans into kept channels and
    cost them without cutting tensors (what the plan optimisers and :func:`prune_units` share)."""

    def __init__(
        self,
        graph: Graph,
        criterion: str = "bn-gamma",
        round_to: RoundTo = 1,
        seed: int = 0,
        normalize: str = "auto",
    ):
        if criterion not in CRITERIA:
            raise UsageError(f"unknown criterion '{criterion}' (one of: {', '.join(CRITERIA)})")
        check_round_to(round_to)
        self.graph, self.criterion, self.round_to = graph, criterion, round_to
        self.analysis = analyse(graph)
        self.units = units_of(self.analysis)
        self.by_key = {unit.key: unit for unit in self.units}
        self.scores = unit_scores(self.analysis, criterion, seed, normalize)
        self.cost = WidthCost(self.analysis)
        groups = self.analysis.groups
        self._weakest_first = [g.unit_ids[np.lexsort((g.unit_ids, self.scores[g.unit_ids]))] for g in groups]

    def check(self, rates: Mapping[str, float]) -> None:
        for key, rate in rates.items():
            if key not in self.by_key:
                valid = ", ".join(unit.key for unit in self.units)
                raise UsageError(f"unknown unit '{key}' in the plan (units of this model: {valid})")
            if not 0 <= rate < 1:
                raise UsageError(f"the rate of unit '{key}' must be in [0, 1), found {rate}")

    def keep(self, rates: Mapping[str, float]) -> np.ndarray:
        """Which units stay under the plan ``rates`` (guards and width policy applied)."""
        self.check(rates)
        keep = np.ones(len(self.scores), dtype=bool)
        for key, rate in rates.items():
            unit = self.by_key[key]
            keep[self._weakest_first[unit.group][: removed_count(rate, unit.channels)]] = False
        keep_every_layer(keep, self.scores, self.analysis)
        round_widths(keep, self.scores, self.analysis, self.analysis.groups, self.round_to)
        return keep

    def cost_of(self, rates: Mapping[str, float]) -> tuple[int, float]:
        """Params and BFLOPs of the graph pruned by ``rates`` (exact, from the widths)."""
        return self.cost(self.keep(rates))


def prune_units(
    graph: Graph,
    rates: Mapping[str, float],
    criterion: str = "bn-gamma",
    round_to: RoundTo = 1,
    seed: int = 0,
    normalize: str = "auto",
) -> PruneResult:
    """Prune each unit named in ``rates`` (unit key → rate in [0, 1)) by its own rate; other units stay whole.
    ``round_to``: the width policy; ``criterion``/``normalize``: which channels of a unit go first."""
    require_weights(graph)
    planner = Planner(graph, criterion, round_to, seed, normalize)
    keep = planner.keep(rates)
    result = PruneResult(graph, graph, "plan", criterion, rates=dict(rates))
    return apply_keep(result, planner.analysis, keep)
