"""The TensorFlow ops (``cfgsurgeon.emit.tf_ops``): every op of the lowering has a function taking exactly
that op's fields, and every darknet activation is tabled. What they compute is checked op by op against the
torch backend in test_conformance (``[local]`` included: the torch one is checked against darknet's
``forward_local_layer`` in test_local), whole networks in test_tf1 and test_keras."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from test_lower import _op_types

from cfgsurgeon import layers as L
from cfgsurgeon.emit import lower as lo

tf_ops = pytest.importorskip("cfgsurgeon.emit.tf_ops")


def test_every_op_has_a_tf_function() -> None:
    handled = {*tf_ops.FUNCTIONS, lo.Parameter, lo.TreeGroups, lo.Act}  # those two: fields of other ops
    assert [cls.__name__ for cls in _op_types() if cls not in handled] == []
    assert set(tf_ops.ACTIVATIONS) == set(L.ACTIVATIONS)


def test_each_function_takes_its_ops_fields() -> None:
    """The emitters pass an op's fields by name: the value first, an op with variables its tensors next."""
    for op, function in tf_ops.FUNCTIONS.items():
        names = list(inspect.signature(function).parameters)
        leading = 2 if op in (lo.Conv2d, lo.BatchNorm, lo.Linear) else 1
        assert names[leading:] == [field.name for field in dataclasses.fields(op)], op.__name__
