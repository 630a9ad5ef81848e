"""Darknet ``.weights`` files: byte-exact round trips, exact size checks, prefix loading, old header versions,
transposed connected layers and read-only memory-mapped tensors."""

from __future__ import annotations

import hashlib
import mmap
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR, SHARED_MARK, need_shared, quiet

from cfgsurgeon import WeightsError, WeightsHeader, load_cfg, loads_cfg, read_weights, write_weights

YOLOV3_TINY_SIZE = 35_434_956  # 20-byte header + 4 * 8,858,734 floats (shared/README.md)

# A tiny cfg with every kind of stored tensor order we handle: conv with and without BN, a grouped conv,
# a connected layer with BN (BN triplet after the weights), a weighted shortcut and an implicit layer.
TINY = """[net]
width=4
height=4
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky

[convolutional]
filters=4
groups=2
size=1
activation=linear

[shortcut]
from=-2
weights_type=per_channel

[implicit]
filters=2

[route]
layers=-2

[connected]
output=3
batch_normalize=1
activation=linear
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(graph, path: Path, **kwargs) -> str:
    with pytest.raises(WeightsError) as caught:
        read_weights(graph, path, **kwargs)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def tiny_model() -> tuple[Path, Path]:
    """The shared yolov3-tiny cfg and weights (skips without ../shared)."""
    cfg = need_shared(MODELS_DIR / "yolov3-tiny.cfg")
    weights = need_shared(MODELS_DIR / "yolov3-tiny.weights")
    assert weights.stat().st_size == YOLOV3_TINY_SIZE
    return cfg, weights


def tiny_graph():
    return loads_cfg(TINY, "tiny.cfg", warn=quiet)


def synthetic_file(path: Path, header: bytes, floats: int, extra: bytes = b"") -> np.ndarray:
    """Write ``header`` + ``floats`` distinct float32 values; return the values."""
    values = (np.arange(floats, dtype="<f4") + 1) / 8
    path.write_bytes(header + values.tobytes() + extra)
    return values


# -- the real model ----------------------------------------------------------------------------------------
@SHARED_MARK
def test_yolov3_tiny_round_trip_is_byte_identical(tiny_model, tmp_path: Path):
    cfg, weights = tiny_model
    graph = load_cfg(cfg, warn=quiet)
    header = read_weights(graph, weights)
    assert header == WeightsHeader(major=0, minor=2, revision=0, seen=32013312)
    assert graph.weights_header == header and header.size == 20
    out = tmp_path / "copy.weights"
    assert write_weights(graph, out) == YOLOV3_TINY_SIZE
    assert out.read_bytes() == weights.read_bytes()
    assert sha256(out) == sha256(weights)


@SHARED_MARK
def test_tensor_shapes_follow_the_cfg(tiny_model):
    cfg, weights = tiny_model
    graph = load_cfg(cfg, warn=quiet)
    read_weights(graph, weights)
    first = graph[0].weights
    assert list(first) == ["biases", "scales", "rolling_mean", "rolling_variance", "weights"]
    assert first["weights"].shape == (16, 3, 3, 3) and first["biases"].shape == (16,)
    assert graph[1].weights is None  # maxpool stores nothing
    assert list(graph[15].weights) == ["biases", "weights"]  # conv without batch_normalize
    assert all(np.isfinite(t).all() for layer in graph if layer.weights for t in layer.weights.values())
    assert (graph[0].weights["rolling_variance"] > 0).all()  # real BN statistics, so the offsets are right


@SHARED_MARK
@pytest.mark.parametrize(("change", "actual"), [(-100, YOLOV3_TINY_SIZE - 100), (8, YOLOV3_TINY_SIZE + 8)])
def test_wrong_size_names_expected_and_actual_bytes(tiny_model, tmp_path: Path, change: int, actual: int):
    cfg, weights = tiny_model
    data = weights.read_bytes()
    bad = tmp_path / "bad.weights"
    bad.write_bytes(data[:change] if change < 0 else data + b"\0" * change)
    message = one_line_error(load_cfg(cfg, warn=quiet), bad)
    assert str(YOLOV3_TINY_SIZE) in message and str(actual) in message
    assert ("too short" if change < 0 else "too long") in message
    if change < 0:  # the last layer (22, a 1x1 conv) is the one cut
        assert "layer 22 [convolutional]" in message


@SHARED_MARK
def test_prefix_loading(tiny_model, tmp_path: Path):
    cfg, weights = tiny_model
    full = load_cfg(cfg, warn=quiet)
    read_weights(full, weights)
    upto = 9  # layers 0..8: a backbone file such as darknet53.conv.74
    offset = 20 + 4 * sum(layer.params for layer in full.layers[:upto])
    prefix = tmp_path / "backbone.weights"
    prefix.write_bytes(weights.read_bytes()[:offset])

    graph = load_cfg(cfg, warn=quiet)
    read_weights(graph, prefix, upto=upto)
    for layer, reference in zip(graph.layers[:upto], full.layers[:upto], strict=True):
        if reference.weights is None:
            assert layer.weights is None
        else:
            assert list(layer.weights) == list(reference.weights)
            assert all(np.array_equal(layer.weights[k], reference.weights[k]) for k in reference.weights)
    assert sum(layer.weights is not None for layer in graph.layers[:upto]) == 5
    assert all(layer.weights is None for layer in graph.layers[upto:])

    # the full file may be loaded as a prefix too (a prefix file may hold more) ...
    read_weights(load_cfg(cfg, warn=quiet), weights, upto=upto)
    # ... but a file shorter than the prefix is an error that says which layers were asked for
    message = one_line_error(load_cfg(cfg, warn=quiet), prefix, upto=upto + 2)
    assert f"the first {upto + 2} layers" in message and str(offset) in message
    # and without upto the prefix file is too short for the whole cfg
    assert "too short" in one_line_error(load_cfg(cfg, warn=quiet), prefix)


@SHARED_MARK
def test_tensors_are_read_only_memory_mapped_views(tiny_model, tmp_path: Path):
    cfg, weights = tiny_model
    before = sha256(weights)
    graph = load_cfg(cfg, warn=quiet)
    read_weights(graph, weights)
    tensor = graph[0].weights["weights"]
    assert not tensor.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        tensor[0, 0, 0, 0] = 123.0
    with pytest.raises(ValueError):
        tensor.setflags(write=True)
    # the data is not a copy: following .base leads to the memory map of the file
    base, seen = tensor, []
    while base is not None:
        seen.append(base)
        base = getattr(base, "base", None)
    assert any(isinstance(obj, np.memmap | mmap.mmap) for obj in seen), [type(obj) for obj in seen]
    assert sha256(weights) == before


# -- synthetic files ---------------------------------------------------------------------------------------
def test_tiny_graph_params():
    graph = tiny_graph()
    # conv 4*(1+3) + 4*3*9, grouped conv 4 + 4*2, shortcut 2x4, implicit 2, connected 3 + 3*64 + 3*3
    assert [layer.params for layer in graph] == [124, 12, 8, 2, 0, 204]
    assert graph.params == 350


def test_synthetic_round_trip_and_layout(tmp_path: Path):
    graph = tiny_graph()
    path = tmp_path / "tiny.weights"
    values = synthetic_file(path, WeightsHeader().to_bytes(), graph.params)
    read_weights(graph, path)
    conv, _, shortcut, implicit, _, connected = graph.layers
    assert conv.weights["biases"].tolist() == values[:4].tolist()
    assert conv.weights["weights"].ravel().tolist() == values[16:124].tolist()
    assert shortcut.weights["weights"].shape == (2, 4)
    assert implicit.weights["weights"].tolist() == values[144:146].tolist()
    # connected: biases, then weights [outputs][inputs], then the BN triplet
    assert connected.weights["weights"].shape == (3, 64)
    assert connected.weights["weights"][0, :2].tolist() == values[149:151].tolist()
    assert connected.weights["rolling_variance"].tolist() == values[-3:].tolist()
    out = tmp_path / "again.weights"
    assert write_weights(graph, out) == path.stat().st_size == 20 + 4 * 350
    assert out.read_bytes() == path.read_bytes()


def test_version_0_1_header_has_a_32_bit_seen(tmp_path: Path):
    graph = tiny_graph()
    path = tmp_path / "old.weights"
    synthetic_file(path, struct.pack("<iiiI", 0, 1, 7, 4_000_000_000), graph.params)
    header = read_weights(graph, path)
    assert header == WeightsHeader(major=0, minor=1, revision=7, seen=4_000_000_000)
    assert header.size == 16 and not header.seen_is_64bit
    assert graph[0].weights["biases"][0] == np.float32(1 / 8)  # floats start right after 16 bytes
    out = tmp_path / "copy.weights"
    assert write_weights(graph, out) == 16 + 4 * graph.params
    assert out.read_bytes() == path.read_bytes()


def test_transposed_connected_header(tmp_path: Path):
    cfg = "[net]\nwidth=2\nheight=2\nchannels=3\n\n[connected]\noutput=4\nactivation=linear\n"
    graph = loads_cfg(cfg, "fc.cfg", warn=quiet)
    assert graph.params == 4 + 12 * 4
    path = tmp_path / "transposed.weights"
    values = synthetic_file(path, struct.pack("<iiiQ", 1001, 0, 0, 9), graph.params)
    header = read_weights(graph, path)
    assert header.transposed_connected and header.size == 20
    stored = values[4:].reshape(12, 4)  # the file holds [inputs][outputs]
    weights = graph[0].weights["weights"]
    assert weights.shape == (4, 12)
    assert np.array_equal(weights, stored.T)
    out = tmp_path / "copy.weights"
    write_weights(graph, out)
    assert out.read_bytes() == path.read_bytes()

    # the same bytes under a normal header are read untransposed
    normal = tmp_path / "normal.weights"
    normal.write_bytes(WeightsHeader().to_bytes() + path.read_bytes()[20:])
    plain = loads_cfg(cfg, "fc.cfg", warn=quiet)
    read_weights(plain, normal)
    assert np.array_equal(plain[0].weights["weights"], values[4:].reshape(4, 12))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"", "cannot read weights", id="empty"),
        pytest.param(b"\0" * 10, "10 bytes is shorter than the 16-byte header", id="shorter-than-header"),
        pytest.param(struct.pack("<iii", 0, 2, 0) + b"\0" * 6, "truncated header", id="v0.2-18-bytes"),
    ],
)
def test_file_shorter_than_its_header(tmp_path: Path, content: bytes, expected: str):
    path = tmp_path / "short.weights"
    path.write_bytes(content)
    assert expected in one_line_error(tiny_graph(), path)


def test_missing_file(tmp_path: Path):
    message = one_line_error(tiny_graph(), tmp_path / "missing.weights")
    assert "cannot read weights" in message and "missing.weights" in message


def test_synthetic_wrong_sizes(tmp_path: Path):
    graph = tiny_graph()
    expected = 20 + 4 * graph.params
    path = tmp_path / "long.weights"
    synthetic_file(path, WeightsHeader().to_bytes(), graph.params, extra=b"\0" * 4)
    message = one_line_error(graph, path)
    assert f"needs {expected} bytes" in message and f"has {expected + 4}" in message
    synthetic_file(path, WeightsHeader().to_bytes(), graph.params - 3)
    message = one_line_error(graph, path)
    assert f"needs {expected} bytes" in message and f"has {expected - 12}" in message
    assert "layer 5 [connected]" in message


def test_write_without_weights_is_an_error(tmp_path: Path):
    with pytest.raises(WeightsError, match=r"layer 0 \[convolutional\] has no weights loaded"):
        write_weights(tiny_graph(), tmp_path / "none.weights")
    assert not (tmp_path / "none.weights").exists()
    assert list(tmp_path.iterdir()) == []  # the temp file of the atomic write is gone too


def test_write_refuses_a_tensor_of_the_wrong_shape(tmp_path: Path):
    graph = tiny_graph()
    path = tmp_path / "ok.weights"
    synthetic_file(path, WeightsHeader().to_bytes(), graph.params)
    read_weights(graph, path)
    graph[0].weights = dict(graph[0].weights, biases=np.zeros(5, dtype=np.float32))
    with pytest.raises(WeightsError, match=r"'biases' has shape \(5,\), the cfg needs \(4,\)"):
        write_weights(graph, tmp_path / "bad.weights")
