"""The layer-type registry: for every darknet layer type, the rule each stage of the pipeline applies to it.

Each stage's rules are stated per type by the module that owns the stage, into a table kept here, and read
back through :func:`rule`, which refuses a type without one (naming the layer's cfg line) instead of falling
back to a default. ``tests/test_registry.py`` checks that every type of :data:`cfgsurgeon.layers.LAYER_TYPES`
has an entry in every stage. Where a stage truly does not apply to a type the entry says so and why:
:class:`NotApplicable`.

The shape rule and the ``.weights`` layout are the methods ``infer`` and ``weight_layout`` of the type's class
in :mod:`cfgsurgeon.layers` (their base versions raise; ``Layer.same_shape`` and ``Layer.no_tensors`` are the
explicit statements). No framework is imported here or by the stages' owners listed in :data:`STAGES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CfgError
from .layers import Layer


@dataclass(frozen=True)
class NotApplicable:
    """The entry of a stage that does not apply to a type; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class Stage:
    """One stage: its ``name``, the module that states its rules (``owner``) and what a rule says."""

    name: str
    owner: str
    what: str


STAGES: tuple[Stage, ...] = (
    Stage("shape", "cfgsurgeon.layers", "output shape from the inputs' (the class's infer)"),
    Stage("weights", "cfgsurgeon.layers", "tensors in a .weights file, in file order (weight_layout)"),
    Stage("lowering", "cfgsurgeon.emit.lower", "the primitive ops every backend runs"),
    Stage("randinit", "cfgsurgeon.randinit", "well-conditioned random tensors and the output's moments"),
    Stage("channels", "cfgsurgeon.surgery.groups", "how input channels map to output channels (coupling)"),
    Stage("compensation", "cfgsurgeon.surgery.channel", "the output of removed channels, from the inputs'"),
    Stage("slicing", "cfgsurgeon.surgery.channel", "cutting the tensors when channels are removed"),
)

# Stages whose rules are methods of the layer classes: the method, and the base version that states nothing.
_METHODS = {"shape": "infer", "weights": "weight_layout"}
_NO_TENSORS = NotApplicable("stores no tensors in a .weights file")

Rule = Callable[..., Any] | NotApplicable
_TABLES: dict[str, dict[type[Layer], Rule]] = {s.name: {} for s in STAGES if s.name not in _METHODS}


def table(stage: str) -> dict[type[Layer], Rule]:
    """The live table of ``stage``'s rules (its owner fills it; entries are never replaced)."""
    return _TABLES[stage]


def define(stage: str, rules: Mapping[type[Layer], Rule]) -> dict[type[Layer], Rule]:
    """Add ``rules`` to ``stage``'s table and return the table; a type stated twice is a programming error."""
    found = _TABLES[stage]
    twice = sorted(kind.__name__ for kind in rules if kind in found)
    if twice:
        raise ValueError(f"stage '{stage}' already has a rule for {', '.join(twice)}")
    found.update(rules)
    return found


def register(stage: str, *kinds: type[Layer]) -> Callable[[Callable], Callable]:
    """Decorator: the function is ``stage``'s rule for ``kinds``."""

    def add(function: Callable) -> Callable:
        define(stage, dict.fromkeys(kinds, function))
        return function

    return add


def entry(stage: str, kind: type[Layer]) -> Rule | None:
    """``kind``'s entry in ``stage`` (None: missing). Method stages read the class."""
    method = _METHODS.get(stage)
    if method is None:
        return _TABLES[stage].get(kind)
    function = getattr(kind, method)
    if function is getattr(Layer, method):
        return None
    return _NO_TENSORS if function is Layer.no_tensors else function


def rule(stage: str, layer: Layer) -> Rule:
    """The rule ``stage`` applies to ``layer``; a type without one is refused, naming the layer."""
    found = entry(stage, type(layer))
    if found is None:
        raise CfgError(
            f"layer {layer.index} [{layer.header}] has no rule for stage '{stage}' "
            f"({type(layer).__name__} is missing from {_owner(stage)})",
            layer.where(),
        )
    return found


def missing(kinds: list[type[Layer]]) -> list[tuple[str, str]]:
    """(type, stage) of every entry missing for ``kinds`` (the owners of module stages must be imported)."""
    return [(kind.__name__, s.name) for kind in kinds for s in STAGES if entry(s.name, kind) is None]


def _owner(stage: str) -> str:
    return next(s.owner for s in STAGES if s.name == stage)
