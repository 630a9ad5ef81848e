"""The check `prune` runs before it writes (``cfgsurgeon.verify``): its numpy engine computes what OpenCV's
darknet importer computes; it passes correct prunings (channels, residual units, both) at the reduced input
size and fails deliberately wrong ones (a wrong channel, a forgotten compensation, altered tensors after
removing a unit); where the old full-size torch comparison (pruned vs masked original, zero padding) found
the pruning exact, so does the new one, and both catch the same wrong pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CFG_DIR, REPO_CFG_DIR, SHARED_MARK, quiet

from cfgsurgeon import layers as L
from cfgsurgeon import load_cfg, loads_cfg, write_weights
from cfgsurgeon.api import Model
from cfgsurgeon.emit import numpy_ops
from cfgsurgeon.emit.heads import head_layers
from cfgsurgeon.ir import Graph
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.surgery.prune import PruneResult, prune
from cfgsurgeon.verify import TOLERANCE, VerificationFailed, smallest_input, verify_prune

NANO, RES = REPO_CFG_DIR / "yolo-nano.cfg", REPO_CFG_DIR / "yolo-nano-res.cfg"


def model(cfg: Path, dead_fraction: float = 0.0, seed: int = 1) -> Graph:
    graph = load_cfg(cfg, warn=quiet)
    random_weights(graph, seed=seed, dead_fraction=dead_fraction)
    return graph


def twin(graph: Graph, layer: L.Layer) -> L.Layer:
    return next(other for other in graph.layers if (other.line, other.kind) == (layer.line, layer.kind))


# -- the engine against OpenCV -----------------------------------------------------------------------------


def opencv_head_inputs(graph: Graph, folder: Path, x: np.ndarray) -> list[np.ndarray]:
    """OpenCV's outputs of the convolutions feeding the heads, from the cfg and weights written so that
    OpenCV computes darknet's formulas."""
    pytest.importorskip("cv2")
    from test_torch_vs_opencv import opencv_net, write_for_opencv

    net = opencv_net(*write_for_opencv(graph, folder))
    net.setInput(x[None])
    names = [f"conv_{graph.index_of(head.inputs[0])}" for head in head_layers(graph)]
    return [np.asarray(blob)[0] for blob in net.forward(names)]


@pytest.mark.parametrize("cfg", [NANO, RES], ids=lambda path: path.stem)
def test_the_engine_computes_what_opencv_computes(cfg: Path, tmp_path: Path):
    graph = model(cfg)
    x = np.random.default_rng(0).random(graph.input_shape, dtype=np.float32)
    feeding = [graph.index_of(head.inputs[0]) for head in head_layers(graph)]
    ours = numpy_ops.run(graph, x, feeding)
    theirs = opencv_head_inputs(graph, tmp_path, x)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())


# -- correct prunings pass, wrong ones fail ----------------------------------------------------------------

CORRECT = {
    "slim 50% (live channels)": (NANO, {"method": "slim", "percent": 0.5}),
    "shortcut 40%": (RES, {"method": "shortcut", "percent": 0.4}),
    "layer": (RES, {"method": "layer", "shortcuts": 1}),
    "layer-channel": (RES, {"method": "layer-channel", "percent": 0.5, "shortcuts": 1}),
}


@pytest.mark.parametrize("name", CORRECT)
def test_correct_prunings_pass(name: str):
    cfg, options = CORRECT[name]
    result = prune(model(cfg), **options)
    verification = verify_prune(result)
    assert verification.skipped is None and verification.error is not None
    assert 0 <= verification.error < TOLERANCE
    assert verification.input_shape[1:] == smallest_input(result.original) < result.original.input_shape[1:]


def narrowed_conv(result: PruneResult) -> L.Convolutional:
    return next(
        layer
        for layer in result.pruned.layers
        if isinstance(layer, L.Convolutional) and layer.filters < twin(result.original, layer).filters
    )


def swap_two_filters(result: PruneResult) -> None:
    """The classic slicing bug: a kept filter's tensors taken from its neighbour."""
    layer = narrowed_conv(result)
    order = np.arange(layer.filters)
    order[[0, 1]] = order[[1, 0]]
    layer.weights = {
        name: (array.reshape(layer.filters, -1)[order].reshape(array.shape) if array.ndim else array)
        for name, array in layer.weights.items()
    }


def forget_compensation(result: PruneResult) -> None:
    """A consumer of removed live channels keeps its original BN shift: their constants are lost."""
    consumer = result.pruned.layers[result.border_layers[0]]
    original = twin(result.original, consumer)
    kept = result.kept_channels[original.index]
    shift = "rolling_mean" if "rolling_mean" in consumer.weights else "biases"
    consumer.weights = {**consumer.weights, shift: original.weights[shift][kept]}


def alter_after_removed_unit(result: PruneResult) -> None:
    """After removing a residual unit, a kept convolution's tensors are not the original's."""
    layer = next(layer for layer in result.pruned.layers[result.removed_shortcuts[0] :] if layer.weights)
    layer.weights = {**layer.weights, "weights": layer.weights["weights"] * np.float32(1.05)}


WRONG = {
    "swapped filters": (NANO, {"method": "slim", "percent": 0.5}, swap_two_filters),
    "forgotten compensation": (NANO, {"method": "slim", "percent": 0.5}, forget_compensation),
    "altered after a removed unit": (RES, {"method": "layer", "shortcuts": 1}, alter_after_removed_unit),
}


@pytest.mark.parametrize("name", WRONG)
def test_wrong_prunings_fail(name: str):
    cfg, options, damage = WRONG[name]
    result = prune(model(cfg), **options)
    damage(result)
    with pytest.raises(VerificationFailed, match=r"differ .* by \S+ of the largest output"):
        verify_prune(result)


def test_a_failed_verification_writes_nothing_and_no_verify_skips_it(tmp_path: Path, monkeypatch):
    graph = model(NANO)
    path = tmp_path / "model.weights"
    write_weights(graph, path)
    parent = Model.load(NANO, path)

    def damaged(self, graph):
        result = prune(graph, "slim", percent=0.5)
        swap_two_filters(result)
        return result

    from cfgsurgeon.api import editing

    monkeypatch.setattr(editing._PruneRequest, "prune", damaged)
    with pytest.raises(VerificationFailed):
        parent.prune("slim", percent=0.5).save(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    unchecked = parent.prune("slim", percent=0.5, verify=False)
    assert unchecked.report["compensation"]["measured_relative_error"] is None


def test_layer_pruning_is_measured_now():
    """Residual units removed: the report carries a measured error (it was null before)."""
    graph = model(RES)
    pruned = Model(graph).prune("layer", shortcuts=1)
    assert pruned.report["compensation"]["measured_relative_error"] < TOLERANCE
    assert pruned.report["compensation"]["verification_skipped"] is None


def test_a_cfg_the_engine_cannot_run_is_skipped_with_the_reason():
    text = (
        "[net]\nwidth=16\nheight=16\nchannels=3\n\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"
        "[reorg]\nstride=2\n\n"
        "[convolutional]\nfilters=4\nsize=1\nstride=1\nactivation=linear\n"
    )
    graph = loads_cfg(text, "reorg.cfg", warn=quiet)
    random_weights(graph, seed=0)
    pruned = Model(graph).prune("slim", percent=0.25)
    compensation = pruned.report["compensation"]
    reason = "verification skipped: layer 2 [reorg] (Reorg) has no numpy implementation"
    assert compensation["measured_relative_error"] is None and compensation["verification_skipped"] == reason
    assert f"warning: {reason}" in pruned.lines()


# -- the old full-size verification's conclusion -----------------------------------------------------------


def old_full_size_error(result: PruneResult) -> float:
    """What `prune` measured before: torch, the cfg's own input size, pruned vs masked (zero padding)."""
    torch = pytest.importorskip("torch")
    from cfgsurgeon.emit.torch import to_torch

    c, h, w = result.original.input_shape
    x = torch.from_numpy(np.random.default_rng(0).random((1, c, h, w), dtype=np.float32))
    with torch.inference_mode():
        pairs = zip(to_torch(result.pruned)(x), to_torch(result.masked())(x), strict=True)
        return max(float((a - b).abs().max() / b.abs().max()) for a, b in pairs)


EXACT = {
    "nano slim 20% of 30% dead": (NANO, {"method": "slim", "percent": 0.2}),
    "res shortcut, threshold 1e-9": (RES, {"method": "shortcut", "threshold": 1e-9}),
    "res regular 20%": (RES, {"method": "regular", "percent": 0.2}),
}


@pytest.mark.parametrize("name", EXACT)
def test_the_conclusion_is_the_old_full_size_ones(name: str):
    """Only dead channels go: the old check found the pruning exact (no border effect), so does the new
    one; after swapping two filters the old check measures a large error and the new one fails."""
    cfg, options = EXACT[name]
    result = prune(model(cfg, dead_fraction=0.3), **options)
    assert result.border_layers == []
    assert old_full_size_error(result) < 1e-5 and verify_prune(result).error < 1e-5
    swap_two_filters(result)
    assert old_full_size_error(result) > 1e-2
    with pytest.raises(VerificationFailed):
        verify_prune(result)


@SHARED_MARK
def test_smallest_input_of_yolov4():
    """Worked out by hand: the route after each ×2 upsample joins maps of ceil(s/32)·2 = ceil(s/16) and
    ceil(s/16)·2 = ceil(s/8) pixels, first true for s = 25 (1, 2, 4); every stride-2 conv rounds up."""
    graph = load_cfg(CFG_DIR / "yolov4.cfg", warn=quiet)
    assert smallest_input(graph) == (25, 25)
