"""The torch backend's inference model (``emit.torch.inference_model``: batch norms folded into their
convolutions, channels-last weights and input), what ``detect`` and ``bench`` run: against the unfolded
training module (the same network, float32 rounding apart) and against OpenCV's darknet importer, the
independent implementation ``test_torch_vs_opencv.py`` compares the unfolded module with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CFG_DIR, REPO_CFG_DIR, REPORT, SHARED_MARK, quiet

from cfgsurgeon import layers as L
from cfgsurgeon import load_cfg, loads_cfg
from cfgsurgeon.ir import Graph
from cfgsurgeon.randinit import random_weights

torch = pytest.importorskip("torch")

from cfgsurgeon.emit.torch import channels_last, inference_model, to_torch  # noqa: E402
from cfgsurgeon.runtimes import make_runner  # noqa: E402

FOLDED_TOLERANCE = 1e-5  # max|folded − unfolded| / max|unfolded| per head: float32 rounding only

# Every way a convolution meets a batch norm: shared weights at another dilation, groups, antialiasing
# (the blur after the activation), an xnor convolution (its own folding, left alone), [connected] with
# batch_normalize (not folded), a standalone [batchnorm], a convolution with its own bias.
MIXED = """
[net]
width=32
height=32
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
filters=8
size=3
stride=1
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
dilation=2
share_index=-1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
groups=8
size=3
stride=2
pad=1
activation=swish

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
antialiasing=1
activation=leaky

[batchnorm]

[convolutional]
batch_normalize=1
xnor=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=8
size=1
stride=1
activation=logistic

[connected]
batch_normalize=1
output=10
activation=leaky
"""


def _random(graph: Graph, size: int | None = None) -> Graph:
    if size is not None:
        graph.net.width = graph.net.height = size
        graph.infer()
    random_weights(graph, seed=0)
    return graph


def _outputs(model, graph: Graph, x: np.ndarray, keep: list[int] | None = None) -> list[np.ndarray]:
    with torch.inference_mode():
        return [out.numpy() for out in model(channels_last(torch.from_numpy(x)), keep=keep)]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _folded_vs_unfolded(graph: Graph, keep: list[int] | None = None) -> tuple[float, float]:
    """max relative error of the folded model against the unfolded one, and of the unfolded one against
    itself in float64 (the float32 rounding that any reordering of the sums may show)."""
    x = np.random.default_rng(1).random((2, *graph.input_shape), dtype=np.float32)
    unfolded = to_torch(graph)
    ours = _outputs(unfolded, graph, x, keep)
    folded = _outputs(inference_model(graph), graph, x, keep)
    with torch.inference_mode():
        exact = [out.numpy() for out in unfolded.double()(torch.from_numpy(x).double(), keep=keep)]
    return (
        max(_relative(f, u) for f, u in zip(folded, ours, strict=True)),
        max(_relative(u, e) for u, e in zip(ours, exact, strict=True)),
    )


def test_mixed_layers_fold_and_agree() -> None:
    graph = _random(loads_cfg(MIXED, warn=quiet))
    model = inference_model(graph)
    # left with their batch norms: [batchnorm] (no convolution), xnor (folded its own way), [connected]
    assert [i for i, block in enumerate(model.blocks) if hasattr(block, "bn")] == [5, 6, 8]
    assert _folded_vs_unfolded(graph, keep=list(range(len(graph.layers))))[0] <= FOLDED_TOLERANCE


def test_training_module_keeps_its_batch_norms() -> None:
    graph = _random(load_cfg(REPO_CFG_DIR / "yolo-nano.cfg", warn=quiet))
    before = {
        i: {k: v.copy() for k, v in layer.weights.items()}
        for i, layer in enumerate(graph.layers)
        if layer.weights
    }
    inference_model(graph)
    trained = to_torch(graph)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in trained.modules()) == sum(
        isinstance(layer, L.Convolutional) and layer.batch_normalize for layer in graph.layers
    )
    for i, tensors in before.items():  # the graph's weights are left as they were
        for name, value in tensors.items():
            assert np.array_equal(graph.layers[i].weights[name], value)


@SHARED_MARK
@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("yolov3-tiny.cfg", 128),
        ("yolov4-tiny.cfg", 128),
        ("yolov4.cfg", 64),
        ("yolov7-tiny.cfg", 128),
        pytest.param("enet-coco.cfg", 64, marks=pytest.mark.slow),  # scale_channels, but 2-3 min under load
        ("yolov2.cfg", 64),
    ],
)
def test_folded_equals_unfolded(name: str, size: int) -> None:
    """Within 1e-5, or on a deep net (yolov4) within twice the unfolded model's own float32 error."""
    graph = _random(load_cfg(CFG_DIR / name, warn=quiet), size)
    folded, rounding = _folded_vs_unfolded(graph)
    REPORT[f"folded {name}"] = f"{folded:.1e} vs unfolded (unfolded vs float64 {rounding:.1e})"
    assert folded <= max(FOLDED_TOLERANCE, 2 * rounding)


def test_torch_runner_runs_the_inference_model() -> None:
    graph = _random(load_cfg(REPO_CFG_DIR / "yolo-nano.cfg", warn=quiet))
    x = np.random.default_rng(2).random((1, *graph.input_shape), dtype=np.float32)
    outputs = make_runner(graph, "torch", threads=1)(x)
    expected = _outputs(inference_model(graph), graph, x)
    for out, want in zip(outputs, expected, strict=True):
        assert out.flags.c_contiguous
        assert np.array_equal(out, want)


@SHARED_MARK
@pytest.mark.parametrize("name", ["yolov4-tiny.cfg", "yolov3-tiny.cfg"])
def test_folded_matches_opencv(name: str, tmp_path: Path) -> None:
    """Every head of the folded model against OpenCV's rows, as test_torch_vs_opencv compares the
    unfolded one (raw [yolo] space and decoded rows, same tolerance)."""
    pytest.importorskip("cv2")
    from test_torch_vs_opencv import (
        TOLERANCE,
        _raw_rows,
        _yolo_rows_to_raw,
        compare_rows,
        opencv_blob_names,
        opencv_net,
        write_for_opencv,
    )

    from cfgsurgeon.postprocess import decode

    graph = _random(load_cfg(CFG_DIR / name, warn=quiet), 128)
    net = opencv_net(*write_for_opencv(graph, tmp_path))
    x = np.random.default_rng(1).random((1, *graph.input_shape), dtype=np.float32)
    heads = [layer for layer in graph.layers if isinstance(layer, L.Yolo)]
    names = opencv_blob_names(net, graph)
    net.setInput(x)
    blobs = net.forward([names[layer.index] for layer in heads])
    ours = _outputs(inference_model(graph), graph, x)
    net_hw = graph.input_shape[1:]
    for layer, mine, theirs in zip(heads, ours, blobs, strict=True):
        rows = decode(layer, mine[0], net_hw)
        assert compare_rows(layer, rows, theirs) <= TOLERANCE
        raw = _yolo_rows_to_raw(layer, theirs.reshape(rows.shape), net_hw)
        assert compare_rows(layer, _raw_rows(layer, mine[0]), raw, decoded=False) <= TOLERANCE


def test_default_threads_leaves_the_busy_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from cfgsurgeon import runtimes

    monkeypatch.setattr(runtimes.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    # the load average counts this process too while it runs: one unit of it is ours
    for load, threads in [(0.2, 4), (1.5, 4), (2.2, 3), (4.0, 1), (15.0, 1)]:
        monkeypatch.setattr(runtimes.os, "getloadavg", lambda load=load: (load, load, load))
        runtimes.default_threads.cache_clear()
        assert runtimes.default_threads() == threads
    runtimes.default_threads.cache_clear()
