"""The pruning engine (``cfgsurgeon.surgery``) on tiny synthetic cfgs: one channel-coupling rule per layer
type, compensation of removed channels' constants, the selection guards (never empty a layer, refuse a ratio
above the bound), criteria, determinism, and residual-unit (layer) pruning with rewritten ``layers=`` indices.

Every claim about outputs is checked with float64 torch models of the compact graph against an independently
built keep-size reference (the original weights with the removed channels switched off by hand), never
against the engine's own ``masked()`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import quiet

from cfgsurgeon import layers as L
from cfgsurgeon.emit.cfg import write_cfg
from cfgsurgeon.emit.torch import to_torch
from cfgsurgeon.errors import UsageError
from cfgsurgeon.ir import Graph, load_cfg, loads_cfg
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.surgery.criteria import unit_scores
from cfgsurgeon.surgery.groups import ChannelAnalysis, analyse
from cfgsurgeon.surgery.layer import residual_units
from cfgsurgeon.surgery.prune import PruneResult, prune, report
from cfgsurgeon.weights import read_weights, write_weights

EXACT = 1e-12  # float64 models: what "equal" means when only the order of additions differs
FOLDED = 1e-6  # when constants are folded into a consumer: .weights store the shifted BN mean in float32


# -- building tiny models ------------------------------------------------------------------------------------
def net(size: int = 16, channels: int = 3) -> str:
    return f"[net]\nwidth={size}\nheight={size}\nchannels={channels}\n"


def conv(
    filters: int, size: int = 1, act: str = "leaky", bn: int = 1, pad: int = 1, **options: object
) -> str:
    lines = ["[convolutional]"] + (["batch_normalize=1"] if bn else [])
    lines += [f"filters={filters}", f"size={size}", "stride=1", f"pad={pad}", f"activation={act}"]
    lines += [f"{key}={value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def section(name: str, **options: object) -> str:
    return "\n".join([f"[{name}]"] + [f"{key}={value}" for key, value in options.items()]) + "\n"


OUTPUT = conv(3, 1, bn=0, act="linear")  # a fixed-width last layer: what the models' outputs are compared on


def model(
    *sections: str, size: int = 16, channels: int = 3, seed: int = 0, dead: float = 0.0, head: bool = True
) -> Graph:
    """A graph with random well-conditioned weights (``dead``: share of each BN layer's channels with
    γ = β = 0 exactly), ending in a plain 1×1 conv (``head``) so that its output keeps its width."""
    graph = loads_cfg(net(size, channels) + "\n".join([*sections, OUTPUT] if head else sections), warn=quiet)
    random_weights(graph, seed=seed, dead_fraction=dead)
    return graph


def set_bn(
    graph: Graph, index: int, channels: list[int], gamma: float | None = 0.0, beta: float | None = 0.0
):
    """Overwrite γ and/or β of some channels of a batch-normalised layer (weights are copied, not edited)."""
    layer = graph.layers[index]
    tensors = {name: np.array(a, dtype=np.float32) for name, a in layer.weights.items()}
    if gamma is not None:
        tensors["scales"][channels] = gamma
    if beta is not None:
        tensors["biases"][channels] = beta
    layer.weights = tensors


# -- running them --------------------------------------------------------------------------------------------
@contextmanager
def _fast_modules() -> Iterator[None]:
    """``to_torch`` overwrites every parameter with the graph's weights right after building, so the random
    initialisation nn.Conv2d/nn.Linear draw first is wasted work (most of the build time of a big model).
    A parameter the loader forgot would keep uninitialised memory and fail the comparisons loudly."""
    with (
        mock.patch.object(torch.nn.modules.conv._ConvNd, "reset_parameters", lambda self: None),
        mock.patch.object(torch.nn.Linear, "reset_parameters", lambda self: None),
    ):
        yield


def torch_model(graph: Graph) -> torch.nn.Module:
    with _fast_modules():
        return to_torch(graph).double()


def random_input(graph: Graph, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((1, *graph.input_shape)))


def outputs(graph: Graph, x: torch.Tensor, keep: list[int] | None = None) -> list[np.ndarray]:
    """Float64 outputs of the heads (or of the layers in ``keep``)."""
    with torch.inference_mode():
        return [y.numpy() for y in torch_model(graph)(x, keep=keep)]


def rel_error(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Largest ``max|a − b| / max|b|`` over the outputs (each output normalised by its own magnitude)."""
    assert [a.shape for a in ours] == [b.shape for b in reference]
    return max(
        float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in zip(ours, reference, strict=True)
    )


# -- the independent reference -------------------------------------------------------------------------------
def producer_convs(graph: Graph) -> list[L.Convolutional]:
    return [
        layer
        for layer in graph.layers
        if isinstance(layer, L.Convolutional) and layer.batch_normalize and layer.shares is None
    ]


def kept_by_matching(original: L.Convolutional, compact: L.Convolutional) -> list[int]:
    """Which original output channels a compact conv holds, found from the tensors themselves: slicing keeps
    a channel's γ, β and running variance (random, so almost always unique), and its filter's weights are a
    subset of the original filter's (some input columns removed), which settles the rare ties."""

    def keys(layer: L.Convolutional) -> list[tuple[float, float, float]]:
        names = ("scales", "biases", "rolling_variance")
        return list(zip(*(np.asarray(layer.weights[name]).tolist() for name in names), strict=True))

    channels_of: dict[tuple[float, float, float], list[int]] = {}
    for channel, key in enumerate(keys(original)):
        channels_of.setdefault(key, []).append(channel)
    rows = np.asarray(original.weights["weights"]).reshape(original.filters, -1)
    compact_rows = np.asarray(compact.weights["weights"]).reshape(compact.filters, -1)
    same_width = rows.shape[1] == compact_rows.shape[1]  # no input removed (or depthwise): rows are equal
    by_row = {row.tobytes(): c for c, row in enumerate(rows)} if same_width else {}
    found = []
    for k, key in enumerate(keys(compact)):
        matches = channels_of.get(key, [])
        if len(matches) > 1 and same_width:
            matches = [c for c in matches if by_row.get(compact_rows[k].tobytes()) == c]
        elif len(matches) > 1:
            matches = [c for c in matches if np.isin(compact_rows[k], rows[c]).all()]
        assert len(matches) == 1, f"layer {original.index}: compact channel {k} matches channels {matches}"
        found.append(matches[0])
    return found


def check_kept_channels(result: PruneResult) -> dict[int, list[int]]:
    """The compact model holds, in order, the channels ``kept_channels`` lists (and only those); returns the
    removed channels per original producer conv."""
    before, after = result.analysis.graph, result.pruned
    assert len(before.layers) == len(after.layers)
    removed = {}
    original_index = {(layer.line, layer.kind): layer.index for layer in result.original.layers}
    for old in producer_convs(before):
        new = after.layers[old.index]
        kept = kept_by_matching(old, new)
        assert kept == sorted(kept), f"layer {old.index}: channel order changed"
        assert kept == result.kept_channels[original_index[(old.line, old.kind)]], f"layer {old.index}"
        assert new.filters == len(kept) == new.out_shape[0]
        removed[old.index] = sorted(set(range(old.filters)) - set(kept))
    return removed


def masked_reference(graph: Graph, removed: dict[int, list[int]]) -> Graph:
    """The keep-size model with the removed channels switched off (γ = 0), built by hand."""
    masked = graph.clone()
    for index, channels in removed.items():
        if channels:
            set_bn(masked, index, channels, gamma=0.0, beta=None)
    return masked


def compare_with_reference(result: PruneResult, x: torch.Tensor | None = None) -> float:
    """Relative error of the compact model against the hand-masked keep-size model (also checks that the
    engine's own masked() switches off the same channels)."""
    removed = check_kept_channels(result)
    reference = masked_reference(result.analysis.graph, removed)
    engine_masked = result.masked()
    for ours, theirs in zip(reference.layers, engine_masked.layers, strict=True):
        if ours.weights and "scales" in ours.weights:
            np.testing.assert_array_equal(ours.weights["scales"], theirs.weights["scales"])
    x = random_input(result.original) if x is None else x
    return rel_error(outputs(result.pruned, x), outputs(reference, x))


def units_of(analysis: ChannelAnalysis, index: int) -> list[int]:
    return analysis.output_units[index].tolist()


def group_units(analysis: ChannelAnalysis, group) -> np.ndarray:
    return np.flatnonzero(analysis.unit_group == group.id)


# ============================================================================================================
# Channel groups: one rule per layer type
# ============================================================================================================
def test_plain_convs_are_one_group_each():
    graph = model(conv(4, 3), conv(6, 3), conv(5, 1))
    analysis = analyse(graph)
    first, second, third = (units_of(analysis, i) for i in range(3))
    assert len(set(first + second + third)) == 15  # every channel its own unit
    assert [g.producers for g in analysis.groups] == [[0], [1], [2]]
    assert all(g.size == n for g, n in zip(analysis.groups, (4, 6, 5), strict=True))
    assert not any(g.shortcut_coupled for g in analysis.groups)


def test_network_input_and_unnormalised_convs_are_not_prunable():
    graph = model(conv(4, 3, bn=0), conv(4, 3))
    analysis = analyse(graph)
    assert not analysis.unit_prunable[units_of(analysis, 0)].any()
    assert analysis.unit_prunable[units_of(analysis, 1)].all()
    assert [g.producers for g in analysis.groups] == [[1]]


def test_shortcut_couples_channels():
    graph = model(conv(8, 3), conv(8, 3), section("shortcut", **{"from": -2}), conv(4, 1))
    analysis = analyse(graph)
    assert units_of(analysis, 0) == units_of(analysis, 1) == units_of(analysis, 2)
    (group,) = [g for g in analysis.groups if 0 in g.producers]
    assert group.producers == [0, 1] and group.shortcut_coupled and group.size == 8
    assert all(unit == {0: [k], 1: [k]} for k, unit in enumerate(group.units))


def test_shortcut_with_a_narrower_from_couples_its_width_only():
    """out = previous (8) + from (4) on the first 4 channels: those are coupled, the other 4 are free."""
    graph = model(conv(4, 3), conv(8, 3), section("shortcut", **{"from": -2}), conv(4, 1))
    analysis = analyse(graph)
    a, b, out = units_of(analysis, 0), units_of(analysis, 1), units_of(analysis, 2)
    assert b[:4] == a and out == b
    assert len(set(b[4:]) | set(a)) == 8
    assert analysis.unit_prunable[b].all()
    producers = sorted(g.producers for g in analysis.groups if 1 in g.producers)
    assert producers == [[0, 1], [1]]


def test_shortcut_with_a_wider_from_fixes_the_channels_it_ignores():
    """out = previous (4) + from (8): from's last 4 channels are read by nobody through the sum and stay."""
    graph = model(conv(8, 3), conv(4, 3), section("shortcut", **{"from": -2}), conv(4, 1))
    analysis = analyse(graph)
    a, b = units_of(analysis, 0), units_of(analysis, 1)
    assert a[:4] == b
    assert analysis.unit_prunable[b].all()
    assert not analysis.unit_prunable[a[4:]].any()


@pytest.mark.parametrize("widths", [(8, 8), (4, 8), (8, 4)], ids=["equal", "from-wider", "from-narrower"])
def test_shortcut_widths_survive_pruning(widths):
    w_from, w_prev = widths
    graph = model(conv(w_from, 3), conv(w_prev, 3), section("shortcut", **{"from": -2}), conv(6, 1), dead=0.4)
    result = prune(graph, "shortcut", threshold=1e-9)
    assert result.selection.achieved_ratio > 0
    assert compare_with_reference(result) < EXACT


def test_route_concatenates_in_the_order_written():
    graph = model(conv(4, 3), conv(6, 3), section("route", layers="-1,-2"), conv(5, 1))
    analysis = analyse(graph)
    assert units_of(analysis, 2) == units_of(analysis, 1) + units_of(analysis, 0)
    assert analysis.input_units[3][0].tolist() == units_of(analysis, 2)


def test_route_consumer_keeps_the_right_input_columns():
    """A conv after a concatenation loses exactly the weight columns of the removed channels, at the offsets
    of their source in the concatenation."""
    graph = model(conv(4, 3), conv(6, 3), section("route", layers="-1,0"), conv(5, 1, bn=0, act="linear"))
    set_bn(graph, 0, [1, 2])  # dead: γ = β = 0
    set_bn(graph, 1, [0, 5])
    result = prune(graph, "normal", threshold=1e-9)
    assert result.kept_channels[0] == [0, 3] and result.kept_channels[1] == [1, 2, 3, 4]
    columns = [1, 2, 3, 4] + [6 + 0, 6 + 3]  # route = (layer 1, layer 0)
    np.testing.assert_array_equal(
        result.pruned.layers[3].weights["weights"], graph.layers[3].weights["weights"][:, columns]
    )
    assert compare_with_reference(result) < EXACT


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_route_couples_its_slices(groups):
    """route groups=G group_id=g reads slice g of its source; every slice must keep the same width, so
    channel k of each slice is one unit."""
    graph = model(conv(8, 3), section("route", layers=-1, groups=groups, group_id=1), conv(4, 3), dead=0.3)
    analysis = analyse(graph)
    source = np.array(units_of(analysis, 0)).reshape(groups, 8 // groups)
    assert (source == source[0]).all()
    assert units_of(analysis, 1) == source[1].tolist()
    (group,) = [g for g in analysis.groups if 0 in g.producers]
    assert group.size == 8 // groups
    assert all(len(unit[0]) == groups for unit in group.units)

    set_bn(graph, 0, [0, 8 // groups], gamma=0.0, beta=0.0)  # channel 0 of the first two slices: dead...
    result = prune(graph, "normal", threshold=1e-9)
    if groups == 2:  # ...which, with 2 slices, is the whole unit 0
        assert result.kept_channels[0] == [1, 2, 3, 5, 6, 7]
    width = result.pruned.layers[0].filters
    assert width % groups == 0 and result.pruned.layers[1].out_shape[0] == width // groups
    assert compare_with_reference(result) < EXACT


@pytest.mark.parametrize(
    "layer",
    [
        section("maxpool", size=2, stride=2),
        section("maxpool", size=3, stride=1),
        section("local_avgpool", size=2, stride=2),
        section("upsample", stride=2),
        section("avgpool"),
        section("dropout", probability=0.5),
        section("batchnorm"),
        section("activation", activation="mish"),
    ],
    ids=[
        "maxpool",
        "maxpool-s1",
        "local_avgpool",
        "upsample",
        "avgpool",
        "dropout",
        "batchnorm",
        "activation",
    ],
)
def test_pass_through_layers_keep_units(layer):
    graph = model(conv(6, 3), layer, conv(4, 1), dead=0.5)
    analysis = analyse(graph)
    assert units_of(analysis, 1) == units_of(analysis, 0)
    assert analysis.unit_prunable[units_of(analysis, 0)].all()
    result = prune(graph, "normal", threshold=1e-9)
    assert result.pruned.layers[1].out_shape[0] == result.pruned.layers[0].filters == 3
    folded = isinstance(graph.layers[1], L.BatchNorm)  # BN of a dead channel outputs β − γ·μ/σ ≠ 0
    assert compare_with_reference(result) < (FOLDED if folded else EXACT)


def test_maxpool_depth_mixes_channels():
    graph = model(conv(6, 3), section("maxpool", maxpool_depth=1, out_channels=2), conv(4, 1))
    analysis = analyse(graph)
    assert not analysis.unit_prunable[units_of(analysis, 0)].any()


SPP = [
    conv(8, 1),  # 0
    section("maxpool", size=5, stride=1),  # 1
    section("route", layers=-2),  # 2
    section("maxpool", size=9, stride=1),  # 3
    section("route", layers=-4),  # 4
    section("maxpool", size=13, stride=1),  # 5
    section("route", layers="-1,-3,-5,-6"),  # 6: (pool13, pool9, pool5, conv)
    conv(6, 1, bn=0, act="linear"),  # 7
]


def test_spp_reads_one_source_at_four_offsets():
    graph = model(*SPP)
    analysis = analyse(graph)
    assert units_of(analysis, 6) == units_of(analysis, 0) * 4
    set_bn(graph, 0, [2, 5])
    result = prune(graph, "normal", threshold=1e-9)
    assert result.pruned.layers[6].out_shape[0] == 4 * 6
    columns = [k + 8 * block for block in range(4) for k in (0, 1, 3, 4, 6, 7)]
    np.testing.assert_array_equal(
        result.pruned.layers[7].weights["weights"], graph.layers[7].weights["weights"][:, columns]
    )
    assert compare_with_reference(result) < EXACT


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_couples_input_and_output(multiplier):
    graph = model(conv(8, 1), conv(8 * multiplier, 3, groups=8), conv(4, 1))
    analysis = analyse(graph)
    source = units_of(analysis, 0)
    assert units_of(analysis, 1) == [source[f // multiplier] for f in range(8 * multiplier)]
    set_bn(graph, 0, [1, 6])
    set_bn(
        graph,
        1,
        [multiplier * 1 + k for k in range(multiplier)] + [multiplier * 6 + k for k in range(multiplier)],
    )
    result = prune(graph, "normal", threshold=1e-9)
    dw = result.pruned.layers[1]
    assert dw.in_shape[0] == 6 and dw.groups == 6 and dw.filters == 6 * multiplier
    assert compare_with_reference(result) < EXACT


def test_grouped_conv_prunes_the_same_offsets_in_every_group():
    graph = model(conv(8, 1), conv(6, 3, groups=2), conv(4, 1))
    analysis = analyse(graph)
    inputs, outs = units_of(analysis, 0), units_of(analysis, 1)
    assert inputs[:4] == inputs[4:] and outs[:3] == outs[3:]
    set_bn(graph, 0, [2, 6])
    set_bn(graph, 1, [0, 3])
    result = prune(graph, "normal", threshold=1e-9)
    grouped = result.pruned.layers[1]
    assert grouped.in_shape[0] == 6 and grouped.filters == 4 and grouped.groups == 2
    assert compare_with_reference(result) < EXACT


def test_scale_channels_couples_factors_and_features():
    graph = model(
        conv(8, 3),  # 0: features
        section("avgpool"),  # 1
        conv(8, 1, act="logistic"),  # 2: one factor per channel
        section("scale_channels", **{"from": -3}),  # 3
        conv(4, 1),  # 4
        dead=0.3,
    )
    analysis = analyse(graph)
    assert units_of(analysis, 2) == units_of(analysis, 0) == units_of(analysis, 3)
    (group,) = [g for g in analysis.groups if 0 in g.producers]
    assert group.producers == [0, 2] and not group.shortcut_coupled
    set_bn(graph, 0, [3])
    set_bn(graph, 2, [3])
    result = prune(graph, "normal", threshold=1e-9)
    assert 3 not in result.kept_channels[0] and result.kept_channels[0] == result.kept_channels[2]
    assert compare_with_reference(result) < EXACT


def test_scale_channels_per_pixel_fixes_the_factor_map():
    graph = model(
        conv(8, 3), conv(1, 1, act="logistic"), section("scale_channels", **{"from": -2}, scale_wh=1)
    )
    analysis = analyse(graph)
    assert units_of(analysis, 2) == units_of(analysis, 0)
    assert not analysis.unit_prunable[units_of(analysis, 1)].any()
    assert analysis.unit_prunable[units_of(analysis, 0)].all()


def test_sam_couples_both_operands():
    graph = model(
        conv(8, 3), conv(8, 1, act="logistic"), section("sam", **{"from": -2}), conv(4, 1), dead=0.3
    )
    analysis = analyse(graph)
    assert units_of(analysis, 0) == units_of(analysis, 1) == units_of(analysis, 2)
    set_bn(graph, 0, [5])
    set_bn(graph, 1, [5])
    result = prune(graph, "normal", threshold=1e-9)
    assert 5 not in result.kept_channels[1]
    assert compare_with_reference(result) < EXACT


def test_reorg3d_repeats_its_input_channels_in_stride_squared_blocks():
    """reorg3d stride=s: output channel k holds input channel k mod C (block offset is the major part)."""
    graph = model(conv(4, 3), section("reorg3d", stride=2), conv(4, 1))
    analysis = analyse(graph)
    source = units_of(analysis, 0)
    assert units_of(analysis, 1) == [source[k % 4] for k in range(16)]
    set_bn(graph, 0, [2])
    result = prune(graph, "normal", threshold=1e-9)
    assert result.pruned.layers[1].out_shape[0] == 12
    assert compare_with_reference(result) < EXACT


HEAD_CASES = {
    "yolo": [
        conv(8, 3),
        conv(3 * 6, 1),
        section("yolo", mask="0,1,2", anchors="1,1,2,2,3,3", classes=1, num=3),
    ],
    "region": [conv(8, 3), conv(2 * 6, 1), section("region", anchors="1,1,2,2", classes=1, num=2, coords=4)],
    "softmax": [conv(8, 3), conv(5, 1), section("avgpool"), section("softmax")],
    "connected": [conv(8, 3), conv(5, 1), section("connected", output=3, activation="linear")],
}


@pytest.mark.parametrize("name", sorted(HEAD_CASES))
def test_head_inputs_are_never_pruned(name):
    graph = model(*HEAD_CASES[name], size=8, dead=0.5, head=False)
    analysis = analyse(graph)
    assert analysis.unit_prunable[units_of(analysis, 0)].all()
    assert not analysis.unit_prunable[units_of(analysis, 1)].any()
    assert all(1 not in g.producers for g in analysis.groups)
    result = prune(graph, "shortcut", threshold=1e-9)
    assert result.pruned.layers[1].filters == graph.layers[1].filters
    assert compare_with_reference(result) < EXACT


# -- the rules against the real data flow --------------------------------------------------------------------
RECIPES = {
    "shortcut-narrow-from": [conv(4, 3), conv(8, 3), section("shortcut", **{"from": -2})],
    "shortcut-wide-from": [conv(8, 3), conv(4, 3), section("shortcut", **{"from": -2})],
    "shortcut-3-inputs": [conv(8, 3), conv(8, 3), conv(8, 1), section("shortcut", **{"from": "-2,-3"})],
    "grouped-route": [conv(8, 3), section("route", layers=-1, groups=2, group_id=1), conv(4, 3)],
    "spp": SPP[:-1],
    "depthwise": [conv(8, 1), conv(16, 3, groups=8), conv(4, 1)],
    "grouped-conv": [conv(8, 1), conv(6, 3, groups=2)],
    # (factors with act(0) = 0 here, so that a dead unit is zero on both sides of the product)
    "scale-channels": [conv(8, 3), section("avgpool"), conv(8, 1), section("scale_channels", **{"from": -3})],
    "sam": [conv(8, 3), conv(8, 1), section("sam", **{"from": -2})],
    "reorg3d": [conv(4, 3), section("reorg3d", stride=2), conv(4, 1)],
    "pools": [
        conv(6, 3),
        section("maxpool", size=2, stride=2),
        section("upsample", stride=2),
        section("local_avgpool", size=3, stride=1),
    ],
    "csp": [
        conv(8, 3),  # 0
        section("route", layers=-1, groups=2, group_id=1),  # 1
        conv(4, 3),  # 2
        conv(4, 3),  # 3
        section("route", layers="-1,-2"),  # 4
        conv(8, 1),  # 5
        section("route", layers="-6,-1"),  # 6
        section("maxpool", size=2, stride=2),  # 7
        conv(8, 1),  # 8
        conv(8, 3),  # 9
        section("shortcut", **{"from": -2}),  # 10
        section("upsample", stride=2),  # 11
        section("route", layers="-1,5"),  # 12
    ],
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_dead_unit_is_zero_exactly_where_the_analysis_says(name):
    """Switch off every producer channel of one unit (γ = β = 0, so each outputs leaky(0) = 0) and run the
    network: every channel the analysis labels with that unit, in every layer, is then exactly zero, and no
    other channel is. This checks each coupling rule against what the layers really compute."""
    graph = model(*RECIPES[name])
    analysis = analyse(graph)
    everything = list(range(len(graph.layers)))
    x = random_input(graph)
    prunable = np.flatnonzero(analysis.unit_prunable)
    assert len(prunable) > 0
    for unit in prunable:
        dead = graph.clone()
        for group in analysis.groups:
            for members in group.units:
                if analysis.output_units[next(iter(members))][next(iter(members.values()))[0]] == unit:
                    for producer, channels in members.items():
                        set_bn(dead, producer, channels)
        values = outputs(dead, x, keep=everything)
        for index, value in enumerate(values[:-1]):  # the last layer is the fixed-width output conv
            labels = analysis.output_units[index]
            zero = np.all(value[0] == 0, axis=(1, 2))
            assert (zero == (labels == unit)).all(), (
                f"unit {unit}: layer {index} [{graph.layers[index].kind}] channels {np.flatnonzero(zero)} "
                f"are zero, the analysis says {np.flatnonzero(labels == unit)}"
            )


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("method", ["normal", "shortcut", "slim", "regular"])
def test_removing_dead_units_changes_nothing(name, method):
    graph = model(*RECIPES[name], dead=0.4)
    if method == "normal" and all(g.shortcut_coupled for g in analyse(graph).groups):
        with pytest.raises(UsageError, match="no channels that this method can prune"):
            prune(graph, method, threshold=1e-9)
        return
    result = prune(graph, method, threshold=1e-9, round_to=2)
    assert result.border_layers == []
    assert compare_with_reference(result) < EXACT


# ============================================================================================================
# Compensation: a removed channel's constant output folded into its consumers
# ============================================================================================================
def live_removal(graph: Graph, method: str = "normal", percent: float = 0.5) -> PruneResult:
    """Prune live channels (no γ is 0): their constant act(β) must be compensated."""
    result = prune(graph, method, percent=percent)
    removed = check_kept_channels(result)
    betas = [graph.layers[i].weights["biases"][c] for i, c in removed.items() if c]
    assert betas and np.abs(np.concatenate(betas)).min() > 0, "the test wants live (β ≠ 0) channels removed"
    return result


def interior_error(result: PruneResult, margin: int) -> tuple[float, float]:
    """(interior, whole-map) relative error of the output against the hand-masked reference; ``margin``:
    how many pixels at each border the padded consumers can reach."""
    removed = check_kept_channels(result)
    reference = masked_reference(result.original, removed)
    x = random_input(result.original)
    (ours,), (theirs,) = outputs(result.pruned, x), outputs(reference, x)
    inner = (slice(None), slice(None), slice(margin, -margin), slice(margin, -margin))
    return rel_error([ours[inner]], [theirs[inner]]), rel_error([ours], [theirs])


@pytest.mark.parametrize(
    "consumer",
    [conv(6, 1), conv(6, 1, bn=0, act="linear"), conv(6, 3, pad=0)],
    ids=["1x1-bn", "1x1-bias", "3x3-unpadded"],
)
def test_compensation_is_exact_without_padding(consumer):
    graph = model(conv(8, 3), consumer)
    result = live_removal(graph)
    assert result.border_layers == []
    assert report(result)["compensation"]["inexact_at_borders"] == []
    assert compare_with_reference(result) < FOLDED


def test_compensation_of_a_padded_consumer_is_exact_in_the_interior_only():
    graph = model(conv(8, 3), conv(6, 3), size=12)
    result = live_removal(graph)
    assert result.border_layers == [1]
    assert report(result)["compensation"]["inexact_at_borders"] == [1]
    interior, whole = interior_error(result, margin=1)
    assert interior < FOLDED
    assert whole > 1e-3  # the zero padding of the removed channels is what the compact model cannot know


@pytest.mark.parametrize(
    "path",
    [
        [section("maxpool", size=2, stride=2)],
        [section("upsample", stride=2)],
        [section("local_avgpool", size=3, stride=1)],
        [conv(4, 1), section("route", layers="-1,-2")],
        [section("reorg3d", stride=2)],
        [section("batchnorm")],
        [section("activation", activation="logistic")],
        [conv(8, 1), section("shortcut", **{"from": -2})],
        [conv(8, 1), section("shortcut", **{"from": -2}, activation="leaky")],
        [
            conv(8, 1),
            section("shortcut", **{"from": -2}, weights_type="per_channel", weights_normalization="softmax"),
        ],
        [
            conv(8, 1),
            section("shortcut", **{"from": -2}, weights_type="per_feature", weights_normalization="relu"),
        ],
        [conv(8, 1), section("sam", **{"from": -2})],
        [section("avgpool"), conv(8, 1), section("scale_channels", **{"from": -3})],
    ],
    ids=[
        "maxpool",
        "upsample",
        "local_avgpool",
        "route",
        "reorg3d",
        "batchnorm",
        "activation",
        "shortcut",
        "shortcut-leaky",
        "shortcut-per-channel-softmax",
        "shortcut-per-feature-relu",
        "sam",
        "scale_channels",
    ],
)
def test_compensation_follows_the_constant_through(path):
    """A removed channel's constant travels through pass-through layers, sums and products before a 1×1
    consumer folds it: still exact."""
    graph = model(conv(8, 3), *path, conv(6, 1), size=8)
    result = live_removal(graph, method="shortcut")
    assert result.border_layers == []
    assert compare_with_reference(result) < FOLDED


def test_grouped_consumer_folds_each_group_its_own_inputs():
    graph = model(conv(8, 3), conv(6, 1, groups=2))
    result = live_removal(graph)
    assert compare_with_reference(result) < FOLDED


def test_dead_channels_need_no_compensation_and_stay_exact_at_borders():
    graph = model(conv(8, 3), conv(6, 3), dead=0.5)
    result = prune(graph, "normal", threshold=1e-9)
    assert result.selection.achieved_ratio > 0
    assert result.border_layers == []
    assert compare_with_reference(result) < EXACT


def test_an_antialiased_producer_is_reported_inexact_at_borders():
    graph = model(conv(8, 3, antialiasing=1), conv(6, 1), size=12)
    result = live_removal(graph)
    interior, whole = interior_error(result, margin=1)
    assert interior < FOLDED
    assert whole < FOLDED or result.border_layers, f"error {whole:.2g} at the borders, none reported"


def test_logistic_dead_channels_output_one_half():
    """γ = β = 0 does not make a logistic channel zero: it outputs 0.5, which must be compensated, and a
    padded consumer is then inexact at its borders like for any non-zero constant."""
    graph = model(
        conv(8, 3, act="logistic"), conv(6, 1), conv(6, 3), section("route", layers="-1,-2"), conv(4, 1)
    )
    set_bn(graph, 0, [1, 4, 6])
    result = prune(graph, "normal", threshold=1e-9)
    assert result.kept_channels[0] == [0, 2, 3, 5, 7]
    assert result.border_layers == []  # only layer 1 (1×1) reads layer 0
    assert compare_with_reference(result) < FOLDED

    graph = model(conv(8, 3, act="logistic"), conv(6, 3), size=12)
    set_bn(graph, 0, [1, 4, 6])
    result = prune(graph, "normal", threshold=1e-9)
    assert result.border_layers == [1]
    interior, whole = interior_error(result, margin=1)
    assert interior < FOLDED and whole > 1e-3


# ============================================================================================================
# Selection: strategies, guards, the bound and the achieved ratio
# ============================================================================================================
GUARDED = [
    conv(8, 3),  # 0
    conv(8, 1),  # 1
    section("shortcut", **{"from": -2}),  # 2: 0 and 1 coupled
    conv(24, 1),  # 3
    conv(12, 3),  # 4
    section("route", layers="-1,-2"),  # 5
    conv(16, 1),  # 6
    section("route", layers=-1, groups=2, group_id=0),  # 7
    conv(10, 3),  # 8
]


def guarded(dead: float = 0.0) -> Graph:
    return model(*GUARDED, size=8, dead=dead)


def candidate_groups(analysis: ChannelAnalysis, method: str) -> list:
    return [g for g in analysis.groups if method != "normal" or not g.shortcut_coupled]


def unit_weight(group) -> list[int]:
    """Producer channels each unit of a group stands for."""
    return [sum(len(channels) for channels in unit.values()) for unit in group.units]


def kept_units_per_group(result: PruneResult, method: str) -> list[tuple[int, int]]:
    """(kept, size) per candidate group, read from the compact model's widths via kept_channels."""
    analysis = result.analysis
    found = []
    for group in candidate_groups(analysis, method):
        kept = 0
        for unit in group.units:
            producer, channels = next(iter(unit.items()))
            kept += channels[0] in result.kept_channels[producer]
        found.append((kept, group.size))
    return found


@pytest.mark.parametrize("method", ["normal", "shortcut", "slim", "regular"])
@pytest.mark.parametrize("request_", [{"percent": 0.99}, {"threshold": 1e9}], ids=["percent", "threshold"])
def test_force_never_empties_a_layer(method, request_):
    """In this model every group is whole convs, so no group may be emptied either."""
    graph = guarded()
    result = prune(graph, method, force=True, round_to=4, **request_)
    for kept, size in kept_units_per_group(result, method):
        assert kept >= 1
        if method == "regular":
            assert kept % 4 == 0 or kept == size
    assert all(layer.out_shape[0] >= 1 for layer in result.pruned.layers)
    check_kept_channels(result)
    outputs(result.pruned, random_input(graph))  # the compact model runs


@pytest.mark.parametrize("method", ["normal", "shortcut", "slim", "regular"])
def test_the_ratio_bound_is_the_largest_safe_ratio(method):
    """ratio_bound = share of candidate channels whose unit scores below the lowest conv maximum (removing
    all of those leaves every conv its best unit; in this model every other layer holds a whole conv);
    computed here from the γ themselves."""
    graph = guarded()
    result = prune(graph, method, percent=0.1)
    analysis = result.analysis
    groups = candidate_groups(analysis, method)
    gamma = {
        p.index: np.abs(np.asarray(p.weights["scales"], dtype=np.float64)) for p in producer_convs(graph)
    }
    scores = [[max(gamma[p][c].max() for p, c in unit.items()) for unit in g.units] for g in groups]
    best_of_conv: dict[int, float] = {}
    for group, group_scores in zip(groups, scores, strict=True):
        for unit, score in zip(group.units, group_scores, strict=True):
            for p in unit:
                best_of_conv[p] = max(best_of_conv.get(p, 0.0), score)
    bound = min(best_of_conv.values())
    weights = [w for g in groups for w in unit_weight(g)]
    flat = [s for group_scores in scores for s in group_scores]
    expected = sum(w for w, s in zip(weights, flat, strict=True) if s < bound) / sum(weights)
    assert result.selection.threshold_bound == pytest.approx(bound, rel=1e-6)
    assert result.selection.ratio_bound == pytest.approx(expected, abs=1e-12)
    assert result.selection.candidate_channels == sum(weights)

    prune(graph, method, percent=expected)  # at the bound: accepted
    prune(graph, method, threshold=bound)
    with pytest.raises(UsageError) as refused:
        prune(graph, method, percent=expected + 0.02)
    message = str(refused.value)
    assert "\n" not in message and f"{expected:.3f}" in message and "--force" in message
    with pytest.raises(UsageError, match="highest safe threshold"):
        prune(graph, method, threshold=bound * 1.01)


@pytest.mark.parametrize("method", ["normal", "shortcut", "slim", "regular"])
@pytest.mark.parametrize("percent", [0.2, 0.45])
def test_achieved_ratio_is_what_was_removed(method, percent):
    graph = guarded()
    result = prune(graph, method, percent=percent, round_to=4 if method == "regular" else 1)
    groups = candidate_groups(result.analysis, method)
    candidates = sum(sum(unit_weight(g)) for g in groups)
    removed = sum(
        layer.filters - result.pruned.layers[layer.index].filters for layer in producer_convs(graph)
    )
    assert result.selection.candidate_channels == candidates
    assert result.selection.achieved_ratio == pytest.approx(removed / candidates, abs=1e-12)
    assert report(result)["achieved_ratio"] == result.selection.achieved_ratio
    if method in ("normal", "shortcut"):  # no floor or rounding: the request is met to within one unit
        assert (
            abs(result.selection.achieved_ratio - percent)
            <= max(max(unit_weight(g)) for g in groups) / candidates
        )


# conv 1 (16) + conv 0 (12): channels 0-11 of conv 1 are coupled with conv 0, channels 12-15 are its own, so
# conv 1 lies in two groups (yolov3-tiny-prn's and csresnext50's pattern).
SPLIT = [conv(12, 3), conv(16, 3), section("shortcut", **{"from": -2}), conv(8, 1)]


def test_a_conv_split_between_groups_counts_once():
    graph = model(*SPLIT, size=8)
    result = prune(graph, "shortcut", percent=0.25)
    removed = sum(
        layer.filters - result.pruned.layers[layer.index].filters for layer in producer_convs(graph)
    )
    assert result.selection.candidate_channels == 12 + 16 + 8
    assert result.selection.achieved_ratio == pytest.approx(removed / 36, abs=1e-12)
    assert abs(result.selection.achieved_ratio - 0.25) <= 2 / 36  # a coupled unit is 2 channels
    # the bound from the γ: conv 0's best coupled unit or conv 3's best channel, whichever is lower
    gamma = [np.abs(np.asarray(graph.layers[i].weights["scales"], dtype=np.float64)) for i in (0, 1, 3)]
    coupled = np.maximum(gamma[0], gamma[1][:12])
    bound = min(coupled.max(), gamma[2].max())
    below = 2 * (coupled < bound).sum() + (gamma[1][12:] < bound).sum() + (gamma[2] < bound).sum()
    assert result.selection.threshold_bound == pytest.approx(bound, rel=1e-6)
    assert result.selection.ratio_bound == pytest.approx(below / 36, abs=1e-12)


@pytest.mark.parametrize(
    ("method", "options"),
    [("shortcut", {}), ("slim", {"layer_keep": 0.5}), ("regular", {"round_to": 4})],
)
def test_a_dead_part_of_a_conv_can_be_removed(method, options):
    """A group that is only part of a conv may be emptied: the conv keeps its other channels."""
    graph = model(*SPLIT, size=8)
    set_bn(graph, 1, [12, 13, 14, 15])  # conv 1's own (uncoupled) channels: all dead
    result = prune(graph, method, threshold=1e-9, **options)
    assert [result.pruned.layers[i].filters for i in (0, 1, 3)] == [12, 12, 8]
    assert compare_with_reference(result) < EXACT


def test_a_group_that_is_a_whole_layer_is_never_emptied():
    """Emptying the coupled group would empty conv 0 (every one of its channels is in it): refused, and with
    --force the best unit stays."""
    graph = model(*SPLIT, size=8)
    set_bn(graph, 0, list(range(12)))  # the coupled group: all dead
    set_bn(graph, 1, list(range(12)))
    set_bn(graph, 1, [13, 14, 15])  # conv 1's own channels: one live (12), the rest dead
    with pytest.raises(UsageError, match="would empty a layer"):
        prune(graph, "shortcut", threshold=1e-9)
    result = prune(graph, "shortcut", threshold=1e-9, force=True)
    assert [result.pruned.layers[i].filters for i in (0, 1)] == [1, 2]
    assert result.kept_channels[0] == [0] and result.kept_channels[1] == [0, 12]
    assert compare_with_reference(result) < EXACT


@pytest.mark.parametrize("method", ["normal", "shortcut"])
def test_percent_removes_the_lowest_scoring_units(method):
    graph = guarded()
    result = prune(graph, method, percent=0.3)
    scores = unit_scores(result.analysis)
    keep = result.keep_unit
    units = np.concatenate(
        [group_units(result.analysis, g) for g in candidate_groups(result.analysis, method)]
    )
    assert (~keep[units]).any()
    assert scores[units][~keep[units]].max() <= scores[units][keep[units]].min()


def test_threshold_removes_exactly_the_units_below_it():
    graph = guarded()
    threshold = 1.0
    result = prune(graph, "shortcut", threshold=threshold, force=True)
    scores = unit_scores(result.analysis)
    units = np.flatnonzero(result.analysis.unit_prunable)
    kept_by_floor = [kept == 1 for kept, _ in kept_units_per_group(result, "shortcut")]
    assert not any(kept_by_floor) or result.selection.threshold_bound < threshold
    below = scores[units] < threshold
    assert ((~result.keep_unit[units]) <= below).all()  # nothing at or above the threshold is removed
    if result.selection.threshold_bound >= threshold:
        assert ((~result.keep_unit[units]) == below).all()


def test_normal_leaves_shortcut_coupled_convs_alone():
    graph = guarded()
    result = prune(graph, "normal", percent=0.4)
    assert result.pruned.layers[0].filters == 8 and result.pruned.layers[1].filters == 8
    assert result.pruned.layers[3].filters < 24
    result = prune(graph, "shortcut", percent=0.4)
    assert result.pruned.layers[0].filters == result.pruned.layers[1].filters < 8


@pytest.mark.parametrize("layer_keep", [0.25, 0.5])
@pytest.mark.parametrize("sections", [GUARDED, SPLIT], ids=["guarded", "split"])
def test_slim_keeps_the_layer_keep_share_of_every_layer(layer_keep, sections):
    graph = model(*sections, size=8)
    result = prune(graph, "slim", percent=0.95, layer_keep=layer_keep, force=True)
    for layer in producer_convs(graph):
        assert result.pruned.layers[layer.index].filters >= math.ceil(layer_keep * layer.filters)
    assert compare_with_reference(result) > 0  # live channels removed; the model still runs


@pytest.mark.parametrize("round_to", [4, 8])
def test_regular_widths_are_multiples_of_round_to(round_to):
    graph = model(conv(24, 3), conv(16, 1), conv(20, 1), conv(12, 3), size=8)
    result = prune(graph, "regular", percent=0.5, round_to=round_to)
    for layer in producer_convs(graph):
        width = result.pruned.layers[layer.index].filters
        assert width % round_to == 0 or width == layer.filters, (layer.index, width)
    assert [result.pruned.layers[i].filters for i in range(4)] != [24, 16, 20, 12]


def test_regular_width_of_a_conv_split_between_groups():
    """Two groups share conv 1: rounding each group (8 + 4) would give it 12 channels; it is rounded as a
    whole."""
    graph = model(*SPLIT, size=8)
    result = prune(graph, "regular", percent=0.5, round_to=8)
    widths = [result.pruned.layers[i].filters for i in (0, 1)]
    assert widths[0] < 12  # something was pruned
    assert all(w % 8 == 0 or w == full for w, full in zip(widths, (12, 16), strict=True)), widths
    check_kept_channels(result)
    outputs(result.pruned, random_input(graph))  # the compact model runs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "magic", "percent": 0.1}, "unknown method 'magic'"),
        ({"method": "slim", "percent": 0.1, "criterion": "hessian"}, "unknown criterion 'hessian'"),
        ({"method": "slim"}, "exactly one of --percent and --threshold"),
        ({"method": "slim", "percent": 0.1, "threshold": 0.1}, "exactly one of --percent and --threshold"),
        ({"method": "slim", "percent": 1.0}, r"--percent must be in \[0, 1\)"),
        ({"method": "slim", "percent": -0.1}, r"--percent must be in \[0, 1\)"),
        ({"method": "layer"}, "needs --shortcuts"),
        ({"method": "layer-channel", "percent": 0.1}, "needs --shortcuts"),
    ],
)
def test_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        prune(guarded(), **kwargs)


def test_pruning_needs_weights():
    graph = loads_cfg(net(8) + conv(8, 3) + OUTPUT, warn=quiet)
    with pytest.raises(UsageError, match=r"needs weights: layer 0 \[convolutional\]"):
        prune(graph, "slim", percent=0.1)


# ============================================================================================================
# Criteria
# ============================================================================================================
def independent_channel_scores(layer: L.Convolutional, criterion: str) -> np.ndarray:
    w = np.asarray(layer.weights["weights"], dtype=np.float64).reshape(layer.filters, -1)
    gamma = np.abs(np.asarray(layer.weights["scales"], dtype=np.float64))
    return {
        "bn-gamma": gamma,
        "l1": np.abs(w).sum(axis=1),
        "l2": np.sqrt((w**2).sum(axis=1)),
        "bn-gamma-l1": gamma * np.abs(w).sum(axis=1),
    }[criterion]


@pytest.mark.parametrize("criterion", ["bn-gamma", "l1", "l2", "bn-gamma-l1"])
def test_unit_score_is_the_best_member_score(criterion):
    graph = guarded()
    analysis = analyse(graph)
    scores = unit_scores(analysis, criterion, normalize="none")  # raw scores (normalised: test_plan.py)
    for group in analysis.groups:
        for unit in group.units:
            expected = max(
                independent_channel_scores(graph.layers[p], criterion)[c].max() for p, c in unit.items()
            )
            producer, channels = next(iter(unit.items()))
            assert scores[analysis.output_units[producer][channels[0]]] == pytest.approx(expected, rel=1e-12)
    assert np.isneginf(scores[~analysis.unit_prunable]).all()


def test_criteria_choose_differently():
    """γ says channel 0 is the weakest, the filters' norms say channel 1 is."""
    graph = model(conv(4, 3), conv(4, 1), size=8)
    layer = graph.layers[0]
    tensors = {name: np.array(a) for name, a in layer.weights.items()}
    tensors["scales"][:] = [0.2, 1.0, 1.1, 1.2]
    tensors["weights"][1] *= 0.01
    layer.weights = tensors
    set_bn(graph, 1, [0, 1, 2, 3], gamma=100.0, beta=None)  # never the weakest, by any criterion
    graph.layers[1].weights["weights"] = np.asarray(graph.layers[1].weights["weights"]) * 100
    one_unit = 1 / 8
    assert prune(graph, "normal", percent=one_unit, criterion="bn-gamma").kept_channels[0] == [1, 2, 3]
    assert prune(graph, "normal", percent=one_unit, criterion="l1").kept_channels[0] == [0, 2, 3]
    assert prune(graph, "normal", percent=one_unit, criterion="l2").kept_channels[0] == [0, 2, 3]
    assert prune(graph, "normal", percent=one_unit, criterion="bn-gamma-l1").kept_channels[0] == [0, 2, 3]


def test_random_criterion_is_seeded():
    graph = guarded()
    first = prune(graph, "shortcut", percent=0.4, criterion="random", seed=3).kept_channels
    again = prune(guarded(), "shortcut", percent=0.4, criterion="random", seed=3).kept_channels
    other = prune(graph, "shortcut", percent=0.4, criterion="random", seed=4).kept_channels
    assert first == again
    assert first != other
    scores = unit_scores(analyse(graph), "random", seed=3)
    finite = scores[np.isfinite(scores)]
    assert ((finite >= 0) & (finite < 1)).all()


# ============================================================================================================
# Determinism
# ============================================================================================================
@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "slim", "percent": 0.3},
        {"method": "regular", "percent": 0.3, "round_to": 4},
        {"method": "shortcut", "percent": 0.3, "criterion": "random", "seed": 7},
    ],
    ids=["slim", "regular", "random"],
)
def test_same_inputs_give_the_same_bytes(tmp_path, kwargs):
    written = []
    for attempt in ("a", "b"):
        result = prune(guarded(dead=0.2), **kwargs)
        folder = tmp_path / attempt
        folder.mkdir()
        write_cfg(result.pruned, folder / "pruned.cfg")
        write_weights(result.pruned, folder / "pruned.weights")
        written.append([(folder / name).read_bytes() for name in ("pruned.cfg", "pruned.weights")])
    assert written[0] == written[1]
    assert len(written[0][1]) < (tmp_path / "a" / "pruned.weights").stat().st_size + 1  # sanity: not empty


# ============================================================================================================
# Layer pruning: residual units x + f(x)
# ============================================================================================================
RESIDUAL = [
    conv(8, 3),  # 0
    conv(4, 1),  # 1   unit A (x = 0)
    conv(8, 3),  # 2
    section("shortcut", **{"from": -3}),  # 3
    conv(4, 1),  # 4   unit B (x = 3)
    conv(8, 3),  # 5
    section("shortcut", **{"from": -3}),  # 6
    conv(4, 1),  # 7   unit C (x = 6), written with an absolute from=
    conv(8, 3),  # 8
    section("shortcut", **{"from": 6}),  # 9
    conv(8, 3),  # 10
    section("route", layers="3,-2"),  # 11: absolute → A's sum, relative → C's sum
    conv(8, 1),  # 12
    section("route", layers="-3,6"),  # 13: relative → 10, absolute → B's sum
    conv(8, 3),  # 14
    conv(4, 1),  # 15  unit D (x = 14), alone in its stage
    conv(8, 3),  # 16
    section("shortcut", **{"from": -3}),  # 17
]


def residual_model(dead: float = 0.0) -> Graph:
    """RESIDUAL with units A and B the weakest removable ones (D is weaker, but alone in its stage)."""
    graph = model(*RESIDUAL, size=8, dead=dead)
    for index, factor in ((2, 0.1), (5, 0.2), (16, 0.01)):
        layer = graph.layers[index]
        layer.weights = {**layer.weights, "scales": np.asarray(layer.weights["scales"]) * np.float32(factor)}
    return graph


def without_units(graph: Graph, shortcuts: list[int]) -> Graph:
    """The reference for layer pruning: the keep-size graph where each removed unit's body adds exactly zero
    (its last batch-normalised conv gets γ = β = 0, so it outputs act(0) = 0 for leaky/mish/swish/relu/linear,
    and whatever follows it in the body maps 0 to 0)."""
    reference = graph.clone()
    units = {unit.shortcut.index: unit for unit in residual_units(graph)}
    for index in shortcuts:
        body = units[index].body
        last = max(
            i for i, layer in enumerate(body) if isinstance(layer, L.Convolutional) and layer.batch_normalize
        )
        assert all(isinstance(layer, L.Dropout | L.Empty) for layer in body[last + 1 :]), (
            "body does not end in a conv"
        )
        conv_layer = body[last]
        assert conv_layer.activation in ("leaky", "mish", "swish", "relu", "relu6", "linear")
        set_bn(reference, conv_layer.index, list(range(conv_layer.filters)))
    return reference


def removed_layers(graph: Graph, shortcuts: list[int]) -> set[int]:
    units = {unit.shortcut.index: unit for unit in residual_units(graph)}
    return {layer.index for index in shortcuts for layer in units[index].layers}


def check_rewired(original: Graph, removed: set[int], pruned: Graph) -> None:
    """Every input edge of the layer-pruned graph (``pruned``, e.g. reloaded from the written cfg) points at
    the copy of the layer it pointed at before, or, where that layer was removed, at what the removed unit
    passed on (its input x, followed through removed units)."""
    kept = [layer for layer in original.layers if layer.index not in removed]
    assert len(kept) == len(pruned.layers)
    position = {layer.index: i for i, layer in enumerate(kept)}

    def survivor(node) -> int:
        while node is not original.net and node.index in removed:
            node = node.inputs[0]
        return -1 if node is original.net else position[node.index]

    for old, new in zip(kept, pruned.layers, strict=True):
        assert new.kind == old.kind
        assert [pruned.index_of(node) for node in new.inputs] == [survivor(node) for node in old.inputs], (
            f"layer {old.index} [{old.kind}] now at {new.index}"
        )


def test_residual_units_and_stages():
    units = residual_units(residual_model())
    assert [u.shortcut.index for u in units] == [3, 6, 9, 17]
    assert [[layer.index for layer in u.body] for u in units] == [[1, 2], [4, 5], [7, 8], [15, 16]]
    assert [u.source.index for u in units] == [0, 3, 6, 14]
    assert [u.stage for u in units] == [0, 0, 0, 1]


def test_layer_pruning_keeps_a_unit_per_stage():
    with pytest.raises(UsageError, match="at most 2 can be removed"):
        prune(residual_model(), "layer", shortcuts=3)


def test_layer_pruning_rewrites_absolute_and_relative_indices(tmp_path):
    graph = residual_model()
    result = prune(graph, "layer", shortcuts=2)
    assert result.removed_shortcuts == [3, 6]
    assert result.selection is None
    with pytest.raises(UsageError):
        result.masked()

    write_cfg(result.pruned, tmp_path / "pruned.cfg")
    write_weights(result.pruned, tmp_path / "pruned.weights")
    reloaded = load_cfg(tmp_path / "pruned.cfg", warn=quiet)
    read_weights(reloaded, tmp_path / "pruned.weights")
    assert reloaded.signature() == result.pruned.signature()
    check_rewired(graph, removed_layers(graph, [3, 6]), reloaded)
    # the forms the user wrote survive: relative stays relative, absolute stays absolute
    written = {
        layer.index: layer.options for layer in reloaded.layers if isinstance(layer, L.Route | L.Shortcut)
    }
    assert written == {3: {"from": "0"}, 5: {"layers": "0,-2"}, 7: {"layers": "-3,0"}, 11: {"from": "-3"}}

    x = random_input(graph)
    assert rel_error(outputs(reloaded, x), outputs(without_units(graph, [3, 6]), x)) < EXACT
    totals = report(result)["totals"]
    assert totals["layers_before"] - totals["layers_after"] == 6
    assert totals["params_after"] == reloaded.params < totals["params_before"]


def test_layer_channel_prunes_units_then_channels(tmp_path):
    graph = residual_model(dead=0.3)
    result = prune(graph, "layer-channel", shortcuts=2, threshold=1e-9)
    assert result.removed_shortcuts == [3, 6]
    assert result.selection.achieved_ratio > 0
    removed = check_kept_channels(result)  # numbered as in the layer-pruned graph
    layer_pruned = result.analysis.graph
    for index, channels in removed.items():  # only dead channels went: masking them changes nothing
        assert not np.asarray(layer_pruned.layers[index].weights["scales"])[channels].any()
        assert not np.asarray(layer_pruned.layers[index].weights["biases"])[channels].any()
    check_rewired(graph, removed_layers(graph, [3, 6]), result.pruned)
    x = random_input(graph)
    assert rel_error(outputs(result.pruned, x), outputs(without_units(graph, [3, 6]), x)) < EXACT
    rows = {row["index"]: row for row in report(result)["layers"]}
    assert all(rows[i]["removed"] for i in (1, 2, 3, 4, 5, 6))
    assert rows[7]["channels_after"] == result.pruned.layers[1].filters


def test_layer_channel_report_names_the_kept_channels_of_each_layer():
    graph = residual_model(dead=0.3)
    result = prune(graph, "layer-channel", shortcuts=2, threshold=1e-9)
    twins = {layer.line: layer for layer in result.pruned.layers}
    narrowed = 0
    for row, layer in zip(report(result)["layers"], graph.layers, strict=True):
        twin = twins.get(layer.line)
        if twin is None or not isinstance(layer, L.Convolutional) or twin.filters == layer.filters:
            assert "kept_indices" not in row, f"layer {layer.index}"
            continue
        narrowed += 1
        assert row.get("kept_indices") == kept_by_matching(layer, twin), f"layer {layer.index}"
    assert narrowed > 0


def test_layer_pruning_keeps_shared_weights():
    graph = model(
        conv(8, 3),  # 0
        conv(8, 3),  # 1: x of both units
        conv(8, 3),  # 2: body of unit 3, lends its weights to layer 6
        section("shortcut", **{"from": -2}),  # 3
        conv(8, 3),  # 4
        section("shortcut", **{"from": -2}),  # 5
        conv(8, 3, share_index=2),  # 6
        size=8,
    )
    set_bn(graph, 2, list(range(8)), gamma=0.01, beta=None)  # unit 3 is the weakest
    try:
        result = prune(graph, "layer", shortcuts=1)
    except UsageError:
        return  # refusing to remove the lender is fine
    lender = graph.layers[6].shares
    sharer = result.pruned.layers[-2]
    assert sharer.shares is not None and sharer.shares.line == lender.line, (
        f"share_index now names the layer of line {sharer.shares.line}, was line {lender.line}"
    )


def test_a_route_that_layer_pruning_merged_still_runs():
    graph = model(
        conv(8, 3),  # 0
        conv(4, 1),  # 1
        conv(8, 3),  # 2
        section("shortcut", **{"from": -3}),  # 3
        conv(4, 1),  # 4
        conv(8, 3),  # 5
        section("shortcut", **{"from": -3}),  # 6
        section("route", layers="-1,-4"),  # 7: (6, 3), both layer 3 once unit 6 is gone
        size=8,
    )
    set_bn(graph, 5, list(range(8)), gamma=0.01, beta=None)  # unit 6 is the weakest: route 7 reads (3, 3)
    result = prune(graph, "layer", shortcuts=1)
    assert result.removed_shortcuts == [6]
    route = result.pruned.layers[4]
    assert [node.index for node in route.inputs] == [3, 3]
    x = random_input(graph)
    assert rel_error(outputs(result.pruned, x), outputs(without_units(graph, [6]), x)) < EXACT
