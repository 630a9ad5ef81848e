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
from .layer import prune_layers
from .select import STRATEGIES, Selection, select

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

    def masked(self) -> Graph:
        """The keep-size original with the removed channels switched off (γ = 0), for verification."""
        if self.analysis is None or self.keep_unit is None:
            raise UsageError("layer pruning has no keep-size equivalent")
        return masked_copy(self.analysis, self.keep_unit)


def prune(
    graph: Graph,
    method: str,
    percent: float | None = None,
    threshold: float | None = None,
    layer_keep: float = 0.01,
    round_to: int = 8,
    shortcuts: int = 0,
    criterion: str = "bn-gamma",
    seed: int = 0,
    force: bool = False,
) -> PruneResult:
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}' (one of: {', '.join(METHODS)})")
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion '{criterion}' (one of: {', '.join(CRITERIA)})")
    _require_weights(graph)
    result = PruneResult(graph, graph, method, criterion)
    if method in ("layer", "layer-channel"):
        if shortcuts <= 0:
            raise UsageError(f"--method {method} needs --shortcuts K (how many residual units to remove)")
        result.pruned, result.removed_shortcuts = prune_layers(graph, shortcuts, criterion, seed)
    if method == "layer":
        return result
    channel_method = "slim" if method == "layer-channel" else method
    analysis = analyse(result.pruned)
    scores = unit_scores(analysis, criterion, seed)
    selection = select(analysis, scores, channel_method, percent, threshold, layer_keep, round_to, force)
    result.selection = selection
    result.analysis, result.keep_unit = analysis, selection.keep_unit
    original_index = {(layer.line, layer.kind): layer.index for layer in graph.layers}  # across layer pruning
    result.kept_channels = {
        original_index[(layer.line, layer.kind)]: np.flatnonzero(
            selection.keep_unit[analysis.output_units[layer.index]]
        ).tolist()
        for layer in analysis.graph.layers
        if isinstance(layer, L.Convolutional)
    }
    constants = pruned_constants(analysis, selection.keep_unit | ~analysis.unit_prunable)  # needed twice
    result.border_layers = border_affected(analysis, selection.keep_unit, constants)
    result.pruned = prune_channels(analysis, selection.keep_unit, constants)
    return result


def _require_weights(graph: Graph) -> None:
    missing = [layer for layer in graph.layers if layer.weight_layout() and layer.weights is None]
    if missing:
        raise UsageError(f"pruning needs weights: layer {missing[0].index} [{missing[0].header}] has none")


def report(result: PruneResult, compensation_error: float | None = None) -> dict[str, Any]:
    """Per-layer and total figures (JSON-ready)."""
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
            f"Measured on a random input: max relative error {comp['measured_relative_error']:.3g} "
            "against the keep-size model with the removed channels switched off (γ = 0)."
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
