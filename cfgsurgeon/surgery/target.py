"""Pruning to a cost target, and the pre-flight of a prune (what it would remove and cost; nothing cut).

Targets are shares of the original model's cost (``target_bflops=0.5``: half its BFLOPs). For the global
methods the ratio is found by bisection: the kept widths, hence the cost, only shrink as the ratio grows (up
to the width policy's rounding), and each step is costed from the widths alone (cost.py), so only the final
model is cut. A result counts as on target when it is at most the target and within ``tolerance`` (1 %)
below it; a method whose steps are coarser than that (``layer``: whole residual units; large ``round_to``)
gets as close as it can from below and says so in the result's warnings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UsageError
from ..ir import Graph
from .cost import WidthCost, graph_cost
from .groups import ChannelAnalysis, is_prunable_producer
from .layer import prune_layers, removable_units
from .prune import PruneResult, apply_keep, choose, prune, require_weights
from .select import Selection

MEASURES = ("params", "bflops")
TOLERANCE = 0.01


def target_measure(target_bflops: float | None, target_params: float | None) -> tuple[str, float]:
    """Which cost a request aims at, and the share of the original it aims for."""
    given = {
        name: value
        for name, value in zip(MEASURES, (target_params, target_bflops), strict=True)
        if value is not None
    }
    if len(given) != 1:
        raise UsageError("give exactly one target: `target_bflops` or `target_params`")
    ((measure, share),) = given.items()
    if not 0 < share <= 1:
        raise UsageError(
            f"`target_{measure}` is a share of the original model's {measure}: in (0, 1], found {share}"
        )
    return measure, share


def measure_of(cost: tuple[int, float], measure: str) -> float:
    return float(cost[MEASURES.index(measure)])


def prune_to_target(
    graph: Graph,
    method: str,
    target_bflops: float | None = None,
    target_params: float | None = None,
    tolerance: float = TOLERANCE,
    **options: Any,
) -> PruneResult:
    """:func:`~cfgsurgeon.surgery.prune.prune` by ``method`` with the ratio (``layer``: the number of residual
    units) that brings the model's BFLOPs or params to the target share of the original's. ``options``:
    prune's other parameters (not ``percent``/``threshold``, which the target sets)."""
    measure, share = target_measure(target_bflops, target_params)
    if "percent" in options or "threshold" in options or (method == "layer" and "shortcuts" in options):
        raise UsageError(
            "a target sets the ratio itself: give no --percent, --threshold or (layer) --shortcuts"
        )
    require_weights(graph)
    goal = share * measure_of(graph_cost(graph), measure)
    if method == "layer":
        result = _layers_to_target(graph, measure, goal, options)
    else:
        result = _ratio_to_target(graph, method, measure, goal, options)
    reached = measure_of(graph_cost(result.pruned), measure)
    original = measure_of(graph_cost(graph), measure)
    result.target = {"measure": measure, "target": share, "reached": reached / original}
    if result.selection is not None:
        result.target["percent"] = result.selection.requested_ratio
    if reached < goal * (1 - tolerance):
        result.warnings.append(
            f"{measure} {reached / original:.2%} of the original, more than {tolerance:.0%} below the target "
            f"{share:.2%}: the next smaller step of this method stays above it"
        )
    return result


def _ratio_to_target(graph: Graph, method: str, measure: str, goal: float, options: dict) -> PruneResult:
    force = bool(options.pop("force", False))
    chosen = choose(graph, method, percent=0.0, **options)
    cost = WidthCost(chosen.analysis)
    top = chosen.selection.ratio_bound if not force else 1 - 1e-9

    def over(percent: float) -> bool:
        return measure_of(cost(chosen.at(percent).keep_unit), measure) > goal

    if over(top):
        reached = measure_of(cost(chosen.at(top).keep_unit), measure) / measure_of(graph_cost(graph), measure)
        raise UsageError(
            f"cannot reach the target with --method {method}: the largest ratio that keeps every layer "
            f"({top:.3f}) leaves {reached:.1%} of the {measure}"
            + ("" if force else " (--force allows larger ratios)")
        )
    low, high = 0.0, top
    if over(low):
        for _ in range(48):  # far below one channel's share of the candidates on any real model
            middle = (low + high) / 2
            low, high = (middle, high) if over(middle) else (low, middle)
    else:
        high = 0.0
    selection = chosen.at(high)
    chosen.result.selection = selection
    return apply_keep(chosen.result, chosen.analysis, selection.keep_unit)


def _layers_to_target(graph: Graph, measure: str, goal: float, options: dict) -> PruneResult:
    criterion, seed = options.get("criterion", "bn-gamma"), options.get("seed", 0)
    for count in range(1, removable_units(graph) + 1):
        pruned, _ = prune_layers(graph, count, criterion, seed)
        if measure_of(graph_cost(pruned), measure) <= goal:
            return prune(graph, "layer", shortcuts=count, criterion=criterion, seed=seed)
    raise UsageError(
        f"cannot reach the target with --method layer: removing every removable residual unit "
        f"({removable_units(graph)}) is not enough"
    )


# -- pre-flight ----------------------------------------------------------------------------------------------


def dry_run(graph: Graph, method: str, **options: Any) -> dict[str, Any]:
    """What :func:`~cfgsurgeon.surgery.prune.prune` would do with these options, nothing cut: per producer
    conv its kept/removed channels, how many of the removed lie below the empty-layer bound, the share of
    its γ mass removed, and its params/BFLOPs; predicted totals. A request that prune refuses (above the
    bound) is previewed as forced, with the refusal in ``refused``."""
    if method == "layer":
        raise UsageError("--dry-run previews channel selections; --method layer removes residual units only")
    refused = None
    try:
        chosen = choose(graph, method, **options)
    except UsageError as error:
        if options.get("force") or "would empty a layer" not in str(error):
            raise
        refused = str(error)
        chosen = choose(graph, method, **{**options, "force": True})
    found = preview(graph, chosen.analysis, chosen.scores, chosen.selection.keep_unit, chosen.selection)
    found.update(method=method, removed_shortcuts=chosen.result.removed_shortcuts, refused=refused)
    found["warnings"] = chosen.result.warnings
    return found


def preview(
    original: Graph,
    analysis: ChannelAnalysis,
    scores: np.ndarray,
    keep_unit: np.ndarray,
    selection: Selection | None = None,
) -> dict[str, Any]:
    """The figures of a selection (``keep_unit`` over ``analysis``), JSON-ready."""
    costs = WidthCost(analysis).per_layer(keep_unit)
    original_index = {(layer.line, layer.kind): layer.index for layer in original.layers}  # layer pruning
    bound = selection.threshold_bound if selection is not None else None
    rows = []
    for layer, (params, bflops) in zip(analysis.graph.layers, costs, strict=True):
        if not is_prunable_producer(layer):
            continue
        units = analysis.output_units[layer.index]
        removed = ~keep_unit[units]
        gamma = np.abs(np.asarray(layer.weights["scales"], dtype=np.float64)) if layer.weights else None
        below = None if bound is None else int((removed & (scores[units] < bound)).sum())
        gamma_removed = (
            None if gamma is None or not gamma.sum() else float(gamma[removed].sum() / gamma.sum())
        )
        rows.append(
            {
                "index": original_index[(layer.line, layer.kind)],
                "channels": len(units),
                "kept": int((~removed).sum()),
                "removed": int(removed.sum()),
                "removed_below_bound": below,
                "gamma_removed": gamma_removed,
                "params_before": layer.params,
                "params_after": params,
                "bflops_before": layer.bflops(),
                "bflops_after": bflops,
            }
        )
    requested = selection.requested_ratio if selection is not None else None
    ratio_bound = selection.ratio_bound if selection is not None else None
    return {
        "requested_ratio": requested,
        "ratio_bound": ratio_bound,
        "share_below_bound": None if not requested else min(1.0, ratio_bound / requested),
        "achieved_ratio": selection.achieved_ratio if selection is not None else None,
        "totals": {
            "params_before": original.params,
            "params_after": sum(p for p, _ in costs),
            "bflops_before": original.bflops,
            "bflops_after": sum(f for _, f in costs),
        },
        "layers": rows,
    }
