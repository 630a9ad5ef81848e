"""The pruning entry point: analysis → scores → selection → new graph, plus the figures for the report.
Pure numpy on the IR; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import layers as L
from ..errors import UsageError
from ..ir import Graph
from .channel import border_affected, masked_copy, prune_channels, pruned_constants
from .criteria import CRITERIA, unit_scores
from .groups import ChannelAnalysis, analyse
from .layer import prune_layers, removable_units
from .select import STRATEGIES, RoundTo, Selection, select

METHODS = (*STRATEGIES, "layer", "layer-channel")


@dataclass
class PruneResult:
    original: Graph
    pruned: Graph
    method: str
    criterion: str
    selection: Selection | None = None
    removed_shortcuts: list[int] = field(default_factory=list)
    kept_channels: dict[int, list[int]] = field(default_factory=dict)  # original conv index → kept indices
    border_layers: list[int] = field(
        default_factory=list
    )  # consumers where compensation is inexact at borders
    analysis: ChannelAnalysis | None = None
    keep_unit: np.ndarray | None = None
    rates: dict[str, float] | None = None  # per-unit plan (method "plan"): unit key → rate
    target: dict[str, Any] | None = None  # what prune_to_target aimed at and reached
    warnings: list[str] = field(default_factory=list)  # what was done differently from what was asked

    def masked(self) -> Graph:
        """The keep-size original with the removed channels switched off (γ = 0), for verification."""
        if self.analysis is None or self.keep_unit is None:
            raise UsageError("layer pruning has no keep-size equivalent")
        return masked_copy(self.analysis, self.keep_unit)


@dataclass
class Chosen:
    """A selection before any tensor is cut: what :func:`prune` removes, for previews and target searches."""

    result: PruneResult  # ``pruned`` is still the graph the channels are chosen in (after layer pruning)
    analysis: ChannelAnalysis
    scores: np.ndarray
    selection: Selection
    strategy: str  # the channel strategy (slim for layer-channel)
    layer_keep: float
    round_to: RoundTo

    def at(self, percent: float, force: bool = True) -> Selection:
        """The selection of the same request at another global ratio."""
        return select(
            self.analysis, self.scores, self.strategy, percent, None, self.layer_keep, self.round_to, force
        )


def prune(
    graph: Graph,
    method: str,
    percent: float | None = None,
    threshold: float | None = None,
    layer_keep: float = 0.01,
    round_to: RoundTo | None = None,
    shortcuts: int = 0,
    criterion: str = "bn-gamma",
    seed: int = 0,
    force: bool = False,
    normalize: str = "auto",
) -> PruneResult:
    """Prune by one of ``METHODS``. ``round_to``: the width policy (see select.py), 8 for ``regular`` and 1
    (none) for the others unless given; ``normalize``: per-layer score normalisation (see criteria.py)."""
    if method == "layer":
        return _layer_part(graph, method, shortcuts, criterion, seed)
    chosen = choose(
        graph, method, percent, threshold, layer_keep, round_to, shortcuts, criterion, seed, force, normalize
    )
    return apply_keep(chosen.result, chosen.analysis, chosen.selection.keep_unit)


def choose(
    graph: Graph,
    method: str,
    percent: float | None = None,
    threshold: float | None = None,
    layer_keep: float = 0.01,
    round_to: RoundTo | None = None,
    shortcuts: int = 0,
    criterion: str = "bn-gamma",
    seed: int = 0,
    force: bool = False,
    normalize: str = "auto",
) -> Chosen:
    """Everything :func:`prune` decides for a channel method (residual units removed first for
    ``layer-channel``), without cutting tensors."""
    if method == "layer":
        raise UsageError("--method layer removes residual units only: it has no channel selection")
    result = _layer_part(graph, method, shortcuts, criterion, seed)
    channel_method = "slim" if method == "layer-channel" else method
    if round_to is None:
        round_to = 8 if method == "regular" else 1
    analysis = analyse(result.pruned)
    scores = unit_scores(analysis, criterion, seed, normalize)
    selection = select(analysis, scores, channel_method, percent, threshold, layer_keep, round_to, force)
    result.selection = selection
    return Chosen(result, analysis, scores, selection, channel_method, layer_keep, round_to)


def _layer_part(graph: Graph, method: str, shortcuts: int, criterion: str, seed: int) -> PruneResult:
    """Check the request; remove residual units for ``layer`` and ``layer-channel`` (the latter does its
    channel part alone, and says so, when the model has none to remove)."""
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}' (one of: {', '.join(METHODS)})")
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion '{criterion}' (one of: {', '.join(CRITERIA)})")
    require_weights(graph)
    result = PruneResult(graph, graph, method, criterion)
    if method not in ("layer", "layer-channel"):
        return result
    if shortcuts <= 0:
        raise UsageError(f"--method {method} needs --shortcuts K (how many residual units to remove)")
    if method == "layer-channel" and removable_units(graph) == 0:
        result.warnings.append(
            "no residual unit can be removed (every stage keeps one): only the channel part (slim) was done"
        )
        return result
    result.pruned, result.removed_shortcuts = prune_layers(graph, shortcuts, criterion, seed)
    return result


def apply_keep(result: PruneResult, analysis: ChannelAnalysis, keep_unit: np.ndarray) -> PruneResult:
    """Cut the units where ``keep_unit`` is False from ``analysis.graph``, fold their constants into their
    consumers, and record the kept channels against ``result.original``'s numbering."""
    result.analysis, result.keep_unit = analysis, keep_unit
    original_index = {(layer.line, layer.kind): layer.index for layer in result.original.layers}
    result.kept_channels = {
        original_index[(layer.line, layer.kind)]: np.flatnonzero(
            keep_unit[analysis.output_units[layer.index]]
        ).tolist()
        for layer in analysis.graph.layers
        if isinstance(layer, L.Convolutional)
    }
    constants = pruned_constants(analysis, keep_unit | ~analysis.unit_prunable)  # needed twice
    result.border_layers = border_affected(analysis, keep_unit, constants)
    result.pruned = prune_channels(analysis, keep_unit, constants)
    return result


def require_weights(graph: Graph) -> None:
    missing = [layer for layer in graph.layers if layer.weight_layout() and layer.weights is None]
    if missing:
        raise UsageError(f"pruning needs weights: layer {missing[0].index} [{missing[0].header}] has none")


def report(
    result: PruneResult, compensation_error: float | None = None, verification_skipped: str | None = None
) -> dict[str, Any]:
    """Per-layer and total figures (JSON-ready); ``compensation_error``: what the verification measured,
    ``verification_skipped``: why it did not run."""
    before, after = result.original, result.pruned
    rows = []
    after_by_source = _match_layers(result)
    for layer in before.layers:
        twin = after_by_source.get(layer.index)
        row: dict[str, Any] = {
            "index": layer.index,
            "type": layer.kind,
            "removed": twin is None,
            "channels_before": layer.out_shape[0],
            "channels_after": twin.out_shape[0] if twin is not None else 0,
            "params_before": layer.params,
            "params_after": twin.params if twin is not None else 0,
            "bflops_before": layer.bflops(),
            "bflops_after": twin.bflops() if twin is not None else 0.0,
        }
        if (
            twin is not None
            and layer.index in result.kept_channels
            and twin.out_shape[0] < layer.out_shape[0]
        ):
            row["kept_indices"] = result.kept_channels[layer.index]
        rows.append(row)
    sel = result.selection
    return {
        "method": result.method,
        "criterion": result.criterion,
        "requested_ratio": sel.requested_ratio if sel else None,
        "threshold": sel.threshold if sel else None,
        "threshold_bound": sel.threshold_bound if sel else None,
        "ratio_bound": sel.ratio_bound if sel else None,
        "achieved_ratio": sel.achieved_ratio if sel else None,
        "candidate_channels": sel.candidate_channels if sel else None,
        "removed_shortcuts": result.removed_shortcuts,
        "rates": result.rates,
        "target": result.target,
        "warnings": result.warnings,
        "totals": {
            "params_before": before.params,
            "params_after": after.params,
            "bflops_before": before.bflops,
            "bflops_after": after.bflops,
            "layers_before": len(before),
            "layers_after": len(after),
        },
        "compensation": {
            "inexact_at_borders": result.border_layers,
            "measured_relative_error": compensation_error,
            "verification_skipped": verification_skipped,
        },
        "layers": rows,
    }


def _match_layers(result: PruneResult) -> dict[int, L.Layer]:
    """Original layer index → the pruned graph's copy of it (sections keep their cfg line through surgery)."""
    by_line = {(layer.line, layer.kind): layer for layer in result.pruned.layers}
    found = {layer.index: by_line.get((layer.line, layer.kind)) for layer in result.original.layers}
    return {index: twin for index, twin in found.items() if twin is not None}


def report_markdown(data: dict[str, Any], source: str) -> str:
    """A human-readable report: settings, totals, per-layer widths, and how exact the compensation is."""
    totals = data["totals"]
    lines = [
        f"# Pruning report: {source}",
        "",
        f"- method: `{data['method']}`, criterion: `{data['criterion']}`",
    ]
    if data["achieved_ratio"] is not None:
        requested = data["requested_ratio"]
        lines += [
            f"- requested ratio: {requested if requested is not None else 'by threshold'}; "
            f"threshold {data['threshold']:.6g}",
            f"- upper bound: ratio {data['ratio_bound']:.4f} (threshold {data['threshold_bound']:.6g}); "
            f"a larger ratio would empty a layer",
            f"- achieved ratio: {data['achieved_ratio']:.4f} "
            f"of {data['candidate_channels']} candidate channels",
        ]
    if data["removed_shortcuts"]:
        lines.append(f"- removed residual units (shortcut layers): {data['removed_shortcuts']}")
    if data.get("rates"):
        lines.append(
            f"- per-unit plan: {len(data['rates'])} units with their own rate (`rates` in report.json)"
        )
    lines += [f"- warning: {warning}" for warning in data.get("warnings", [])]
    p0, p1 = totals["params_before"], totals["params_after"]
    f0, f1 = totals["bflops_before"], totals["bflops_after"]
    lines += [
        f"- params: {p0:,} → {p1:,} ({p1 / p0:.1%}); BFLOPs: {f0:.3f} → {f1:.3f} ({f1 / f0:.1%}); "
        f"layers: {totals['layers_before']} → {totals['layers_after']}",
        "",
        "## Compensation",
        "",
    ]
    comp = data["compensation"]
    if comp["inexact_at_borders"]:
        lines.append(
            "Removed channels with a non-zero constant output feed zero-padded convolutions "
            f"(layers {comp['inexact_at_borders']}): their compensation is exact in the interior of the "
            "feature maps but not at the borders."
        )
    else:
        lines.append("Exact: every removed channel's constant is zero or reaches only unpadded consumers.")
    if comp["measured_relative_error"] is not None:
        lines.append(
            "Verified on a random input at the smallest size the cfg accepts: the pruned model's outputs "
            "differ from the original's with the removed channels switched off (γ = 0, their constants "
            "carried over the borders) and the removed residual units bypassed by at most "
            f"{comp['measured_relative_error']:.3g} of the largest output (float32 rounding). This checks "
            "the surgery, not the accuracy: evaluate both models on your data for that."
        )
    lines += ["", "## Layers", "", "| layer | type | channels | params | BFLOPs |", "|---:|---|---|---|---|"]
    for row in data["layers"]:
        if row["removed"]:
            lines.append(
                f"| {row['index']} | {row['type']} | removed | {row['params_before']:,} → 0 | "
                f"{row['bflops_before']:.4f} → 0 |"
            )
        elif row["channels_after"] != row["channels_before"] or row["params_after"] != row["params_before"]:
            lines.append(
                f"| {row['index']} | {row['type']} | {row['channels_before']} → {row['channels_after']} | "
                f"{row['params_before']:,} → {row['params_after']:,} | "
                f"{row['bflops_before']:.4f} → {row['bflops_after']:.4f} |"
            )
    lines.append("")
    lines.append("Unchanged layers are not listed; report.json has every layer and the kept channel indices.")
    return "\n".join(lines) + "\n"
