"""Per-unit pruning plans (``cfgsurgeon.surgery.plan``): unit keys, exact per-unit widths read back from the
written cfg's ``filters=`` lines, the request checks, and the compact model against a hand-masked keep-size
reference (test_prune's float64 torch comparison)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import CFG_DIR, MODELS_DIR, REPORT, need_shared, quiet
from test_prune import EXACT, FOLDED, compare_with_reference, conv, model, section

from cfgsurgeon.emit.cfg import write_cfg
from cfgsurgeon.errors import UsageError
from cfgsurgeon.ir import Graph, load_cfg
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.surgery.criteria import unit_scores
from cfgsurgeon.surgery.groups import analyse
from cfgsurgeon.surgery.plan import Planner, graph_cost, make_plan, prunable_units, prune_units
from cfgsurgeon.surgery.prune import choose, prune, report, report_markdown
from cfgsurgeon.surgery.target import dry_run, prune_to_target
from cfgsurgeon.weights import read_weights

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


# -- width policy (round_to) for every method ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["yolov4-tiny", "darknet53"])  # darknet53: shortcut-coupled stages
@pytest.mark.parametrize("round_to", ["pow2", 16])
@pytest.mark.parametrize("method", ["normal", "shortcut", "slim", "regular"])
def test_only_widths_of_the_policy_appear(tmp_path, name, round_to, method):
    graph = zoo_model(name)
    result = prune(graph, method, percent=0.6, round_to=round_to)  # pow2 rounds 40 % of a layer up to half
    before = filters_written(graph, tmp_path / "before.cfg")
    after = filters_written(result.pruned, tmp_path / "after.cfg")
    changed = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    assert changed, "nothing was pruned: the test would prove nothing"
    for full, width in changed:
        if round_to == "pow2":
            assert width & (width - 1) == 0, (full, width)
        else:
            assert width % round_to == 0, (full, width)


def test_a_plan_keeps_to_the_width_policy(tmp_path):
    graph = zoo_model("yolov4-tiny")
    result = prune_units(graph, random_plan(graph, seed=2), round_to="pow2")
    before = filters_written(graph, tmp_path / "before.cfg")
    after = filters_written(result.pruned, tmp_path / "after.cfg")
    assert any(a != b for a, b in zip(before, after, strict=True))
    assert all(a == b or a & (a - 1) == 0 for a, b in zip(before, after, strict=True))


def test_a_bad_width_policy_is_refused():
    graph = model(*PLANNED)
    for bad in (0, "pow3", 2.5):
        with pytest.raises(UsageError, match="round_to must be a positive integer or 'pow2'"):
            prune(graph, "slim", percent=0.2, round_to=bad)


# -- criteria comparable across layers -------------------------------------------------------------------
def test_mean_normalised_scores_divide_by_the_layers_mean():
    graph = model(conv(6, 3), conv(5, 1), conv(4, 3))
    analysis = analyse(graph)
    scores = unit_scores(analysis, "l1")  # auto: mean for the filter norms
    for index in (0, 1, 2):
        w = np.asarray(graph.layers[index].weights["weights"], dtype=np.float64)
        l1 = np.abs(w).sum(axis=(1, 2, 3))
        np.testing.assert_allclose(scores[analysis.output_units[index]], l1 / l1.mean(), rtol=1e-12)
    gamma = np.abs(np.asarray(graph.layers[1].weights["scales"], dtype=np.float64))
    np.testing.assert_allclose(unit_scores(analysis)[analysis.output_units[1]], gamma, rtol=1e-12)  # γ raw


def test_an_unknown_normalisation_is_refused():
    with pytest.raises(UsageError, match="unknown normalize 'median'"):
        prune(model(*PLANNED), "slim", percent=0.2, criterion="l1", normalize="median")


@pytest.mark.shared
def test_the_safe_ratio_of_every_criterion_is_of_one_order_on_the_real_yolov3_tiny():
    """Raw filter norms could remove about 5 % before emptying a layer; normalised, as much as γ allows."""
    graph = load_cfg(need_shared(MODELS_DIR / "yolov3-tiny.cfg"), warn=quiet)
    read_weights(graph, MODELS_DIR / "yolov3-tiny.weights")
    bounds = {
        (criterion, normalize): choose(
            graph, "shortcut", 0.0, criterion=criterion, normalize=normalize
        ).selection.ratio_bound
        for criterion in ("bn-gamma", "l1", "l2", "bn-gamma-l1")
        for normalize in ("none", "auto")
    }
    REPORT["safe ratio bounds, real yolov3-tiny"] = ", ".join(
        f"{c}/{n}: {bound:.3f}" for (c, n), bound in bounds.items()
    )
    assert bounds[("l1", "none")] < 0.1  # what the issue saw: 0.045
    gamma = bounds[("bn-gamma", "auto")]
    assert bounds[("bn-gamma", "none")] == gamma
    for criterion in ("l1", "l2", "bn-gamma-l1"):
        assert gamma / 3 < bounds[(criterion, "auto")] < 3 * gamma, criterion


# -- layer-channel without residual units ------------------------------------------------------------------
def test_layer_channel_without_residual_units_does_its_channel_part_and_says_so(tmp_path):
    graph = model(conv(8, 3), conv(8, 1), conv(6, 1))
    result = prune(graph, "layer-channel", percent=0.3, shortcuts=1)
    slim = prune(graph, "slim", percent=0.3)
    assert result.removed_shortcuts == []
    assert filters_written(result.pruned, tmp_path / "a.cfg") == filters_written(
        slim.pruned, tmp_path / "b.cfg"
    )
    assert any(
        b != a
        for a, b in zip(
            filters_written(graph, tmp_path / "c.cfg"),
            filters_written(slim.pruned, tmp_path / "b.cfg"),
            strict=True,
        )
    )
    warnings = report(result)["warnings"]
    assert len(warnings) == 1 and "only the channel part" in warnings[0]
    assert "warning: no residual unit can be removed" in report_markdown(report(result), "x.cfg")


# -- targets ------------------------------------------------------------------------------------------------
def within_target(graph: Graph, pruned: Graph, measure: str, share: float) -> bool:
    """At most the target and less than 1 % below it, from the graphs' own totals."""
    index = 0 if measure == "params" else 1
    reached = graph_cost(pruned)[index] / graph_cost(graph)[index]
    return share * 0.99 <= reached <= share


@pytest.mark.parametrize("method", ["normal", "shortcut", "slim", "regular", "layer-channel"])
@pytest.mark.parametrize(("measure", "share"), [("bflops", 0.6), ("params", 0.45)])
def test_a_global_method_meets_its_target(method, measure, share):
    graph = zoo_model("darknet53")
    options = {"shortcuts": 2} if method == "layer-channel" else {}
    result = prune_to_target(graph, method, **{f"target_{measure}": share}, **options)
    assert within_target(graph, result.pruned, measure, share), result.target
    assert result.warnings == []
    assert (
        result.target["reached"]
        == graph_cost(result.pruned)[measure == "bflops"] / graph_cost(graph)[measure == "bflops"]
    )


def test_layer_pruning_to_a_target_says_when_a_unit_is_too_coarse():
    graph = zoo_model("darknet53")
    result = prune_to_target(graph, "layer", target_bflops=0.9)
    assert graph.bflops * 0.9 >= result.pruned.bflops
    assert result.removed_shortcuts
    if result.pruned.bflops < graph.bflops * 0.9 * 0.99:
        assert "below the target" in result.warnings[0]


def test_an_unreachable_target_is_refused_with_the_reason():
    graph = zoo_model("yolov4-tiny")
    with pytest.raises(UsageError, match=r"largest ratio that keeps every layer .* leaves .*--force"):
        prune_to_target(graph, "slim", target_bflops=0.001)
    with pytest.raises(UsageError, match="exactly one target"):
        prune_to_target(graph, "slim", target_bflops=0.5, target_params=0.5)
    with pytest.raises(UsageError, match="in \\(0, 1\\]"):
        prune_to_target(graph, "slim", target_params=1.5)
    with pytest.raises(UsageError, match="sets the ratio itself"):
        prune_to_target(graph, "slim", target_params=0.5, percent=0.2)


# -- pre-flight ---------------------------------------------------------------------------------------------
def test_a_dry_run_predicts_what_prune_builds():
    graph = zoo_model("yolov4-tiny")
    preview = dry_run(graph, "slim", percent=0.5)
    result = prune(graph, "slim", percent=0.5)
    assert preview["refused"] is None
    totals = preview["totals"]
    assert (totals["params_after"], totals["bflops_after"]) == graph_cost(result.pruned)
    for row in preview["layers"]:
        twin = result.pruned.layers[row["index"]]
        assert (row["kept"], row["removed"]) == (twin.filters, row["channels"] - twin.filters)
        assert (row["params_after"], row["bflops_after"]) == (twin.params, twin.bflops())
        gamma = np.abs(np.asarray(graph.layers[row["index"]].weights["scales"], dtype=np.float64))
        kept = result.kept_channels[row["index"]]
        assert row["gamma_removed"] == pytest.approx(1 - gamma[kept].sum() / gamma.sum(), rel=1e-9)
    assert preview["share_below_bound"] == 1.0


def test_a_dry_run_of_a_refused_ratio_shows_what_lies_above_the_bound():
    graph = model(*PLANNED)
    bound = choose(graph, "shortcut", 0.0).selection.ratio_bound
    preview = dry_run(graph, "shortcut", percent=min(0.99, bound + 0.2))
    assert "would empty a layer" in preview["refused"]
    assert preview["share_below_bound"] == pytest.approx(bound / min(0.99, bound + 0.2))
    removed = sum(row["removed"] for row in preview["layers"])
    below = sum(row["removed_below_bound"] for row in preview["layers"])
    assert 0 < below < removed


# -- budgeted plans ------------------------------------------------------------------------------------------
def sensitivity_table(graph: Graph, seed: int = 0, proxy: bool = False) -> dict:
    """A made-up sensitivity analysis: each unit loses weight · rate² of mAP (weights seeded per unit)."""
    rng = np.random.default_rng(seed)
    rates = [0.25, 0.5, 0.75]
    units = []
    for unit in prunable_units(graph):
        weight = float(rng.random())
        rows = [
            {
                "rate": rate,
                "map50": None if proxy else 0.6 - 0.1 * weight * rate**2,
                "proxy": 0.1 * weight * rate**2 if proxy else None,
                "params": 0,
                "bflops": 0.0,
            }
            for rate in rates
        ]
        units.append({"key": unit.key, "results": rows})
    return {"baseline": {"map50": None if proxy else 0.6, "proxy": 0.0}, "rates": rates, "units": units}


PLAN_CASES = [
    ("yolov4-tiny", "greedy", "bflops", 0.5),
    ("yolov4-tiny", "knapsack", "params", 0.6),
    ("yolov4-tiny", "paper", "bflops", 0.5),
    ("yolov7-tiny", "greedy", "bflops", 0.5),
    ("yolov7-tiny", "greedy", "params", 0.6),
    ("yolov7-tiny", "knapsack", "bflops", 0.4),
    pytest.param("yolov4", "greedy", "bflops", 0.5, marks=pytest.mark.slow),
    pytest.param("yolov4", "knapsack", "params", 0.6, marks=pytest.mark.slow),
    pytest.param("yolov4", "paper", "bflops", 0.5, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "optimizer", "measure", "share"), PLAN_CASES)
def test_a_plan_meets_its_target(name, optimizer, measure, share):
    graph = zoo_model(name)
    plan = make_plan(sensitivity_table(graph), graph, optimizer=optimizer, **{f"target_{measure}": share})
    pruned = prune_units(graph, plan["rates"], plan["criterion"], plan["round_to"]).pruned
    assert within_target(graph, pruned, measure, share), plan["predicted"]
    assert plan["predicted"][measure] == graph_cost(pruned)[measure == "bflops"]
    assert plan["predicted"]["map50_loss"] > 0
    assert json.loads(json.dumps(plan)) == plan  # JSON-ready


def test_greedy_prefers_the_units_that_cost_little_mAP():
    """Two 1×1 convs of equal FLOPs; one loses 10× more mAP: the plan cuts the other first."""
    graph = model(conv(8, 1), conv(8, 1), conv(8, 1))
    table = sensitivity_table(graph)
    losses = {"0": 0.0, "1": 0.5, "2": 0.05}
    for entry in table["units"]:
        for row in entry["results"]:
            row["map50"] = 0.6 - losses[entry["key"]] * row["rate"]
    plan = make_plan(table, graph, target_bflops=0.8)
    assert plan["rates"].get("1", 0.0) == 0.0
    assert set(plan["rates"]) <= {"0", "2"}


def test_a_proxy_only_analysis_plans_on_the_proxy():
    graph = zoo_model("yolov4-tiny")
    by_map = make_plan(sensitivity_table(graph), graph, target_bflops=0.5)
    by_proxy = make_plan(sensitivity_table(graph, proxy=True), graph, target_bflops=0.5)
    assert by_proxy["rates"] == by_map["rates"]  # the same losses, one as ΔmAP, one as the proxy


def test_a_latency_target_is_bisected_on_the_greedy_path():
    """A stand-in latency (BFLOPs + 1): the plan is the first on the path at or below the target."""
    graph = zoo_model("yolov4-tiny")
    measured = []

    def latency(g: Graph) -> float:
        measured.append(g.bflops)
        return g.bflops + 1.0

    plan = make_plan(sensitivity_table(graph), graph, target_latency=0.7, measure=latency)
    pruned = prune_units(graph, plan["rates"]).pruned
    assert pruned.bflops + 1 <= 0.7 * (graph.bflops + 1)
    assert len(measured) < 12  # bisection, not a walk along the path
    assert plan["target"] == {"measure": "latency", "share": 0.7}


def test_a_plan_for_another_model_is_refused():
    graph = zoo_model("yolov4-tiny")
    with pytest.raises(UsageError, match="unknown unit"):
        make_plan(sensitivity_table(zoo_model("yolov7-tiny")), graph, target_bflops=0.5)
    with pytest.raises(UsageError, match="unknown optimizer 'best'"):
        make_plan(sensitivity_table(graph), graph, target_bflops=0.5, optimizer="best")
    with pytest.raises(UsageError, match="out of reach"):
        make_plan(sensitivity_table(graph), graph, target_bflops=0.01)
