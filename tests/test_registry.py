"""The layer-type registry (``cfgsurgeon.registry``): every layer type has a rule in every stage (shape,
``.weights`` layout, lowering, random init, channel coupling, compensation, slicing), stated by the stage's
owner or explicitly "not applicable" with a reason; a type missing one is named by the check and refused at
run time with its cfg line, never given a default."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import numpy as np
import pytest
from conftest import quiet

from cfgsurgeon import CfgError, loads_cfg, registry
from cfgsurgeon import layers as L

for _stage in registry.STAGES:  # the owners fill their stages when imported
    importlib.import_module(_stage.owner)

from cfgsurgeon.randinit import random_weights  # noqa: E402
from cfgsurgeon.surgery.channel import prune_channels  # noqa: E402
from cfgsurgeon.surgery.groups import analyse  # noqa: E402

TYPES = sorted(set(L.LAYER_TYPES.values()), key=lambda kind: kind.__name__)


def test_every_layer_type_has_a_rule_in_every_stage() -> None:
    assert registry.missing(TYPES) == []


@pytest.mark.parametrize("stage", [stage.name for stage in registry.STAGES])
def test_not_applicable_entries_give_a_reason(stage: str) -> None:
    for kind in TYPES:
        found = registry.entry(stage, kind)
        assert callable(found) or (isinstance(found, registry.NotApplicable) and found.reason), kind.__name__


def test_a_type_storing_tensors_states_how_they_are_cut() -> None:
    """Only a type that stores nothing, or whose channels are never cut, may skip slicing."""
    for kind in TYPES:
        slicing = registry.entry("slicing", kind)
        if isinstance(slicing, registry.NotApplicable) and "no tensors" not in slicing.reason:
            assert "fixed boundary" in slicing.reason, kind.__name__


class Unstated(L.Layer):
    """A new type that states nothing beyond its name."""

    kind = "unstated"
    names: ClassVar[tuple[str, ...]] = ("unstated",)


def test_a_new_type_without_rules_is_named_in_every_stage() -> None:
    assert registry.missing([Unstated]) == [("Unstated", stage.name) for stage in registry.STAGES]


def test_a_type_with_some_rules_is_named_in_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    class PassThrough(Unstated):
        infer = L.Layer.same_shape
        weight_layout = L.Layer.no_tensors

    monkeypatch.setitem(registry.table("lowering"), PassThrough, lambda layer, tree: None)
    assert [stage for _, stage in registry.missing([PassThrough])] == [
        "randinit",
        "channels",
        "compensation",
        "slicing",
    ]
    assert registry.entry("weights", PassThrough) == registry.NotApplicable(
        "stores no tensors in a .weights file"
    )


def _graph_with_unstated(monkeypatch: pytest.MonkeyPatch) -> Any:
    class Identity(Unstated):
        infer = L.Layer.same_shape
        weight_layout = L.Layer.no_tensors

    monkeypatch.setitem(L.LAYER_TYPES, "unstated", Identity)
    text = "[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nbatch_normalize=1\nfilters=4\n"
    text += "\n[unstated]\n"
    return loads_cfg(text, "new.cfg", warn=quiet)


def test_random_init_refuses_a_type_without_its_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = _graph_with_unstated(monkeypatch)
    with pytest.raises(
        CfgError, match=r"new\.cfg:\d+: layer 1 \[unstated\] has no rule for stage 'randinit'"
    ):
        random_weights(graph)


def test_channel_analysis_refuses_a_type_without_its_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = _graph_with_unstated(monkeypatch)
    with pytest.raises(CfgError, match=r"layer 1 \[unstated\] has no rule for stage 'channels'"):
        analyse(graph)


def test_pruning_refuses_a_type_without_compensation_or_slicing(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = _graph_with_unstated(monkeypatch)
    graph.layers[0].weights = {
        name: np.ones(shape, dtype=np.float32) for name, shape in graph.layers[0].weight_layout()
    }
    identity = type(graph.layers[1])
    monkeypatch.setitem(registry.table("channels"), identity, lambda layer, ins, atoms: ins[0])
    analysis = analyse(graph)
    keep = np.ones(len(analysis.unit_prunable), dtype=bool)
    with pytest.raises(CfgError, match=r"layer 1 \[unstated\] has no rule for stage 'compensation'"):
        prune_channels(analysis, keep)
    monkeypatch.setitem(registry.table("compensation"), identity, lambda layer, ins: ins[0])
    with pytest.raises(CfgError, match=r"layer 1 \[unstated\] has no rule for stage 'slicing'"):
        prune_channels(analysis, keep)


def test_a_type_is_stated_once_per_stage() -> None:
    with pytest.raises(ValueError, match="already has a rule for Convolutional"):
        registry.define("lowering", {L.Convolutional: lambda layer, tree: None})


def test_the_base_layer_states_no_shape_and_no_layout() -> None:
    layer = Unstated("unstated", {})
    with pytest.raises(NotImplementedError, match="states no shape rule"):
        layer.infer()
    with pytest.raises(NotImplementedError, match="states no .weights layout"):
        layer.weight_layout()
