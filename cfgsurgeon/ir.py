"""The graph IR: ``[net]`` plus typed layers with explicit input edges, shapes, params and FLOPs.

Darknet's implicit "previous layer" and its relative/absolute ``layers=``/``from=`` indices become object
references here, so passes can remove or insert layers freely; only the cfg writer turns edges back into
indices.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CfgError, Location
from .layers import LAYER_TYPES, UNSUPPORTED, Layer, Net, Node, Ref, Shape, format_shape
from .parse import Section, Warn, parse_file, parse_text

if TYPE_CHECKING:
    from .weights import WeightsHeader


class Graph:
    """A darknet network: ``net`` (the input) and ``layers`` in cfg order.

    Shapes are inferred on construction; a pass that changes the structure builds a new Graph (or calls
    :meth:`infer`) so shapes, params and FLOPs always describe the layers as they are.
    """

    def __init__(self, net: Net, layers: list[Layer], source: str = "<string>"):
        self.net = net
        self.layers = layers
        self.source = source
        self.weights_header: WeightsHeader | None = None  # set when weights are read
        self.tree_file: str | None = None  # softmax-tree file given by the user for tree= layers
        self.infer()

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_sections(cls, sections: list[Section], source: str = "<string>", warn: Warn = print) -> Graph:
        if not sections or sections[0].name not in Net.names:
            where = Location(source, sections[0].line if sections else 0)
            raise CfgError("the first section must be [net] (or [network])", where)
        net = _make_node(Net, sections[0], source, warn)
        layers: list[Layer] = []
        for section in sections[1:]:
            layer_type = LAYER_TYPES.get(section.name)
            if layer_type is None:
                reason = UNSUPPORTED.get(section.name, "unknown layer type")
                raise CfgError(f"unsupported layer [{section.name}] at {source}:{section.line} ({reason})")
            layer = _make_node(layer_type, section, source, warn)
            layer.index = len(layers)
            _resolve_refs(layer, layers)
            layer.connect(layers[-1] if layers else net)
            layers.append(layer)
        return cls(net, layers, source)

    def clone(self, layers: list[Layer] | None = None) -> Graph:
        """A new Graph with copies of the nodes (options and weight dicts copied, arrays shared).

        ``layers`` (a subset of ``self.layers`` in order) drops the others: edges to a dropped layer are
        redirected to that layer's first input, the rule for removing a pass-through or residual unit.
        """
        keep = self.layers if layers is None else layers
        copies: dict[int, Node] = {id(self.net): _copy_node(self.net)}
        for layer in self.layers:
            copies[id(layer)] = copies[id(layer.inputs[0])] if layer not in keep else _copy_node(layer)
        new_layers = [copies[id(layer)] for layer in keep]
        for old, new in zip(keep, new_layers, strict=True):
            new.inputs = [copies[id(node)] for node in old.inputs]
            new.sources = {
                key: [Ref(copies[id(ref.target)], ref.relative) for ref in refs]
                for key, refs in old.sources.items()
            }
        graph = Graph(copies[id(self.net)], new_layers, self.source)  # type: ignore[arg-type]
        graph.weights_header = self.weights_header
        graph.tree_file = self.tree_file
        return graph

    # -- derived facts ---------------------------------------------------------------------------------
    def infer(self) -> None:
        """(Re)compute every output shape, in order; errors name the layer's line."""
        self.net.out_shape = self.net.infer()
        for index, layer in enumerate(self.layers):
            layer.index = index
            layer.out_shape = layer.infer()
            if min(layer.out_shape) <= 0:
                raise CfgError(
                    f"layer {index} [{layer.header}] would have an empty output "
                    f"({format_shape(layer.out_shape)}, width x height x channels)",
                    layer.where(),
                )

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def index_of(self, node: Node) -> int:
        """Position of ``node`` in ``layers`` (-1 for the network input)."""
        return -1 if node is self.net else self.layers.index(node)  # type: ignore[arg-type]

    @property
    def input_shape(self) -> Shape:
        return self.net.out_shape

    @property
    def bflops(self) -> float:
        return sum(layer.bflops() for layer in self.layers)

    @property
    def params(self) -> int:
        """Floats a full ``.weights`` file holds after its header (BN running statistics included)."""
        return sum(layer.params for layer in self.layers)

    def consumers(self) -> dict[int, list[Layer]]:
        """For each node (by ``id``), the layers that read its output."""
        found: dict[int, list[Layer]] = {}
        for layer in self.layers:
            for node in layer.inputs:
                found.setdefault(id(node), []).append(layer)
        return found

    def signature(self) -> tuple:
        """Everything that defines the network, without file positions: equal signatures = same IR."""

        def node_sig(node: Node) -> tuple:
            refs = tuple(
                (key, tuple((self.index_of(ref.target), ref.relative) for ref in refs))
                for key, refs in sorted(getattr(node, "sources", {}).items())
            )
            options = tuple(
                sorted((k, v) for k, v in node.options.items() if k not in getattr(node, "refs", ()))
            )
            return (node.kind, node.header, options, refs, node.out_shape)

        return (node_sig(self.net), *(node_sig(layer) for layer in self.layers))


def _copy_node(node: Node) -> Node:
    twin = copy.copy(node)
    twin.options = dict(node.options)
    twin.option_lines = dict(node.option_lines)
    if getattr(node, "weights", None) is not None:
        twin.weights = dict(node.weights)
    return twin


def load_cfg(path: str | Path, warn: Warn = print) -> Graph:
    """Parse a darknet ``.cfg`` file into a :class:`Graph`."""
    return Graph.from_sections(parse_file(path, warn), str(path), warn)


def loads_cfg(text: str, source: str = "<string>", warn: Warn = print) -> Graph:
    return Graph.from_sections(parse_text(text, source, warn), source, warn)


def _make_node(node_type: type[Node], section: Section, source: str, warn: Warn) -> Node:
    options: dict[str, str] = {}
    lines: dict[str, int] = {}
    for option in section.options:
        if option.key in options:
            warn(
                f"{source}:{option.line}: option '{option.key}' repeated; darknet uses the first "
                f"(line {lines[option.key]})"
            )
            continue
        options[option.key] = option.value
        lines[option.key] = option.line
    node = node_type(section.name, options, source, section.line, lines)
    node.check_options(warn)
    return node


def _resolve_refs(layer: Layer, earlier: list[Layer]) -> None:
    """Turn index options into :class:`Ref` edges (negative = relative to this layer, as in darknet)."""
    for key in layer.refs:
        text = layer.options.get(key)
        if text is None:
            if key in layer.required_refs:
                raise CfgError(f"[{layer.header}] needs '{key}='", layer.where())
            continue
        refs: list[Ref] = []
        for item in text.rstrip(",").split(","):
            try:
                value = int(item)
            except ValueError:
                raise CfgError(f"'{key}' expects layer indices, found '{text}'", layer.where(key)) from None
            target = layer.index + value if value < 0 else value
            if key == "yolo_layer" and value == 0:
                continue  # darknet: 0 means "none"
            if not 0 <= target < layer.index:
                raise CfgError(
                    f"'{key}={text}' in layer {layer.index} points at layer {target}, "
                    f"which is not an earlier layer (0..{layer.index - 1})",
                    layer.where(key),
                )
            refs.append(Ref(earlier[target], relative=value < 0))
        layer.sources[key] = refs
