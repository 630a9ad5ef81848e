"""Channel dependency analysis: which channels of which layers must be pruned together.

Every output channel of every node is given an *atom* id. Layers that create new channels (batch-normalised
convolutions, the network input, anything that mixes channels) make fresh atoms; layers that only move
channels around (pooling, upsample, route, reorg3d, …) reuse their inputs' atoms; layers that tie channels
together (shortcut, sam, scale_channels, depthwise convolution, grouped routes) *unite* atoms. A connected set
of atoms is a **unit**: the smallest thing that can be pruned. Units whose producers are the same layers
form a **group** (e.g. one residual stage of yolov4: all its shortcut-coupled convolutions). The rules live in
``RULES`` (the registry's ``channels`` stage), one function per layer type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise

import numpy as np

from .. import layers as L
from .. import registry
from ..ir import Graph


class _Atoms:
    """Channel atoms and the constraints the rules put on them.

    The rules only *record* unions, fixes and shortcut ties (arrays of atom ids); :meth:`solve` resolves them
    all at once with array operations. A union-find walked atom by atom in Python cost most of the analysis
    time on large models (tens of thousands of channels, each united a few times).
    """

    def __init__(self, shared: set[int]) -> None:
        self.shared = shared  # layers whose weights another conv uses (share_index)
        self.count = 0
        self._prunable: list[np.ndarray] = []  # per fresh block: may its atoms be pruned
        self._fixed: list[np.ndarray] = []
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []  # atom a[i] and b[i] are one unit
        self._via_shortcut: list[np.ndarray] = []  # atoms a shortcut sum ties together

    def fresh(self, count: int, prunable: bool) -> np.ndarray:
        """``count`` new atoms (a layer's new channels, or the network input's)."""
        start, self.count = self.count, self.count + count
        self._prunable.append(np.full(count, prunable))
        return np.arange(start, start + count)

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a) != len(b):
            raise ValueError(f"cannot unite {len(a)} atoms with {len(b)}")
        self._pairs.append((np.asarray(a), np.asarray(b)))

    def fix(self, atoms: np.ndarray) -> None:
        self._fixed.append(np.asarray(atoms))

    def tie_by_shortcut(self, atoms: np.ndarray) -> None:
        self._via_shortcut.append(np.asarray(atoms))

    def solve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit id of every atom (units numbered by their first atom), which units may be pruned, and which
        units a shortcut ties together."""
        roots = self._roots()
        is_root = roots == np.arange(self.count)  # a root is its unit's first atom
        unit_of_atom = (np.cumsum(is_root) - 1)[roots]
        unit_count = int(is_root.sum())
        prunable = _concat(self._prunable, bool)
        prunable[_concat(self._fixed, np.int64)] = False
        unit_prunable = np.ones(unit_count, dtype=bool)
        unit_prunable[unit_of_atom[~prunable]] = False  # a unit is prunable if all of its atoms are
        via_shortcut = np.zeros(unit_count, dtype=bool)
        via_shortcut[unit_of_atom[_concat(self._via_shortcut, np.int64)]] = True
        return unit_of_atom, unit_prunable, via_shortcut

    def _roots(self) -> np.ndarray:
        """The smallest atom connected to each atom: connected components of the union pairs by min-label
        hooking and pointer jumping (a few array passes, however long the chains of unions)."""
        label = np.arange(self.count)
        if not self._pairs:
            return label
        a = np.concatenate([pair[0] for pair in self._pairs])
        b = np.concatenate([pair[1] for pair in self._pairs])
        while True:
            la, lb = label[a], label[b]  # every label is a root here: label[label] == label
            differ = la != lb
            if not differ.any():
                return label
            np.minimum.at(label, np.maximum(la, lb)[differ], np.minimum(la, lb)[differ])  # hook roots
            while True:  # jump every atom to its root
                jumped = label[label]
                if np.array_equal(jumped, label):
                    break
                label = jumped


def _concat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)


def _no_ids() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class Group:
    """Coupled units sharing the same producer layers (e.g. one residual stage's shortcut-tied convs)."""

    id: int
    producers: list[int]
    unit_ids: np.ndarray = field(default_factory=_no_ids, compare=False)  # the group's units, ascending
    shortcut_coupled: bool = False  # tied by a shortcut sum (the 'normal' strategy leaves these alone)
    # (unit, producer layer, channel) of every member channel, sorted in that order
    member_channels: tuple[np.ndarray, np.ndarray, np.ndarray] = field(
        default_factory=lambda: (_no_ids(), _no_ids(), _no_ids()), compare=False, repr=False
    )

    @property
    def size(self) -> int:
        return len(self.unit_ids)

    @cached_property
    def units(self) -> list[dict[int, list[int]]]:
        """``units[u]`` maps producer layer → channel indices, for the group's u-th unit. Built on first use:
        large models have tens of thousands of units and pruning itself only needs ``unit_ids``."""
        found: dict[int, dict[int, list[int]]] = {}
        unit, layer, channel = (a.tolist() for a in self.member_channels)
        for u, producer, c in zip(unit, layer, channel, strict=True):
            found.setdefault(u, {}).setdefault(producer, []).append(c)
        return list(found.values())


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
    net_space = atoms.fresh(graph.input_shape[0], prunable=False)
    spaces: dict[int, np.ndarray] = {id(graph.net): net_space}
    inputs_atoms: list[list[np.ndarray]] = []
    for layer in graph.layers:
        ins = [spaces[id(node)] for node in layer.inputs]
        inputs_atoms.append(ins)
        spaces[id(layer)] = registry.rule("channels", layer)(layer, ins, atoms)
    unit_of_atom, unit_prunable, shortcut_units = atoms.solve()
    output_units = [unit_of_atom[spaces[id(layer)]] for layer in graph.layers]
    input_units = [[unit_of_atom[a] for a in ins] for ins in inputs_atoms]
    groups, unit_group = _groups(graph, output_units, unit_prunable, shortcut_units)
    return ChannelAnalysis(graph, input_units, output_units, unit_prunable, groups, unit_group)


def _groups(
    graph: Graph, output_units: list[np.ndarray], unit_prunable: np.ndarray, shortcut_units: np.ndarray
) -> tuple[list[Group], np.ndarray]:
    """Collect, for each prunable unit, the conv channels that produce it; group units by producer set
    (groups numbered in the order of their first unit)."""
    unit, layer, channel = _producer_channels(graph, output_units, unit_prunable)
    unit_ids, producer_sets = _producer_sets(unit, layer)
    group_of, first_unit = _number_by_first(producer_sets)
    count = len(first_unit)
    unit_group = np.full(len(unit_prunable), -1, dtype=np.int64)
    unit_group[unit_ids] = group_of
    unit_prunable &= unit_group >= 0  # prunable atoms without a producer to score (cannot happen in practice)
    coupled = np.zeros(count, dtype=bool)
    coupled[group_of[shortcut_units[unit_ids]]] = True
    units_of = _split(unit_ids, group_of, count)
    members_of = _split(np.arange(len(unit)), unit_group[unit], count)
    return [
        Group(g, _unpad(producer_sets[first]), units_of[g], bool(coupled[g]), (unit[m], layer[m], channel[m]))
        for g, (first, m) in enumerate(zip(first_unit.tolist(), members_of, strict=True))
    ], unit_group


def _producer_channels(
    graph: Graph, output_units: list[np.ndarray], unit_prunable: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every prunable channel of the producer layers as (unit, layer, channel) arrays, sorted by unit, then
    layer, then channel."""
    shared = graph_shared(graph)
    producers = [
        layer.index for layer in graph.layers if is_prunable_producer(layer) and layer.index not in shared
    ]
    if not producers:
        return _no_ids(), _no_ids(), _no_ids()
    unit = np.concatenate([output_units[p] for p in producers])
    layer = np.repeat(np.array(producers, dtype=np.int64), [len(output_units[p]) for p in producers])
    channel = np.concatenate([np.arange(len(output_units[p])) for p in producers])
    order = np.argsort(unit, kind="stable")  # stable: layer and channel stay ascending within a unit
    order = order[unit_prunable[unit[order]]]
    return unit[order], layer[order], channel[order]


def _producer_sets(unit: np.ndarray, layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct units of sorted (unit, layer) rows, and each one's producer layers as a row of a matrix
    padded with -1 (so that equal sets are equal rows)."""
    pair = np.ones(len(unit), dtype=bool)  # first row of each (unit, layer) pair
    pair[1:] = (unit[1:] != unit[:-1]) | (layer[1:] != layer[:-1])
    pair_unit, pair_layer = unit[pair], layer[pair]
    starts = np.flatnonzero(np.diff(pair_unit, prepend=-1))
    counts = np.diff(np.append(starts, len(pair_unit)))
    sets = np.full((len(starts), counts.max(initial=1)), -1, dtype=np.int64)
    position = np.arange(len(pair_unit)) - np.repeat(starts, counts)
    sets[np.repeat(np.arange(len(starts)), counts), position] = pair_layer
    return pair_unit[starts], sets


def _number_by_first(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number the distinct rows in the order they first appear: each row's number, each number's first row."""
    if not len(rows):
        return _no_ids(), _no_ids()
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # unique() numbers the rows in sorted order
    number = np.empty(len(first), dtype=np.int64)
    number[order] = np.arange(len(first))
    return number[inverse.ravel()], first[order]


def _split(values: np.ndarray, keys: np.ndarray, count: int) -> list[np.ndarray]:
    """``values`` split by their ``keys`` (0 … count-1), each part in its original order."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(count + 1)).tolist()
    return [values[order[start:end]] for start, end in pairwise(bounds)]


def _unpad(row: np.ndarray) -> list[int]:
    return row[row >= 0].tolist()


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
    return atoms.fresh(layer.out_shape[0], prunable=False)


def _convolutional(layer: L.Convolutional, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    if layer.xnor or layer.binary:
        # binarised: every input channel counts as ±1 and the per-filter scale is mean|w| over all of them,
        # so even a dead channel cannot be removed exactly (and darknet's xnor code needs multiples of 32
        # channels); its own outputs may be linear (bin_output) where the cfg says otherwise: kept whole.
        return _mixing(layer, ins, atoms)
    c, n, g = layer.in_shape[0], layer.filters, layer.effective_groups
    shared = layer.shares is not None or layer.index in atoms.shared
    out = atoms.fresh(n, prunable=is_prunable_producer(layer) and not shared)
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
        atoms.tie_by_shortcut(out[:n])
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


def _local(layer: L.Local, ins: list[np.ndarray], atoms: _Atoms) -> np.ndarray:
    """Input channels may go (their weights are cut, their constant folded into the per-position biases,
    exactly: see channel.py); the outputs are a fixed boundary, as for a conv without batch norm: no γ to
    score them by."""
    return atoms.fresh(layer.filters, prunable=False)


RULES = registry.define(
    "channels",
    {
        L.Convolutional: _convolutional,
        L.Local: _local,
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
        # mix channels or define a format (heads, softmax, connected, old reorg, …): fixed boundaries
        L.Connected: _mixing,
        L.Reorg: _mixing,
        L.Yolo: _mixing,
        L.AnchorFree: _mixing,
        L.GaussianYolo: _mixing,
        L.Region: _mixing,
        L.Detection: _mixing,
        L.Softmax: _mixing,
        L.Normalization: _mixing,
        L.Implicit: _mixing,
        L.Cost: _mixing,
        L.Contrastive: _mixing,
    },
)
