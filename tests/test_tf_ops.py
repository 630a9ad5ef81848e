"""The TensorFlow ops (``cfgsurgeon.emit.tf_ops``): every op of the lowering has a function taking exactly
that op's fields, every darknet activation is tabled, and ``[local]`` (the newest op) computes darknet's
``forward_local_layer`` (the numpy transcription of test_local) through the generated TF1 file and the
Keras model. The whole networks are compared with the torch backend in test_tf1 and test_keras."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
from test_local import local_case
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


@pytest.mark.parametrize("case", ["3s1-pad", "3s2", "4s2-pad", "1x1"])
def test_local_computes_darknets_forward_in_tf1(case: str, tmp_path: Path) -> None:
    from cfgsurgeon.emit.tf1 import tf1_runner

    graph, _, images, want = local_case(case, tmp_path)
    (got,) = tf1_runner(graph)(images)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["3s1-pad", "3s2", "4s2-pad", "1x1"])
def test_local_computes_darknets_forward_in_keras(case: str, tmp_path: Path) -> None:
    pytest.importorskip("tf_keras")
    from cfgsurgeon.emit.keras import run_keras, to_keras

    graph, _, images, want = local_case(case, tmp_path)
    (got,) = run_keras(to_keras(graph), images)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
