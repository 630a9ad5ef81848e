"""Per-layer summaries of a graph: darknet-style table rows and the JSON form of ``cfgsurgeon inspect``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .ir import Graph
from .layers import Convolutional, Layer, format_shape

NEAR_ZERO = 0.01  # |γ| below this counts as "near zero" (the usual sparsity-training threshold)


def gamma_stats(layer: Layer) -> dict[str, float] | None:
    """|γ| statistics of a layer with batch norm and loaded weights, else None."""
    if not layer.weights or "scales" not in layer.weights:
        return None
    gamma = np.abs(np.asarray(layer.weights["scales"], dtype=np.float64))
    return {
        "min": float(gamma.min()),
        "mean": float(gamma.mean()),
        "max": float(gamma.max()),
        "near_zero": float((gamma < NEAR_ZERO).mean()),
    }


def layer_summary(layer: Layer) -> dict[str, Any]:
    row: dict[str, Any] = {
        "index": layer.index,
        "type": layer.kind,
        "line": layer.line,
        "input": list(layer.in_shape) if layer.inputs else None,
        "output": list(layer.out_shape),
        "inputs": [node.index if isinstance(node, Layer) else -1 for node in layer.inputs],
        "bflops": layer.bflops(),
        "params": layer.params,
    }
    if isinstance(layer, Convolutional):
        sy, sx = layer.strides
        row.update(
            filters=layer.filters,
            size=layer.size,
            stride=[sx, sy],
            groups=layer.effective_groups,
            dilation=layer.effective_dilation,
            batch_normalize=bool(layer.batch_normalize),
            activation=layer.activation,
        )
    elif hasattr(layer, "activation"):
        row["activation"] = layer.activation
    stats = gamma_stats(layer)
    if stats:
        row["gamma"] = stats
    return row


def graph_summary(graph: Graph) -> dict[str, Any]:
    return {
        "cfg": graph.source,
        "input": list(graph.input_shape),
        "bflops": graph.bflops,
        "params": graph.params,
        "layers": [layer_summary(layer) for layer in graph.layers],
    }


def table_lines(graph: Graph, with_gamma: bool = False) -> list[str]:
    """Darknet-style text table: index, type, filters, size/stride, input → output, BFLOPs."""
    head = f"{'layer':>5} {'type':<15}{'filters':>8} {'size/strd':<13}{'input':>16}   {'output':<16}"
    head += f"{'BFLOPs':>10}"
    if with_gamma:
        head += f"  {'|γ| min':>8} {'mean':>8} {'max':>8} {'<0.01':>6}"
    lines = [head]
    for layer in graph.layers:
        filters = getattr(layer, "filters", "")
        line = (
            f"{layer.index:>5} {layer.kind:<15}{filters!s:>8} {layer.describe():<13}"
            f"{format_shape(layer.in_shape):>16} → {format_shape(layer.out_shape):<16}{layer.bflops():>10.3f}"
        )
        stats = gamma_stats(layer) if with_gamma else None
        if stats:
            line += (
                f"  {stats['min']:>8.4f} {stats['mean']:>8.4f} {stats['max']:>8.4f} "
                f"{stats['near_zero']:>6.1%}"
            )
        lines.append(line)
    c, h, w = graph.input_shape
    lines.append(
        f"input {w}x{h}x{c}, {len(graph)} layers, {graph.bflops:.3f} BFLOPs, "
        f"{graph.params:,} floats in .weights ({4 * graph.params / 2**20:.1f} MiB)"
    )
    return lines
