"""Per-unit pruning plans (``cfgsurgeon.surgery.plan``): unit keys, exact per-unit widths read back from the
written cfg's ``filters=`` lines, the request checks, and the compact model against a hand-masked keep-size
reference (test_prune's float64 torch comparison)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import CFG_DIR, need_shared, quiet
from test_prune import EXACT, FOLDED, compare_with_reference, conv, model, section

from cfgsurgeon.emit.cfg import write_cfg
from cfgsurgeon.errors import UsageError
from cfgsurgeon.ir import Graph, load_cfg
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.surgery.plan import Planner, graph_cost, prunable_units, prune_units

# conv 0 (16) → conv 1 (12) → conv 2 (16) + shortcut with conv 0 → conv 4 (10) → route 1,4 → conv 6 (8);
# 1×1 consumers, so that folding the removed channels' constants is exact everywhere (no zero padding)
PLANNED = [
    conv(16, 3),
    conv(12, 1),
    conv(16, 1),
    section("shortcut", **{"from": -3}),
    conv(10, 1),
    section("route", layers="1,4"),
    conv(8, 1),
]


def filters_written(graph, path: Path) -> list[int]:
    """Every ``filters=`` value of the written cfg, in order (read as text, not through our parser)."""
    write_cfg(graph, path)
    return [int(v) for v in re.findall(r"^filters=(\d+)$", path.read_text(), flags=re.M)]


def test_units_are_named_by_their_producers():
    units = prunable_units(model(*PLANNED))
    assert [(u.key, u.producers, u.channels) for u in units] == [
        ("0+2", (0, 2), 16),
        ("1", (1,), 12),
        ("4", (4,), 10),
        ("6", (6,), 8),
    ]
    assert [u.group for u in units] == [0, 1, 2, 3]


def test_a_hand_written_plan_gives_exactly_the_requested_widths(tmp_path):
    graph = model(*PLANNED)
    # 16 · 0.25 = 4 removed; 12 · 0.5 = 6; 10 · 0.35 = 3.5 → 4 (half up); conv 6 untouched
    result = prune_units(graph, {"0+2": 0.25, "1": 0.5, "4": 0.35})
    assert filters_written(graph, tmp_path / "before.cfg") == [16, 12, 16, 10, 8, 3]
    assert filters_written(result.pruned, tmp_path / "after.cfg") == [12, 6, 12, 6, 8, 3]
    assert compare_with_reference(result) < FOLDED


def test_the_removed_channels_are_the_lowest_scoring():
    graph = model(*PLANNED)
    gamma = np.abs(np.asarray(graph.layers[1].weights["scales"], dtype=np.float64))
    result = prune_units(graph, {"1": 0.5})
    assert result.kept_channels[1] == sorted(np.argsort(gamma, kind="stable")[6:].tolist())
    assert all(len(result.kept_channels[i]) == graph.layers[i].filters for i in (0, 2, 4, 6))


def test_an_empty_plan_changes_nothing():
    graph = model(*PLANNED)
    result = prune_units(graph, {})
    assert graph_cost(result.pruned) == graph_cost(graph)
    assert compare_with_reference(result) < EXACT


def test_a_unit_always_keeps_a_channel(tmp_path):
    graph = model(*PLANNED)
    result = prune_units(graph, {"1": 0.99, "4": 0.96})  # 11.88 → 12 and 9.6 → 10 would empty them
    assert filters_written(result.pruned, tmp_path / "after.cfg") == [16, 1, 16, 1, 8, 3]


def test_unknown_units_and_bad_rates_are_refused():
    graph = model(*PLANNED)
    with pytest.raises(UsageError, match=r"unknown unit '3'.*0\+2, 1, 4, 6"):
        prune_units(graph, {"3": 0.5})
    for rate in (-0.1, 1.0):
        with pytest.raises(UsageError, match="rate of unit '1' must be in \\[0, 1\\)"):
            prune_units(graph, {"1": rate})


def test_the_same_plan_gives_the_same_model(tmp_path):
    graph = model(*PLANNED)
    plan = {"0+2": 0.4, "6": 0.5}
    first = prune_units(graph, plan, criterion="random", seed=3).pruned
    second = prune_units(graph, plan, criterion="random", seed=3).pruned
    write_cfg(first, tmp_path / "a.cfg")
    write_cfg(second, tmp_path / "b.cfg")
    assert (tmp_path / "a.cfg").read_bytes() == (tmp_path / "b.cfg").read_bytes()
    for a, b in zip(first.layers, second.layers, strict=True):
        for name, tensor in (a.weights or {}).items():
            np.testing.assert_array_equal(tensor, b.weights[name])


# -- real topologies, random weights -------------------------------------------------------------------------
ZOO_PLANNED = ["yolov4-tiny", "yolov7-tiny", "darknet53"]


@cache
def zoo_model(name: str) -> Graph:
    """A zoo cfg with seeded random weights, once per session (callers must not modify it)."""
    graph = load_cfg(need_shared(CFG_DIR / f"{name}.cfg"), warn=quiet)
    random_weights(graph, seed=0)
    return graph


def random_plan(graph: Graph, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {unit.key: float(rng.choice([0.0, 0.3, 0.5, 0.8])) for unit in prunable_units(graph)}


@pytest.mark.parametrize("name", ZOO_PLANNED)
def test_a_plan_is_costed_as_the_pruned_model_measures(name):
    """The width rule (no tensor cut) gives the params and BFLOPs of the model that prune_units builds."""
    graph = zoo_model(name)
    plan = random_plan(graph, seed=1)
    assert Planner(graph).cost_of(plan) == graph_cost(prune_units(graph, plan).pruned)
