"""Per-unit pruning plans: a rate for each prunable unit instead of one global ratio.

A **unit** here is one coupled channel group of :func:`~cfgsurgeon.surgery.groups.analyse` (a conv's own
channels, or the channels a shortcut ties across several convs), named by its producer layers (``"12"``,
``"4+8+11"``): the name is readable, stable for a given cfg, and unique because groups are defined by their
producer sets. A plan maps unit keys to rates; :func:`prune_units` removes, in each named unit, the
``round(rate · channels)`` lowest-scoring channels (half up), with the same guards, width policy and
compensation as :func:`~cfgsurgeon.surgery.prune.prune`. Pure numpy on the IR; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from ..ir import Graph
from .cost import WidthCost, graph_cost
from .criteria import CRITERIA, attach_importance, normalizer, unit_scores
from .groups import ChannelAnalysis, Group, analyse
from .prune import PruneResult, apply_keep, require_weights
from .select import RoundTo, Spaces, check_round_to, keep_every_layer, round_widths
from .target import measure_of, target_measure

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
        self.normalize, self.seed = normalizer(criterion, normalize), seed
        self.analysis = analyse(graph)
        self.units = units_of(self.analysis)
        self.by_key = {unit.key: unit for unit in self.units}
        self.scores = unit_scores(self.analysis, criterion, seed, normalize)
        self.cost = WidthCost(self.analysis)
        self._layer_spaces = Spaces(self.analysis.output_units)
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
        keep_every_layer(keep, self.scores, self.analysis, self._layer_spaces)
        round_widths(keep, self.scores, self.analysis, self.analysis.groups, self.round_to)
        return keep

    def cost_of(self, rates: Mapping[str, float]) -> tuple[int, float]:
        """Params and BFLOPs of the graph pruned by ``rates`` (exact, from the widths)."""
        return self.cost(self.keep(rates))

    def removed_channels(self, rates: Mapping[str, float]) -> dict[int, list[int]]:
        """Producer layer → the output channels the plan ``rates`` removes from it (ascending): what
        prune-aware training fades before :func:`prune_units` cuts them."""
        keep = self.keep(rates)
        removed: dict[int, set[int]] = {}
        for group in self.analysis.groups:
            units, producers, channels = group.member_channels
            gone = ~keep[units]
            for producer, channel in zip(producers[gone].tolist(), channels[gone].tolist(), strict=True):
                removed.setdefault(producer, set()).add(channel)
        return {layer: sorted(channels) for layer, channels in sorted(removed.items())}


def plan_channels(graph: Graph, plan: Mapping[str, Any]) -> dict[int, list[int]]:
    """Producer layer → the output channels that ``plan`` (``{"rates": …}`` as :func:`make_plan` writes it,
    with its criterion, width policy and normalisation) removes from ``graph``."""
    criterion, round_to = plan.get("criterion", "bn-gamma"), plan.get("round_to", 1)
    planner = Planner(graph, criterion, round_to, normalize=plan.get("normalize", "auto"))
    return planner.removed_channels(plan["rates"])


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


# -- budgeted plans ------------------------------------------------------------------------------------------

OPTIMIZERS = ("greedy", "knapsack", "paper")
PLAN_VERSION = 1
Measure = Callable[[Graph], float]  # a pruned graph → its latency in ms (the backend lives outside surgery)


@dataclass
class _Option:
    rate: float
    loss: float  # predicted mAP@0.5 lost by pruning the unit alone at this rate


def predicted_losses(sensitivity: Mapping[str, Any]) -> dict[str, list[_Option]]:
    """Each unit's measured rates with their predicted loss (baseline mAP@0.5 − the unit's, or the proxy
    where mAP is null), rate 0 (loss 0) first; a result with neither is left out."""
    baseline = sensitivity.get("baseline", {}).get("map50")
    found = {}
    for entry in sensitivity["units"]:
        options = [_Option(0.0, 0.0)]
        for row in sorted(entry["results"], key=lambda row: row["rate"]):
            if baseline is not None and row.get("map50") is not None:
                options.append(_Option(float(row["rate"]), baseline - row["map50"]))
            elif row.get("proxy") is not None:
                options.append(_Option(float(row["rate"]), float(row["proxy"])))
        found[entry["key"]] = options
    return found


def make_plan(
    sensitivity: Mapping[str, Any],
    graph: Graph,
    target_bflops: float | None = None,
    target_params: float | None = None,
    target_latency: float | None = None,
    optimizer: str = "greedy",
    measure: Measure | None = None,
    round_to: RoundTo = 1,
    normalize: str = "auto",
    seed: int = 0,
    tolerance: float = 0.01,
    map_weight: float = 1.0,
) -> dict[str, Any]:
    """A rate per unit that brings the model to the target (a share of the original's BFLOPs, params or,
    with ``measure``, latency) with the least predicted mAP loss; the plan as JSON-ready data
    (``{"version", "criterion", "round_to", "normalize", "optimizer", "target", "rates", "predicted",
    "units"}``). Costs are evaluated exactly from the widths of each candidate plan (not summed per unit).

    ``optimizer``: ``greedy`` (default) takes, step by step, the unit rate with the least predicted loss per
    cost removed, re-costing the plan exactly after each step; ``knapsack`` solves the multiple-choice
    knapsack over the rates per unit on each unit's cost alone, then raises the saving it asks for until the
    exact cost meets the target; ``paper`` is the iterative filter-pruning paper's selection: at one rate,
    the k units best for params and the k best for FLOPs (each score a saving less ``map_weight`` times the
    loss, both scaled to [0, 1]), k and the rate the smallest that reach the target. Every optimiser ends by
    *landing*: the plan moves back towards the target, by whole channels of one unit, until it is at most
    the target and within ``tolerance`` below it. Latency targets order the greedy FLOPs path and bisect on
    it with ``measure``.
    """
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer '{optimizer}' (one of: {', '.join(OPTIMIZERS)})")
    criterion = sensitivity.get("criterion", "bn-gamma")
    importance = sensitivity.get("importance") if criterion == "taylor" else None
    if importance is not None:  # the importance the analysis measured chooses the channels here too
        graph = attach_importance(graph, importance)
    planner = Planner(graph, criterion, round_to, seed, normalize)
    options = predicted_losses(sensitivity)
    planner.check({key: 0.0 for key in options})
    if target_latency is not None:
        if target_bflops is not None or target_params is not None or measure is None:
            raise UsageError("`target_latency` needs a latency backend and no other target")
        search = _Search(planner, options, "bflops", -1.0, tolerance)
        rates = _on_latency_path(search, graph, target_latency, measure)
        target = {"measure": "latency", "share": target_latency}
    else:
        name, share = target_measure(target_bflops, target_params)
        goal = share * measure_of(graph_cost(graph), name)
        search = _Search(planner, options, name, goal, tolerance)
        rates = search.land(_OPTIMISERS[optimizer](search, map_weight))
        target = {"measure": name, "share": share}
    plan = search.plan(rates, optimizer, target)
    return plan if importance is None else {**plan, "importance": importance}


class _Search:
    """Candidate plans of one graph against one cost measure and goal, costed exactly (and remembered)."""

    def __init__(
        self, planner: Planner, options: dict[str, list[_Option]], measure: str, goal: float, tolerance: float
    ):
        self.planner, self.options, self.measure = planner, options, measure
        self.goal, self.tolerance = goal, tolerance
        self.neighbours = _neighbours(planner)

    def cost(self, rates: Mapping[str, float]) -> float:
        return measure_of(self.planner.cost.quick(self.planner.keep(rates)), self.measure)

    def loss(self, key: str, rate: float) -> float:
        """Predicted loss of a unit at any rate: linear between the measured ones."""
        options = self.options[key]
        return float(np.interp(rate, [o.rate for o in options], [o.loss for o in options]))

    def unreachable(self) -> UsageError:
        most = {key: options[-1].rate for key, options in self.options.items()}
        share = self.cost(most) / measure_of(graph_cost(self.planner.graph), self.measure)
        return UsageError(
            f"the target is out of reach: every unit at its largest measured rate leaves {share:.1%} of the "
            f"{self.measure} (measure larger rates)"
        )

    def land(self, rates: dict[str, float]) -> dict[str, float]:
        """Move back towards the goal from below: the unit whose rate costs the most predicted loss per
        cost removed gives back whole channels (bisection on its count) while the plan stays at most the
        goal; if that is still more than the tolerance below it, the next unit follows (each unit once)."""
        rates, tried = dict(rates), set()
        while self.cost(rates) < self.goal * (1 - self.tolerance):
            candidates = sorted(key for key in rates if key not in tried)
            if not candidates:
                break
            key = max(candidates, key=lambda k: self._loss_per_cost(rates, k))
            tried.add(key)
            channels = self.planner.by_key[key].channels
            low, high = -1, removed_count(rates[key], channels)  # removing ``high`` channels meets the goal
            while high - low > 1:
                middle = (low + high) // 2
                meets = self.cost({**rates, key: middle / channels}) <= self.goal
                low, high = (low, middle) if meets else (middle, high)
            rates[key] = high / channels
            if high == 0:
                del rates[key]
        return rates

    def _loss_per_cost(self, rates: dict[str, float], key: str) -> float:
        saved = self.cost({k: r for k, r in rates.items() if k != key}) - self.cost(rates)
        return self.loss(key, rates[key]) / saved if saved > 0 else np.inf

    def greedy_path(self) -> list[dict[str, float]]:
        """The greedy steps from the full model until the goal is met (or every option is taken): at each
        step the unit move with the least predicted loss per cost removed. A move only changes the cost
        deltas of units that share a layer with the moved one, so only those are re-costed."""
        level = dict.fromkeys(self.options, 0)
        rates: dict[str, float] = {}
        current = self.cost(rates)
        deltas: dict[tuple[str, int], tuple[float, float]] = {}
        stale = set(self.options)
        path = [dict(rates)]
        while current > self.goal:
            for key in sorted(stale):
                for j in range(level[key] + 1, len(self.options[key])):
                    option = self.options[key][j]
                    saved = current - self.cost({**rates, key: option.rate})
                    deltas[(key, j)] = (saved, option.loss - self.options[key][level[key]].loss)
            moves = [
                (loss / saved, -saved, key, j) for (key, j), (saved, loss) in deltas.items() if saved > 0
            ]
            if not moves:
                break
            _, _, key, j = min(moves)
            level[key] = j
            rates[key] = self.options[key][j].rate
            current = self.cost(rates)
            path.append(dict(rates))
            stale = self.neighbours[key] & set(self.options)
            deltas = {move: delta for move, delta in deltas.items() if move[0] not in stale}
        return path

    def plan(self, rates: dict[str, float], optimizer: str, target: dict[str, Any]) -> dict[str, Any]:
        planner = self.planner
        keep = planner.keep(rates)
        params, bflops = planner.cost(keep)
        full_params, full_bflops = graph_cost(planner.graph)
        units = []
        for unit in planner.units:
            rate = rates.get(unit.key, 0.0)
            kept = int(keep[planner.analysis.groups[unit.group].unit_ids].sum())
            loss = self.loss(unit.key, rate) if unit.key in self.options else 0.0
            units.append(
                {"key": unit.key, "rate": rate, "channels": unit.channels, "kept": kept, "loss": loss}
            )
        return {
            "version": PLAN_VERSION,
            "criterion": planner.criterion,
            "round_to": planner.round_to,
            "normalize": planner.normalize,
            "optimizer": optimizer,
            "target": target,
            "rates": {key: rates[key] for key in sorted(rates, key=self._order)},
            "predicted": {
                "map50_loss": sum(u["loss"] for u in units),
                "params": params,
                "bflops": bflops,
                "params_share": params / full_params,
                "bflops_share": bflops / full_bflops,
            },
            "units": units,
        }

    def _order(self, key: str) -> int:
        return self.planner.by_key[key].group


def _neighbours(planner: Planner) -> dict[str, set[str]]:
    """For each unit, the units that share a layer (as input or output channels) with it."""
    analysis = planner.analysis
    key_of = {unit.group: unit.key for unit in planner.units}
    found: dict[str, set[str]] = {unit.key: {unit.key} for unit in planner.units}
    for index, out in enumerate(analysis.output_units):
        spaces = [out, *analysis.input_units[index]]
        groups = np.unique(analysis.unit_group[np.concatenate(spaces)])
        keys = {key_of[g] for g in groups.tolist() if g >= 0}
        for key in keys:
            found[key] |= keys
    return found


def _greedy(search: _Search, map_weight: float) -> dict[str, float]:
    path = search.greedy_path()
    if search.cost(path[-1]) > search.goal:
        raise search.unreachable()
    return path[-1]


def _knapsack(search: _Search, map_weight: float, bins: int = 4000) -> dict[str, float]:
    """Multiple-choice knapsack: at most one rate per unit, least total loss with the savings (each unit's
    alone, exact) at least the required one, by dynamic programming over savings in ``bins`` steps. Savings
    do not add up exactly (a conv pruned on both sides saves less than the two alone), so the required
    saving is raised by the shortfall of the exact cost until the plan meets the goal."""
    full = search.cost({})
    items = []
    for key, options in search.options.items():
        choices = [(full - search.cost({key: o.rate}), o.loss, o.rate) for o in options[1:]]
        items.append((key, [c for c in choices if c[0] > 0]))
    need, step = full - search.goal, full / bins
    while True:
        rates = _knapsack_solve(items, need, step)
        if rates is None:
            raise search.unreachable()
        shortfall = search.cost(rates) - search.goal
        if shortfall <= 0:
            return rates
        need += max(shortfall, step)  # at least one step: a smaller raise may not change the solution


def _knapsack_solve(
    items: list[tuple[str, list[tuple[float, float, float]]]], need: float, step: float
) -> dict[str, float] | None:
    size = int(np.ceil(need / step))
    best = np.full(size + 1, np.inf)  # best[s]: least loss saving at least s steps
    best[0] = 0.0
    choice = []
    for _, choices in items:
        new, picked = best.copy(), np.full(size + 1, -1)
        for c, (saved, loss, _) in enumerate(choices):
            steps = int(saved // step)
            candidate = best[np.maximum(0, np.arange(size + 1) - steps)] + loss
            better = candidate < new
            new[better], picked[better] = candidate[better], c
        choice.append(picked)
        best = new
    if not np.isfinite(best[size]):
        return None
    rates, s = {}, size
    for (key, choices), picked in zip(reversed(items), reversed(choice), strict=True):
        c = int(picked[s])
        if c >= 0:
            saved, _, rate = choices[c]
            rates[key] = rate
            s = max(0, s - int(saved // step))
    return rates


def _paper(search: _Search, map_weight: float) -> dict[str, float]:
    """The iterative filter-pruning paper's selection, at one rate for all chosen units: each unit scored
    twice, params saved and FLOPs saved (each alone, scaled to [0, 1] over the units) less ``map_weight``
    times its predicted loss (scaled likewise); the k best by each score are pruned together. Over the
    measured rates, the smallest k that meets the goal; of those plans, the least predicted loss."""
    planner = search.planner
    full = planner.cost_of({})
    found = []
    for rate in sorted({o.rate for options in search.options.values() for o in options[1:]}):
        keys = [key for key, options in search.options.items() if any(o.rate == rate for o in options)]
        alone = {key: planner.cost_of({key: rate}) for key in keys}
        loss = _scaled([search.loss(key, rate) for key in keys])
        by_params = _scaled([full[0] - alone[key][0] for key in keys]) - map_weight * loss
        by_flops = _scaled([full[1] - alone[key][1] for key in keys]) - map_weight * loss
        params_order, flops_order = (
            np.argsort(-by_params, kind="stable"),
            np.argsort(-by_flops, kind="stable"),
        )
        for k in range(1, len(keys) + 1):
            chosen = {keys[i] for i in (*params_order[:k], *flops_order[:k])}
            rates = {key: rate for key in chosen}
            if search.cost(rates) <= search.goal:
                found.append((sum(search.loss(key, rate) for key in chosen), rate, rates))
                break
    if not found:
        raise search.unreachable()
    return min(found, key=lambda item: item[:2])[2]


def _scaled(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    span = array.max() - array.min() if len(array) else 0.0
    return (array - array.min()) / span if span > 0 else np.zeros_like(array)


_OPTIMISERS: dict[str, Callable[[_Search, float], dict[str, float]]] = {
    "greedy": _greedy,
    "knapsack": _knapsack,
    "paper": _paper,
}


def _on_latency_path(search: _Search, graph: Graph, share: float, measure: Measure) -> dict[str, float]:
    """The first plan of the greedy FLOPs path whose pruned model measures at most ``share`` of the
    original's latency, by bisection on the path (latency falls with FLOPs, up to measurement noise)."""
    if not 0 < share <= 1:
        raise UsageError(
            f"`target_latency` is a share of the original model's latency: in (0, 1], found {share}"
        )
    path = search.greedy_path()
    goal = share * measure(graph)
    planner = search.planner

    def fast_enough(rates: dict[str, float]) -> bool:
        return (
            measure(
                prune_units(
                    graph, rates, planner.criterion, planner.round_to, planner.seed, planner.normalize
                ).pruned
            )
            <= goal
        )

    if not fast_enough(path[-1]):
        raise UsageError(
            f"the latency target is out of reach: the smallest plan measured is still above {goal:.3g} ms"
        )
    low, high = 0, len(path) - 1  # path[low] too slow (or the full model), path[high] fast enough
    if fast_enough(path[0]):
        return path[0]
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fast_enough(path[middle]) else (middle, high)
    return path[high]
