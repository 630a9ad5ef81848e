"""share_index: a convolution uses another layer's weights and BN tensors but keeps its own stride, padding
and dilation (darknet's parse_convolutional; resnet152_trident shares weights across dilations 1, 2, 3)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from cfgsurgeon import loads_cfg  # noqa: E402
from cfgsurgeon.emit.torch import to_torch  # noqa: E402
from cfgsurgeon.emit.torch_source import torch_source  # noqa: E402
from cfgsurgeon.weights import write_weights  # noqa: E402

CFG = """[net]
width=12
height=12
channels=3
[convolutional]
batch_normalize=1
filters=3
size=3
stride=1
pad=1
activation=linear
[convolutional]
batch_normalize=1
filters=3
size=3
stride=1
pad=1
dilation=2
share_index=0
activation=linear
"""


def _graph():
    graph = loads_cfg(CFG, warn=lambda m: None)
    rng = np.random.default_rng(0)
    w = {
        "biases": rng.normal(size=3),
        "scales": rng.uniform(0.5, 1.5, 3),
        "rolling_mean": rng.normal(size=3),
        "rolling_variance": rng.uniform(0.5, 2, 3),
        "weights": rng.normal(size=(3, 3, 3, 3)),
    }
    graph.layers[0].weights = {k: np.asarray(v, dtype=np.float32) for k, v in w.items()}
    return graph, {k: v.astype(np.float64) for k, v in graph.layers[0].weights.items()}


def _reference(x: np.ndarray, w: dict, dilation: int) -> np.ndarray:
    t = torch.from_numpy
    y = F.conv2d(t(x).double(), t(w["weights"]), padding=dilation, dilation=dilation)
    y = (y - t(w["rolling_mean"]).view(1, -1, 1, 1)) / torch.sqrt(
        t(w["rolling_variance"]).view(1, -1, 1, 1) + 1e-5
    )
    return (y * t(w["scales"]).view(1, -1, 1, 1) + t(w["biases"]).view(1, -1, 1, 1)).numpy()


def test_shared_conv_keeps_its_own_dilation():
    graph, w = _graph()
    x = np.random.default_rng(1).random((1, 3, 12, 12))
    with torch.no_grad():
        out0, out1 = to_torch(graph).double()(torch.from_numpy(x), keep=[0, 1])
    expected0 = _reference(x, w, 1)
    np.testing.assert_allclose(out0.numpy(), expected0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out1.numpy(), _reference(expected0, w, 2), rtol=1e-9, atol=1e-9)


def test_standalone_source_agrees_on_shared_weights(tmp_path):
    graph, _ = _graph()
    write_weights(graph, tmp_path / "m.weights")
    (tmp_path / "m.py").write_text(torch_source(graph))
    x = np.random.default_rng(2).random((1, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run(
        [
            sys.executable,
            str(tmp_path / "m.py"),
            str(tmp_path / "m.weights"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npz"),
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    with torch.no_grad():
        expected = to_torch(graph)(torch.from_numpy(x))
    got = np.load(tmp_path / "y.npz")
    assert [np.array_equal(got[k], e.numpy()) for k, e in zip(sorted(got.files), expected, strict=True)] == [
        True
    ]
