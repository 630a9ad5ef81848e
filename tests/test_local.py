"""darknet's ``[local]`` (locally connected layer) in every stage: shape and ``.weights`` size by darknet's
formulas (``local_layer.c``: ``local_out_height`` = ``(h - 1)/stride + 1`` with pad, ``(h - size)/stride + 1``
without; ``load_weights``: ``outputs`` biases then ``size·size·c·n·locations`` weights), the torch backend and
the standalone source against a numpy transcription of ``forward_local_layer`` (im2col, then one GEMM per
output location), refusals, cfg and ``.weights`` round trips, random init, and pruning of its input channels.
OpenCV's darknet importer refuses ``[local]`` ("Unknown layer type: local"), so it cannot be the reference."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import collection_cfgs, quiet, section_headers

from cfgsurgeon import CfgError, loads_cfg, read_weights, write_weights
from cfgsurgeon import layers as L
from cfgsurgeon.emit.cfg import cfg_text
from cfgsurgeon.emit.torch import to_torch
from cfgsurgeon.emit.torch_source import torch_source
from cfgsurgeon.ir import Graph, load_cfg
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.surgery.groups import analyse
from cfgsurgeon.surgery.prune import prune

HEADER = np.array([0, 2, 0], dtype="<i4").tobytes() + np.zeros(1, dtype="<u8").tobytes()


def local_cfg(c: int, h: int, w: int, n: int, size: int, stride: int, pad: int, act: str = "leaky") -> str:
    return (
        f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n"
        f"[local]\nfilters={n}\nsize={size}\nstride={stride}\npad={pad}\nactivation={act}\n"
    )


# -- darknet's C, transcribed (float64, loops as written there) ----------------------------------------------
def darknet_out_size(h: int, size: int, stride: int, pad: int) -> int:
    """local_out_height: ``h -= pad ? 1 : size; return h/stride + 1`` (C division, h >= 0 here)."""
    return (h - (1 if pad else size)) // stride + 1


def darknet_floats(c: int, h: int, w: int, n: int, size: int, stride: int, pad: int) -> int:
    locations = darknet_out_size(h, size, stride, pad) * darknet_out_size(w, size, stride, pad)
    return n * locations + size * size * c * n * locations  # fread(biases, outputs); fread(weights, size)


def darknet_im2col(image: np.ndarray, size: int, stride: int, pad: int) -> np.ndarray:
    """im2col_cpu: rows ``c = (channel·size + ky)·size + kx``, columns ``y·width_col + x``, zero outside."""
    channels, height, width = image.shape
    height_col = (height + 2 * pad - size) // stride + 1
    width_col = (width + 2 * pad - size) // stride + 1
    col = np.zeros((channels * size * size, height_col * width_col))
    for c in range(channels * size * size):
        w_offset, h_offset, c_im = c % size, (c // size) % size, c // size // size
        for y in range(height_col):
            for x in range(width_col):
                row, column = h_offset + y * stride - pad, w_offset + x * stride - pad
                if 0 <= row < height and 0 <= column < width:
                    col[c, y * width_col + x] = image[c_im, row, column]
    return col


def darknet_forward_local(
    image: np.ndarray, floats: np.ndarray, n: int, size: int, stride: int, pad: int
) -> np.ndarray:
    """forward_local_layer for one image: output = biases; per location j, gemm(0, 0, m=n, n=1, k=size²·c,
    A = weights + j·k·n (lda k), B = col + j (ldb locations), C = output + j (ldc locations)); leaky."""
    c, h, w = image.shape
    out_h, out_w = darknet_out_size(h, size, stride, pad), darknet_out_size(w, size, stride, pad)
    locations, k = out_h * out_w, size * size * c
    output = floats[: n * locations].astype(np.float64).copy()
    weights = floats[n * locations :].astype(np.float64)
    col = darknet_im2col(image.astype(np.float64), size, stride, pad)
    for j in range(locations):
        a = weights[j * k * n : (j + 1) * k * n]
        for row in range(n):
            output[row * locations + j] += sum(a[row * k + i] * col[i, j] for i in range(k))
    output = np.where(output > 0, output, 0.1 * output)  # leaky
    return output.reshape(n, out_h, out_w)


# -- shape, layout, refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("geometry", "out_shape", "params"),
    [
        # pad: (7 - 1)/1 + 1 = 7, (9 - 1)/1 + 1 = 9; 5·63 biases + 9·4·5·63 weights
        ((4, 7, 9, 5, 3, 1, 1), (5, 7, 9), 5 * 63 + 9 * 4 * 5 * 63),
        # pad, stride 2: (7 - 1)/2 + 1 = 4, (9 - 1)/2 + 1 = 5
        ((4, 7, 9, 5, 3, 2, 1), (5, 4, 5), 5 * 20 + 9 * 4 * 5 * 20),
        # no pad: (8 - 2)/1 + 1 = 7, (6 - 2)/1 + 1 = 5
        ((3, 8, 6, 4, 2, 1, 0), (4, 7, 5), 4 * 35 + 4 * 3 * 4 * 35),
        # no pad, stride 2: (9 - 3)/2 + 1 = 4, (7 - 3)/2 + 1 = 3
        ((3, 9, 7, 2, 3, 2, 0), (2, 4, 3), 2 * 12 + 9 * 3 * 2 * 12),
    ],
    ids=["3s1-pad", "3s2-pad", "2s1", "3s2"],
)
def test_shape_and_weights_size_follow_darknet(geometry: tuple, out_shape: tuple, params: int) -> None:
    layer = loads_cfg(local_cfg(*geometry), "local.cfg", warn=quiet).layers[0]
    assert layer.out_shape == out_shape
    assert layer.params == params == darknet_floats(*geometry)
    assert layer.bflops() == 0.0  # darknet's make_local_layer sets none


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        ((3, 8, 8, 2, 5, 1, 1), r"local.cfg:\d+: layer 0 \[local\] size=5 stride=1 pad=1: .* im2col size"),
        ((3, 8, 8, 2, 1, 1, 1), r"local.cfg:\d+: layer 0 \[local\] size=1 stride=1 pad=1: .* im2col size"),
    ],
    ids=["5x5-pad", "1x1-pad"],
)
def test_geometries_darknet_leaves_undefined_are_refused(geometry: tuple, message: str) -> None:
    graph = loads_cfg(local_cfg(*geometry), "local.cfg", warn=quiet)
    with pytest.raises(CfgError, match=message):
        to_torch(graph)


def test_empty_output_is_a_shape_error() -> None:
    with pytest.raises(CfgError, match=r"output would be empty"):
        loads_cfg(local_cfg(3, 2, 2, 2, 3, 1, 0), "local.cfg", warn=quiet)


# -- the forward pass against darknet's C ----------------------------------------------------------------
CASES = {
    "3s1-pad": (4, 7, 9, 5, 3, 1, 1),
    "3s2-pad": (4, 7, 9, 5, 3, 2, 1),
    "2s1": (3, 8, 6, 4, 2, 1, 0),
    "3s2": (3, 9, 7, 2, 3, 2, 0),
    "4s2-pad": (2, 8, 8, 3, 4, 2, 1),  # pad=1 with size 4: im2col (8 + 2 - 4)/2 + 1 = 4 = (8 - 1)/2 + 1
    "1x1": (3, 5, 5, 2, 1, 1, 0),
}


def _weights_file(folder: Path, geometry: tuple, seed: int) -> tuple[Path, np.ndarray]:
    floats = np.random.default_rng(seed).standard_normal(darknet_floats(*geometry)).astype("<f4")
    path = folder / "local.weights"
    path.write_bytes(HEADER + floats.tobytes())
    return path, floats


def local_case(case: str, tmp_path: Path):
    """The [local] cfg of ``case`` with seeded weights (written to ``tmp_path``), two random images and
    darknet's outputs for them: ``(graph, weights path, images, expected)``."""
    geometry = CASES[case]
    c, h, w, n, size, stride, pad = geometry
    graph = loads_cfg(local_cfg(*geometry), "local.cfg", warn=quiet)
    path, floats = _weights_file(tmp_path, geometry, seed=len(case))
    read_weights(graph, path)
    images = np.random.default_rng(1).random((2, c, h, w), dtype=np.float32) * 2 - 1
    want = np.stack([darknet_forward_local(image, floats, n, size, stride, pad) for image in images])
    return graph, path, images, want


@pytest.mark.parametrize("case", list(CASES))
def test_torch_and_standalone_source_compute_darknets_forward(case: str, tmp_path: Path) -> None:
    graph, path, images, want = local_case(case, tmp_path)
    with torch.no_grad():
        (got,) = to_torch(graph)(torch.from_numpy(images))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    module = types.ModuleType("generated")
    exec(compile(torch_source(graph), "generated.py", "exec"), module.__dict__)
    standalone = module.Darknet()
    module.load_darknet_weights(standalone, str(path))
    with torch.no_grad():
        (again,) = standalone(torch.from_numpy(images))
    assert torch.equal(again, got)  # the same torch_ops function, the same tensors: bit for bit


# -- files: .weights and cfg ---------------------------------------------------------------------------------
def test_weights_and_cfg_round_trip_byte_for_byte(tmp_path: Path) -> None:
    text = (
        local_cfg(3, 8, 8, 4, 3, 2, 1)
        + "\n[convolutional]\nbatch_normalize=1\nfilters=6\nsize=1\nactivation=leaky\n"
        + "\n[local]\nfilters=2\nsize=2\nstride=1\nactivation=logistic\n"
    )
    graph = loads_cfg(text, "local.cfg", warn=quiet)
    total = darknet_floats(3, 8, 8, 4, 3, 2, 1) + (4 * 6 + 6 * 4) + darknet_floats(6, 4, 4, 2, 2, 1, 0)
    assert graph.params == total
    data = HEADER + np.random.default_rng(5).standard_normal(total).astype("<f4").tobytes()
    (tmp_path / "in.weights").write_bytes(data)
    read_weights(graph, tmp_path / "in.weights")
    write_weights(graph, tmp_path / "out.weights")
    assert (tmp_path / "out.weights").read_bytes() == data
    again = loads_cfg(cfg_text(graph), "again.cfg", warn=quiet)
    assert again.signature() == graph.signature()
    assert "[local]\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=leaky\n" in cfg_text(graph)


# -- random init ---------------------------------------------------------------------------------------------
YOLOV1_LIKE = """
[net]
width=48
height=48
channels=3

[convolutional]
batch_normalize=1
filters=8
size=7
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[local]
size=3
stride=1
pad=1
filters=8
activation=leaky

[dropout]
probability=.5

[connected]
output=52
activation=linear

[detection]
classes=3
coords=4
rescore=1
side=2
num=2
softmax=0
sqrt=1
"""


def test_random_init_fills_the_layout_with_outputs_of_order_one() -> None:
    graph = loads_cfg(YOLOV1_LIKE, "yolov1-like.cfg", warn=quiet)
    random_weights(graph, seed=4)
    local = graph.layers[3]
    assert [(k, v.shape) for k, v in local.weights.items()] == local.weight_layout()
    x = torch.from_numpy(np.random.default_rng(0).random((4, 3, 48, 48), dtype=np.float32))
    with torch.no_grad():
        out, head = to_torch(graph)(x, keep=[3, 6])
    assert 0.2 < float(out.std()) < 5 and abs(float(out.mean())) < 2
    assert 0.2 < float(head.std()) < 5


# -- the collection's [local] cfgs ---------------------------------------------------------------------------
def _local_cfgs() -> list[Path]:
    return [path for path in collection_cfgs() if any(name == "local" for _, name in section_headers(path))]


@pytest.mark.parametrize("path", _local_cfgs(), ids=lambda path: path.name)
def test_collection_cfgs_with_local_load_and_run(path: Path, tmp_path: Path) -> None:
    graph = load_cfg(path, warn=quiet)
    local = next(layer for layer in graph.layers if isinstance(layer, L.Local))
    c, h, w = local.in_shape
    geometry = (c, h, w, local.filters, local.size, local.stride, local.pad)
    assert local.params == darknet_floats(*geometry)
    _run_small(graph)


def test_yolov1_like_network_runs_and_round_trips(tmp_path: Path) -> None:
    graph = loads_cfg(YOLOV1_LIKE, "yolov1-like.cfg", warn=quiet)
    random_weights(graph, seed=1)
    write_weights(graph, tmp_path / "a.weights")
    again = loads_cfg(cfg_text(graph), "again.cfg", warn=quiet)
    read_weights(again, tmp_path / "a.weights")
    write_weights(again, tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    _run_small(again)


def _run_small(graph: Graph) -> None:
    """Random weights (unless loaded) and one forward pass; a full-size model (yolov1: ~270 M floats) is
    checked by its shapes and sizes alone."""
    if graph.params > 5e7:
        return
    if any(layer.weights is None for layer in graph.layers if layer.weight_layout()):
        random_weights(graph, seed=0)
    x = torch.from_numpy(np.random.default_rng(2).random((1, *graph.input_shape), dtype=np.float32))
    with torch.no_grad():
        outputs = to_torch(graph)(x)
    assert all(bool(torch.isfinite(out).all()) for out in outputs)


# -- pruning: the local's input channels go, compensated exactly; its outputs are a fixed boundary ----------
PRUNE_CFG = """
[net]
width=10
height=10
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=0
activation=leaky

[local]
size=3
stride=2
pad=1
filters=6
activation=leaky

[connected]
output=7
activation=linear
"""


def test_pruning_its_input_is_exact_at_every_position() -> None:
    graph = loads_cfg(PRUNE_CFG, "prune.cfg", warn=quiet)
    random_weights(graph, seed=3)
    result = prune(graph, "slim", percent=0.5, round_to=1)
    kept = result.kept_channels[1]
    assert 0 < len(kept) < 16 and result.border_layers == []  # 1×1 and [local] consumers: no border caveat
    local = result.pruned.layers[2]
    assert local.in_shape[0] == len(kept) and local.out_shape == (6, 5, 5)
    reference = graph.clone()  # the keep-size model with the removed channels switched off by hand
    for index, channels in result.kept_channels.items():
        layer = reference.layers[index]
        if layer.weights is not None and "scales" in layer.weights:
            scales = np.zeros_like(layer.weights["scales"])
            scales[channels] = layer.weights["scales"][channels]
            layer.weights = {**layer.weights, "scales": scales}
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 10, 10)))
    with torch.no_grad():
        want = to_torch(reference).double()(x, keep=[2, 3])
        got = to_torch(result.pruned).double()(x, keep=[2, 3])
    for a, b in zip(got, want, strict=True):
        assert float((a - b).abs().max()) < 1e-6 * float(b.abs().max())  # float32 .weights of shifted biases


def test_its_outputs_are_not_prunable() -> None:
    graph = loads_cfg(PRUNE_CFG, "prune.cfg", warn=quiet)
    analysis = analyse(graph)
    assert not analysis.unit_prunable[analysis.output_units[2]].any()
    assert analysis.unit_prunable[analysis.input_units[2][0]].all()
