"""Channel pruning: remove the units that a selection drops, slice every weight that touches them, and fold
the constant output of each removed channel into its consumers (compensation).

A removed channel of a batch-normalised convolution behaves, once its γ is 0, as the constant ``act(β)``.
That constant flows through pass-through layers, shortcut sums, products and concatenations (``CONSTANTS``,
one rule per layer type) and reaches convolutions and connected layers, where ``Σ w · constant`` is folded
into the consumer's BN running mean (or its bias). Zero padding makes this exact only away from the borders
of padded consumers; :func:`border_affected` lists where that applies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import layers as L
from .. import registry
from ..activations import activate
from ..ir import Graph
from .groups import ChannelAnalysis, is_prunable_producer

BN_EPS = 1e-5

ConstantRule = Callable[[L.Layer, list[np.ndarray]], np.ndarray]


def prune_channels(
    analysis: ChannelAnalysis, keep_unit: np.ndarray, constants: dict[int, np.ndarray] | None = None
) -> Graph:
    """A new graph without the units where ``keep_unit`` is False (needs weights on the graph).
    ``constants``: :func:`pruned_constants` for this selection, if the caller has them already."""
    graph = analysis.graph
    keep_unit = np.asarray(keep_unit, dtype=bool) | ~analysis.unit_prunable
    if constants is None:
        constants = pruned_constants(analysis, keep_unit)
    pruned = graph.clone()

    def slice_layer(old: L.Layer, new: L.Layer) -> None:
        out_keep = keep_unit[analysis.output_units[old.index]]
        in_keep = [keep_unit[units] for units in analysis.input_units[old.index]]
        in_values = [constants[id(node)] for node in old.inputs]
        slicer = registry.rule("slicing", old)
        if not isinstance(slicer, registry.NotApplicable):
            slicer(new, old, in_keep, out_keep, in_values)

    # Each layer's slice depends only on the masks and constants computed above and writes only its own new
    # node, so layers are sliced concurrently: numpy's copies and sums release the GIL (same result, faster).
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(slice_layer, graph.layers, pruned.layers))
    pruned.infer()
    return pruned


def masked_copy(analysis: ChannelAnalysis, keep_unit: np.ndarray) -> Graph:
    """The keep-size model with the dropped channels switched off (γ = 0): what pruning must reproduce."""
    keep_unit = np.asarray(keep_unit, dtype=bool) | ~analysis.unit_prunable
    masked = analysis.graph.clone()
    for layer in masked.layers:
        if is_prunable_producer(layer):
            scales = np.array(layer.weights["scales"], dtype=np.float32)
            scales[~keep_unit[analysis.output_units[layer.index]]] = 0
            layer.weights["scales"] = scales
    return masked


# -- constants of removed channels -----------------------------------------------------------------------


def pruned_constants(analysis: ChannelAnalysis, keep_unit: np.ndarray) -> dict[int, np.ndarray]:
    """For every node (by ``id``): its output value per channel where the channel is removed, else NaN."""
    graph = analysis.graph
    values: dict[int, np.ndarray] = {id(graph.net): np.full(graph.input_shape[0], np.nan)}
    for layer in graph.layers:
        ins = [values[id(node)] for node in layer.inputs]
        out = registry.rule("compensation", layer)(layer, ins)
        removed = ~keep_unit[analysis.output_units[layer.index]]
        values[id(layer)] = np.where(removed, out, np.nan)
    return values


def _not_constant(layer: L.Layer, ins: list[np.ndarray]) -> np.ndarray:
    """A layer that mixes its input channels (or whose outputs are never removed)."""
    return np.full(layer.out_shape[0], np.nan)


def _same(layer: L.Layer, ins: list[np.ndarray]) -> np.ndarray:
    return ins[0]


def _conv_constant(layer: L.Convolutional, ins: list[np.ndarray]) -> np.ndarray:
    if not is_prunable_producer(layer):
        return np.full(layer.filters, np.nan)
    return activate(layer.activation, np.asarray(layer.weights["biases"], dtype=np.float64))


def _route_constant(layer: L.Route, ins: list[np.ndarray]) -> np.ndarray:
    size = [len(v) // layer.groups for v in ins]
    return np.concatenate(
        [v[layer.group_id * s : (layer.group_id + 1) * s] for v, s in zip(ins, size, strict=True)]
    )


def _shortcut_constant(layer: L.Shortcut, ins: list[np.ndarray]) -> np.ndarray:
    weights = _shortcut_weights(layer)
    total = ins[0] * weights[0]
    for k, other in enumerate(ins[1:], start=1):
        n = min(len(total), len(other))
        total = total.copy()
        total[:n] += other[:n] * weights[k][:n]
    return activate(layer.activation, total)


def _shortcut_weights(layer: L.Shortcut) -> np.ndarray:
    c = layer.out_shape[0]
    if not layer.weight_layout():
        return np.ones((len(layer.inputs), c))
    w = np.broadcast_to(np.asarray(layer.weights["weights"], dtype=np.float64), (len(layer.inputs), c))
    if layer.weights_normalization in ("relu", "avg_relu"):
        positive = np.maximum(w, 0)
        return positive / (1e-4 + positive.sum(axis=0))
    if layer.weights_normalization == "softmax":
        e = np.exp(w - w.max(axis=0))
        return e / (1e-4 + e.sum(axis=0))
    return w


def _product_constant(layer: L.Sam | L.ScaleChannels, ins: list[np.ndarray]) -> np.ndarray:
    return activate(layer.activation, ins[0] * ins[1])


def _upsample_constant(layer: L.Upsample, ins: list[np.ndarray]) -> np.ndarray:
    block = 1 if layer.stride > 0 else layer.stride * layer.stride
    return ins[0] * layer.scale * block


def _crop_constant(layer: L.Crop, ins: list[np.ndarray]) -> np.ndarray:
    return ins[0] if layer.noadjust else ins[0] * 2 - 1


def _batchnorm_constant(layer: L.BatchNorm, ins: list[np.ndarray]) -> np.ndarray:
    w = {k: np.asarray(v, dtype=np.float64) for k, v in layer.weights.items()}
    return (ins[0] - w["rolling_mean"]) / np.sqrt(w["rolling_variance"] + BN_EPS) * w["scales"] + w["biases"]


CONSTANTS = registry.define(
    "compensation",
    {
        L.Convolutional: _conv_constant,
        L.Route: _route_constant,
        L.Shortcut: _shortcut_constant,
        L.Sam: lambda layer, ins: _product_constant(layer, ins),
        L.ScaleChannels: lambda layer, ins: _product_constant(layer, ins),
        L.Reorg3d: lambda layer, ins: np.tile(ins[0], layer.stride * layer.stride),
        L.MaxPool: _same,
        L.LocalAvgPool: _same,
        L.AvgPool: _same,
        L.Dropout: _same,
        L.Empty: _same,
        L.Upsample: _upsample_constant,
        L.Crop: _crop_constant,
        L.BatchNorm: _batchnorm_constant,
        L.Activation: lambda layer, ins: (
            activate(layer.activation, ins[0])
            if not layer.activation.startswith("normalize")
            else np.full(len(ins[0]), np.nan)
        ),
        # mix channels or keep every output channel: no constant to pass on
        L.Connected: _not_constant,
        L.Local: _not_constant,
        L.Reorg: _not_constant,
        L.Yolo: _not_constant,
        L.AnchorFree: _not_constant,
        L.GaussianYolo: _not_constant,
        L.Region: _not_constant,
        L.Detection: _not_constant,
        L.Softmax: _not_constant,
        L.Normalization: _not_constant,
        L.Implicit: _not_constant,
        L.Cost: _not_constant,
        L.Contrastive: _not_constant,
    },
)


# -- slicing weights ----------------------------------------------------------------------------------------

Slicer = Callable[[L.Layer, L.Layer, list[np.ndarray], np.ndarray, list[np.ndarray]], None]


def _slice_conv(new: L.Convolutional, old: L.Convolutional, in_keep, out_keep, in_values) -> None:
    if old.weights is None or old.shares is not None:
        return
    w = np.asarray(old.weights["weights"])  # (n, c/g, k, k), float32
    groups = old.effective_groups
    depthwise = groups > 1 and w.shape[1] == 1
    keep_in = np.ones(1, dtype=bool) if depthwise else in_keep[0][: w.shape[1]]  # the same in every group
    kept = np.flatnonzero(out_keep)  # slice first: the removed filters are never read, nor converted
    weights = _take_taps(w, kept, np.flatnonzero(keep_in))
    if depthwise:  # a removed input's output channel is removed too: nothing to compensate
        shift = np.zeros(len(kept))
    else:
        shift = _consumed_constant(w, kept, groups, in_keep[0], in_values[0], weights)
    tensors = {name: weights if name == "weights" else np.asarray(a)[kept] for name, a in old.weights.items()}
    if "rolling_mean" in tensors:
        tensors["rolling_mean"] = tensors["rolling_mean"] - shift
    else:
        tensors["biases"] = tensors["biases"] + shift
    new.weights = {name: _f32(a) for name, a in tensors.items()}
    new.filters = len(kept)
    if depthwise:
        new.groups = int(in_keep[0].sum())


def _take_taps(w: np.ndarray, filters: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """A copy of ``w[filters][:, inputs]`` by ``np.take``, many times faster than fancy indexing: whole
    filters, or for k×k kernels one pass over the (filter, input) chunks of taps, reading nothing else."""
    n, c = w.shape[:2]
    if len(inputs) == c:
        return np.take(w, filters, axis=0)
    if w[0, 0].size == 1:  # 1×1: single floats, faster by filters then inputs than by an index per float
        return np.take(np.take(w, filters, axis=0), inputs, axis=1)
    chunks = np.take(w.reshape(n * c, -1), (filters[:, None] * c + inputs).ravel(), axis=0)
    return chunks.reshape(len(filters), len(inputs), *w.shape[2:])


def _consumed_constant(
    w: np.ndarray, kept: np.ndarray, groups: int, keep: np.ndarray, values: np.ndarray, kept_taps: np.ndarray
) -> np.ndarray:
    """``Σ w · constant`` over the removed input channels, for each ``kept`` filter (interior of the feature
    map): tap sums of every (filter, input) pair times the input's constant (0 for a kept input), summed
    over the input width in float64.

    Only the removed inputs' taps are summed, the costly part; the kept inputs' products are left out, as
    ``tap sum · 0`` adds nothing (an all-zero total is made +0.0 as a full-width sum gives), unless a kept
    tap (``kept_taps``) is inf or NaN: then every tap is summed, as the formula is written.
    """
    n, per_in = w.shape[:2]
    if keep.all():
        return np.zeros(len(kept))
    constant = np.where(keep, 0.0, np.nan_to_num(values, nan=0.0)).reshape(groups, per_in)  # each group's
    inputs = np.arange(per_in)
    if _all_finite(kept_taps):
        inputs = np.flatnonzero(~keep[:per_in])
    taps = _take_taps(w, kept, inputs).reshape(len(kept), len(inputs), -1)
    tap_sums = np.einsum("fit->fi", taps, dtype=np.float64)  # float64 sums, faster than .sum(axis=(2, 3))
    factor = constant[0, inputs] if groups == 1 else constant[kept // (n // groups)][:, inputs]
    # not a BLAS product, which may skip a 0 factor (inf · 0 is NaN); + 0.0: a -0.0 total becomes +0.0
    return (tap_sums * factor).sum(axis=1) + 0.0


def _all_finite(a: np.ndarray) -> bool:
    flat = a.reshape(-1)  # a sum of squares is inf or NaN if any value is (or on overflow: then a needless
    return bool(np.isfinite(np.dot(flat, flat)))  # full sum, still right); one BLAS pass, not min + max


def _slice_connected(new: L.Connected, old: L.Connected, in_keep, out_keep, in_values) -> None:
    if old.weights is None:
        return
    _, h, w = old.in_shape
    keep = np.repeat(in_keep[0], h * w)
    constant = np.repeat(np.where(in_keep[0], 0.0, np.nan_to_num(in_values[0], nan=0.0)), h * w)
    tensors = {name: np.asarray(a, dtype=np.float64) for name, a in old.weights.items()}
    shift = tensors["weights"] @ constant
    if "rolling_mean" in tensors:
        tensors["rolling_mean"] = tensors["rolling_mean"] - shift
    else:
        tensors["biases"] = tensors["biases"] + shift
    tensors["weights"] = tensors["weights"][:, keep]
    new.weights = {name: _f32(a) for name, a in tensors.items()}


def _slice_batchnorm(new: L.BatchNorm, old: L.BatchNorm, in_keep, out_keep, in_values) -> None:
    new.weights = {name: _f32(np.asarray(a)[out_keep]) for name, a in old.weights.items()}


def _slice_shortcut(new: L.Shortcut, old: L.Shortcut, in_keep, out_keep, in_values) -> None:
    if old.weights_type == "per_channel":
        new.weights = {"weights": _f32(np.asarray(old.weights["weights"])[:, out_keep])}


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _slice_local(new: L.Local, old: L.Local, in_keep, out_keep, in_values) -> None:
    """Cut the removed input channels from every position's filters and add what they gave (their constant
    times the taps inside the input there) to that position's biases: exact at the borders too, since each
    output value has a bias of its own. The outputs are never cut (a fixed boundary, see groups.py)."""
    if old.weights is None:
        return
    keep = in_keep[0]
    removed = np.flatnonzero(~keep)
    w = np.asarray(old.weights["weights"])  # (out_h, out_w, filters, channels, size, size)
    constant = np.nan_to_num(np.asarray(in_values[0])[removed], nan=0.0)
    shift = np.einsum(
        "hwnckl,c,hwkl->nhw", w[:, :, :, removed], constant, _local_inside(old), dtype=np.float64
    )
    biases = np.asarray(old.weights["biases"], dtype=np.float64) + shift
    new.weights = {"biases": _f32(biases), "weights": _f32(w[:, :, :, np.flatnonzero(keep)])}


def _local_inside(layer: L.Local) -> np.ndarray:
    """Whether each tap of each output position's window lies inside the input, (out_h, out_w, size, size)."""
    _, h, w = layer.in_shape
    taps, pad, stride = np.arange(layer.size), layer.pad, layer.stride
    out_h, out_w = layer.local_output()
    rows = np.arange(out_h)[:, None] * stride - pad + taps
    cols = np.arange(out_w)[:, None] * stride - pad + taps
    inside_rows, inside_cols = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    return inside_rows[:, None, :, None] & inside_cols[None, :, None, :]


_NO_TENSORS = registry.NotApplicable("stores no tensors")

SLICERS = registry.define(
    "slicing",
    {
        L.Convolutional: _slice_conv,
        L.Connected: _slice_connected,
        L.Local: _slice_local,
        L.BatchNorm: _slice_batchnorm,
        L.Shortcut: _slice_shortcut,
        L.Implicit: registry.NotApplicable("its channels are a fixed boundary (groups.py): nothing is cut"),
        **dict.fromkeys(
            (
                L.MaxPool,
                L.LocalAvgPool,
                L.AvgPool,
                L.Route,
                L.ScaleChannels,
                L.Sam,
                L.Upsample,
                L.Reorg3d,
                L.Reorg,
                L.Yolo,
                L.AnchorFree,
                L.GaussianYolo,
                L.Region,
                L.Detection,
                L.Softmax,
                L.Dropout,
                L.Activation,
                L.Crop,
                L.Cost,
                L.Contrastive,
                L.Empty,
                L.Normalization,
            ),
            _NO_TENSORS,
        ),
    },
)


def border_affected(
    analysis: ChannelAnalysis, keep_unit: np.ndarray, constants: dict[int, np.ndarray] | None = None
) -> list[int]:
    """Consumers where compensation is inexact near the borders: padded convs reading a removed channel
    whose constant is not zero. ``constants`` as for :func:`prune_channels`."""
    if constants is None:
        constants = pruned_constants(analysis, np.asarray(keep_unit, dtype=bool) | ~analysis.unit_prunable)
    found = []
    for layer in analysis.graph.layers:
        if not isinstance(layer, L.Convolutional):
            continue
        padded_reader = layer.effective_padding > 0 and layer.size > 1
        reads_constant = np.any(np.nan_to_num(constants[id(layer.inputs[0])], nan=0.0) != 0)
        blurs_constant = layer.antialiasing and np.any(np.nan_to_num(constants[id(layer)], nan=0.0) != 0)
        if (padded_reader and reads_constant) or blurs_constant:  # the blur zero-pads its own output
            found.append(layer.index)
    return found
