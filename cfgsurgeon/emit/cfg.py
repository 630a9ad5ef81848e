"""IR → darknet ``.cfg`` text. Option text is written as parsed (anchors and floats are never reformatted);
indices of ``layers=``/``from=``/``share_index=``/``yolo_layer=`` are recomputed from the graph's edges in the
form (relative or absolute) the user wrote them."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_output
from ..ir import Graph
from ..layers import Layer, Node


def cfg_text(graph: Graph) -> str:
    blocks = [_section(graph.net, {})]
    for layer in graph.layers:
        blocks.append(_section(layer, _ref_values(graph, layer)))
    return "\n".join(blocks)


def write_cfg(graph: Graph, path: str | Path) -> None:
    with atomic_output(path, "w") as out:
        out.write(cfg_text(graph))


def _section(node: Node, refs: dict[str, str]) -> str:
    lines = [f"[{node.header}]"]
    lines += [f"{key}={refs.get(key, value)}" for key, value in node.options.items()]
    lines += [f"{key}={value}" for key, value in refs.items() if key not in node.options]
    return "\n".join(lines) + "\n"


def _ref_values(graph: Graph, layer: Layer) -> dict[str, str]:
    here = graph.index_of(layer)
    values = {}
    for key, refs in layer.sources.items():
        indices = []
        for ref in refs:
            target = graph.index_of(ref.target)
            indices.append(target - here if ref.relative else target)
        if indices:
            values[key] = ",".join(map(str, indices))
    return values
