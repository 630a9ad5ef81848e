"""Channel dependency analysis: which channels of which layers must be pruned together.

Every output channel of every node is given an *atom* id. Layers that create new channels (batch-normalised
convolutions, the network input, anything that mixes channels) make fresh atoms; layers that only move
channels around (pooling, upsample, route, reorg3d, …) reuse their inputs' atoms; layers that tie channels
together (shortcut, sam, scale_channels, depthwise convolution, grouped routes) *unite* atoms. A connected set
of atoms is a **unit**: the smallest thing that can be pruned. Units whose producers are the same layers
form a **group** (e.g. one residual stage of yolov4: all its shortcut-coupled convolutions). The rules live in
``RULES``, one function per layer type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import layers as L
from ..ir import Graph


class _Atoms:
    """Union-find over channel atoms, with the layer that produced each atom and a 'fixed' flag."""

    def __init__(self, shared: set[int]) -> None:
        self.shared = shared  # layers whose weights another conv uses (share_index)
        self.via_shortcut: set[int] = set()  # atoms a shortcut sum ties together
        self.parent: list[int] = []
        self.producer: list[int] = []  # layer index, -1 = network input
        self.prunable: list[bool] = []

    def fresh(self, count: int, producer: int, prunable: bool) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.producer.extend([producer] * count)
        self.prunable.extend([prunable] * count)
        return np.arange(start, start + count)

    def find(self, atom: int) -> int:
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def fix(self, atoms: np.ndarray) -> None:
        for atom in atoms.tolist():
            self.prunable[atom] = False


@dataclass
class Group:
    """Coupled units sharing the same producer layers; ``units[u]`` maps producer layer → channel indices."""

    id: int
    producers: list[int]
    units: list[dict[int, list[int]]] = field(default_factory=list)

    shortcut_coupled: bool = False  # tied by a shortcut sum (the 'normal' strategy leaves these alone)

    @property
    def size(self) -> int:
        return len(self.units)


@dataclass
class ChannelAnalysis:
    """The result of :func:`analyse`: every node's channel space as unit ids, and the prunable groups."""

    graph: Graph
    input_units: list[list[np.ndarray]]  # per layer, per input: unit id of each input channel
    output_units: list[np.ndarray]  # per layer: unit id of each output channel
    unit_prunable: np.ndarray  # per unit
    groups: list[Group]
    unit_group: np.ndarray  # per unit: group id, -1 if not prunable


Rule = Callable[[L.Layer, list[np.ndarray], _Atoms], np.ndarray]


def analyse(graph: Graph) -> ChannelAnalysis:
    atoms = _Atoms(graph_shared(graph))
    net_space = atoms.fresh(graph.input_shape[0], -1, prunable=False)
    spaces: dict[int, np.ndarray] = {id(graph.net): net_space}
    inputs_atoms: list[list[np.ndarray]] = []
    for layer in graph.layers:
        ins = [spaces[id(node)] for node in layer.inputs]
        inputs_atoms.append(ins)
        rule = RULES.get(type(layer), _mixing)
        spaces[id(layer)] = rule(layer, ins, atoms)
    roots = np.array([atoms.find(a) for a in range(len(atoms.parent))], dtype=np.int64)
    unit_of_root = {root: u for u, root in enumerate(dict.fromkeys(roots.tolist()))}
    unit_of_atom = np.array([unit_of_root[r] for r in roots.tolist()], dtype=np.int64)
    unit_prunable = np.ones(len(unit_of_root), dtype=bool)
    np.logical_and.at(unit_prunable, unit_of_atom, np.array(atoms.prunable, dtype=bool))
    output_units = [unit_of_atom[spaces[id(layer)]] for layer in graph.layers]
    input_units = [[unit_of_atom[a] for a in ins] for ins in inputs_atoms]
    shortcut_units = {int(unit_of_atom[a]) for a in atoms.via_shortcut}
    groups, unit_group = _groups(graph, output_units, unit_prunable, shortcut_units)
    return ChannelAnalysis(graph, input_units, output_units, unit_prunable, groups, unit_group)


def _groups(
    graph: Graph, output_units: list[np.ndarray], unit_prunable: np.ndarray, shortcut_units: set[int]
) -> tuple[list[Group], np.ndarray]:
    """Collect, for each prunable unit, the conv channels that produce it; group units by producer set."""
    members: dict[int, dict[int, list[int]]] = {}
    for layer in graph.layers:
        if not is_prunable_producer(layer) or layer.index in graph_shared(graph):
            continue
        for channel, unit in enumerate(output_units[layer.index].tolist()):
            if unit_prunable[unit]:
                members.setdefault(unit, {}).setdefault(layer.index, []).append(channel)
    by_producers: dict[tuple[int, ...], Group] = {}
    unit_group = np.full(len(unit_prunable), -1, dtype=np.int64)
    for unit, producers in sorted(members.items()):
        key = tuple(sorted(producers))
        group = by_producers.setdefault(key, Group(len(by_producers), list(key)))
        group.units.append(producers)
        group.shortcut_coupled |= unit in shortcut_units
        unit_group[unit] = group.id
    for unit in np.flatnonzero(unit_prunable & (unit_group < 0)):
        unit_prunable[unit] = False  # prunable atoms but no producer we can score (cannot happen in practice)
    return list(by_producers.values()), unit_group


def is_prunable_producer(layer: L.Layer) -> bool:
    """Batch-normalised convolutions with weights of their own (their γ says what a channel is worth)."""
    return isinstance(layer, L.Convolutional) and bool(layer.batch_normalize) and layer.shares is None


def graph_shared(graph: Graph) -> set[int]:
    return {
        layer.shares.index for layer in graph.layers if isinstance(layer, L.Convolutional) and layer.shares
    }


# -- rules: how each layer type maps its input channels to its output channels ---------------------------


def _pass_through(layer: L.Layer, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    return ins[0]


def _mixing(layer: L.Layer, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    """A layer that mixes or reinterprets channels: its inputs and outputs are fixed."""
    for space in ins:
        atoms.fix(space)
    return atoms.fresh(layer.out_shape[0], layer.index, prunable=False)


def _convolutional(layer: L.Convolutional, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    c, n, g = layer.in_shape[0], layer.filters, layer.effective_groups
    shared = layer.shares is not None or layer.index in atoms.shared
    out = atoms.fresh(n, layer.index, prunable=is_prunable_producer(layer) and not shared)
    if shared:
        atoms.fix(ins[0])  # shared weights: both layers' input widths must stay equal
        return out
    if g > 1:
        per_in, per_out = c // g, n // g
        if per_in == 1:  # depthwise: output channel f reads input channel f // per_out
            atoms.unite(out, ins[0][np.arange(n) // per_out])
        else:  # grouped: keep every group the same size by pruning the same offsets in each group
            for k in range(1, g):
                atoms.unite(ins[0][:per_in], ins[0][k * per_in : (k + 1) * per_in])
                atoms.unite(out[:per_out], out[k * per_out : (k + 1) * per_out])
    return out


def _route(layer: L.Route, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    if layer.groups == 1:
        return np.concatenate(ins)
    pieces = []
    for space in ins:
        size = len(space) // layer.groups
        for k in range(1, layer.groups):  # every slice keeps the same width, so `groups` still divides
            atoms.unite(space[:size], space[k * size : (k + 1) * size])
        pieces.append(space[layer.group_id * size : (layer.group_id + 1) * size])
    return np.concatenate(pieces)


def _shortcut(layer: L.Shortcut, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    out = ins[0]
    for other in ins[1:]:
        n = min(len(out), len(other))
        atoms.unite(out[:n], other[:n])
        atoms.via_shortcut.update(out[:n].tolist())
        atoms.fix(other[n:])  # channels a narrower output ignores
    return out


def _elementwise_product(layer: L.Layer, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    """sam, and scale_channels with one factor per channel: channel c of both operands is one unit."""
    if isinstance(layer, L.ScaleChannels) and layer.scale_wh:
        atoms.fix(ins[0])  # one factor map for all channels
        return ins[1]
    atoms.unite(ins[0], ins[1])
    return ins[1] if isinstance(layer, L.ScaleChannels) else ins[0]


def _reorg3d(layer: L.Reorg3d, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    if layer.reverse:
        return _mixing(layer, ins, atoms)
    return np.tile(ins[0], layer.stride * layer.stride)  # output channel k is input channel k % c


def _activation(layer: L.Activation, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    if layer.activation.startswith("normalize_channels"):
        return _mixing(layer, ins, atoms)
    return ins[0]


def _maxpool(layer: L.MaxPool, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    return _mixing(layer, ins, atoms) if layer.maxpool_depth else ins[0]


def _batchnorm(layer: L.BatchNorm, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    return ins[0]


RULES: dict[type[L.Layer], Rule] = {
    L.Convolutional: _convolutional,
    L.Route: _route,
    L.Shortcut: _shortcut,
    L.Sam: _elementwise_product,
    L.ScaleChannels: _elementwise_product,
    L.Reorg3d: _reorg3d,
    L.MaxPool: _maxpool,
    L.LocalAvgPool: _pass_through,
    L.AvgPool: _pass_through,
    L.Upsample: _pass_through,
    L.Dropout: _pass_through,
    L.Empty: _pass_through,
    L.Crop: _pass_through,
    L.BatchNorm: _batchnorm,
    L.Activation: _activation,
    # Everything else mixes channels or defines a format (heads, softmax, connected, old reorg, …): fixed.
}
