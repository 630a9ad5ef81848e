"""The PyTorch backend against an independent implementation: OpenCV's darknet importer (``cv2.dnn``).

For every cfg of the collection that OpenCV loads, both run the same random input through the same
well-conditioned random weights (``randinit.random_weights``, written with ``write_weights``) and we compare

* every darknet layer end to end (our ``model(x, keep=…)`` against OpenCV's blob of that layer),
* every darknet layer on its own: our block fed with OpenCV's blobs of its inputs (no error accumulation, so
  this is the sharp test of each layer's semantics; detection heads are compared as decoded rows),
* every detection head end to end, as decoded rows (``postprocess.decode`` of our output against OpenCV's
  rows) and, for [yolo], also in our module's own output space (:func:`_yolo_rows_to_raw`), which stays well
  conditioned where ``exp`` in the decoded sizes magnifies a deep net's accumulated fp32 noise,

each as ``max|ours − cv| / max|cv| ≤ 1e-4``. Cfgs OpenCV refuses, and the few it runs with different
semantics, are listed below with the reason; ``test_torch_layers.py`` checks those layer types against numpy
implementations of darknet's semantics. The survey is also in ``tests/OPENCV_COVERAGE.md``.

How OpenCV's importer differs from darknet, and what the harness does about it:

* BN epsilon: OpenCV uses 1e-6, darknet 1e-5. The weights file given to OpenCV stores
  ``rolling_variance + 9e-6`` so both divide by the same ``sqrt(var + 1e-5)``; without it the relative
  difference grows by ~1e-5 per BN layer (2.4e-4 after yolov3-tiny's 13).
* Winograd convolutions and layer fusion are switched off (``enableWinograd(False)``,
  ``enableFusion(False)``) so OpenCV computes every darknet sub-layer in plain fp32 and each blob we ask for
  is the unfused one.
* OpenCV's [yolo]/[region] outputs are decoded rows whose class columns are zeroed below ``thresh``; the cfg
  given to OpenCV sets ``thresh=0.001`` on the heads (our side ignores ``thresh``) so most class columns are
  compared, and where OpenCV zeroed one, ours must be below the threshold ([region] also runs NMS, which
  zeroes more; there only non-zero columns are compared).
* Blob names: OpenCV names the sub-layers of darknet layer ``i`` ``<kind>_<i>``, except the activation,
  named after the *next* index (``conv_0, bn_0, leaky_1``), and [region], named ``detection_out``; the output
  of darknet layer ``i`` is the last sub-layer created for it (:func:`opencv_blob_names`; every compared
  blob must have our output's size, and then its values must agree).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import CFG_DIR, HAVE_SHARED, REPORT, SHARED_MARK, collection_cfgs, quiet

from cfgsurgeon import CfgError, cfg_text, load_cfg, write_weights
from cfgsurgeon import layers as L
from cfgsurgeon.ir import Graph
from cfgsurgeon.postprocess import anchor_table, decode

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
    pytest.skip("this OpenCV has no darknet importer (OpenCV 5 removed it)", allow_module_level=True)

from cfgsurgeon.emit.torch import to_torch  # noqa: E402  (after the importorskip)
from cfgsurgeon.randinit import random_weights  # noqa: E402

pytestmark = SHARED_MARK

TOLERANCE = 1e-4  # max|ours − cv| / max|cv|, per compared tensor
SEED = 0  # random_weights
INPUT_SEED = 1
OPENCV_BN_EPS = 1e-6  # darknet_io.cpp setBatchNorm
DARKNET_BN_EPS = 1e-5
HEAD_THRESH = 0.001  # written into the heads of the cfg OpenCV reads


@dataclass(frozen=True)
class Case:
    """How one cfg is compared. ``size``: square input (a multiple of the net's stride; None keeps the cfg's
    own, needed with [connected] and [crop]); ``upto``: compare layers ``< upto`` only (OpenCV computes layer
    ``upto`` differently from darknet, see ``note``); ``slow``: outside the default run."""

    size: int | None
    slow: bool = False
    upto: int | None = None
    note: str = ""


# -- the survey: every cfg of the collection in exactly one of the four tables -------------------------------

# test_torch_layers.py checks xnor convolutions against darknet's formulas instead.
_XNOR_NOTE = "xnor=1 convolutions: OpenCV ignores xnor and runs float convolutions"

# OpenCV loads and runs these, and computes what darknet computes (up to ``upto`` where given).
OPENCV_RUNS: dict[str, Case] = {
    # the default run: a representative set (yolov3/v4/v7 tiny, prn, yolov4 at a small input, enet with
    # scale_channels, YOLOv2 [region] + [reorg], a classifier with [avgpool]/[softmax], one with [connected])
    "yolov3-tiny.cfg": Case(128),
    "yolov3-tiny-prn.cfg": Case(128),
    "yolov4-tiny.cfg": Case(128),
    "yolov7-tiny.cfg": Case(128),
    "yolov4.cfg": Case(64),
    "enet-coco.cfg": Case(64),
    "efficientnet_b0.cfg": Case(64),
    "yolov2-tiny.cfg": Case(128),
    "yolov2.cfg": Case(64),
    "darknet19.cfg": Case(64),
    "cifar.cfg": Case(None),
    "cifar.test.cfg": Case(32, upto=16, note="[softmax] temperature=3: OpenCV ignores temperature"),
    "yolov3-tiny_xnor.cfg": Case(128, upto=2, note=_XNOR_NOTE),
    # slow: the rest
    "cd53paspp-gamma.cfg": Case(128, slow=True),
    "alexnet.cfg": Case(None, slow=True),
    "csdarknet53-omega.cfg": Case(64, slow=True),
    "cspx-p7-mish-omega.cfg": Case(64, slow=True),
    "csresnext50-panet-spp-original-optimal.cfg": Case(128, slow=True),
    "csresnext50-panet-spp.cfg": Case(128, slow=True),
    "darknet.cfg": Case(64, slow=True),
    "darknet19_448.cfg": Case(64, slow=True),
    "darknet53.cfg": Case(64, slow=True),
    "densenet201.cfg": Case(64, slow=True),
    "extraction.cfg": Case(64, slow=True),
    "extraction.conv.cfg": Case(None, slow=True),
    "extraction22k.cfg": Case(None, slow=True),
    "go.test.cfg": Case(
        None, slow=True, upto=14, note="[softmax] over the flat 19x19 board: OpenCV's softmax is per pixel"
    ),
    "jnet-conv.cfg": Case(64, slow=True),
    "tiny-yolo_xnor.cfg": Case(128, slow=True, upto=2, note=_XNOR_NOTE),
    "darknet53_448_xnor.cfg": Case(64, slow=True, upto=1, note=_XNOR_NOTE),
    "resnet152_trident.cfg": Case(
        64, slow=True, upto=167, note="dilation=2/3 convolutions (from layer 167): OpenCV ignores dilation"
    ),
    "tiny-yolo-voc.cfg": Case(128, slow=True),
    "tiny-yolo.cfg": Case(128, slow=True),
    "tiny.cfg": Case(64, slow=True),
    "vgg-conv.cfg": Case(64, slow=True),
    "writing.cfg": Case(64, slow=True),
    "yolo-voc.2.0.cfg": Case(64, slow=True),
    "yolo-voc.cfg": Case(64, slow=True),
    "yolo.2.0.cfg": Case(64, slow=True),
    "yolo.cfg": Case(64, slow=True),
    "yolov2-tiny-voc.cfg": Case(128, slow=True),
    "yolov2-voc.cfg": Case(64, slow=True),
    "yolov3-openimages.cfg": Case(64, slow=True),
    "yolov3-spp.cfg": Case(64, slow=True),
    "yolov3-tiny_3l.cfg": Case(128, slow=True),
    "yolov3-tiny_obj.cfg": Case(128, slow=True),
    "yolov3-voc.cfg": Case(64, slow=True),
    "yolov3-voc.yolov3-giou-40.cfg": Case(64, slow=True),
    "yolov3.cfg": Case(64, slow=True),
    "yolov3.coco-giou-12.cfg": Case(64, slow=True),
    "yolov3_5l.cfg": Case(128, slow=True),
    "yolov4-csp-s-mish.cfg": Case(64, slow=True),
    "yolov4-csp-swish.cfg": Case(64, slow=True),
    "yolov4-csp-x-mish.cfg": Case(64, slow=True),
    "yolov4-csp-x-swish-frozen.cfg": Case(64, slow=True),
    "yolov4-csp-x-swish.cfg": Case(64, slow=True),
    "yolov4-csp.cfg": Case(64, slow=True),
    "yolov4-custom.cfg": Case(64, slow=True),
    "yolov4-p5-frozen.cfg": Case(64, slow=True),
    "yolov4-p5.cfg": Case(64, slow=True),
    "yolov4-p6.cfg": Case(128, slow=True),
    "yolov4-tiny-3l.cfg": Case(128, slow=True),
    "yolov4-tiny-custom.cfg": Case(128, slow=True),
    "yolov4_new.cfg": Case(64, slow=True),
    "yolov4x-mish.cfg": Case(64, slow=True),
    "yolov7.cfg": Case(64, slow=True),
    "yolov7x.cfg": Case(64, slow=True),
}


@dataclass(frozen=True)
class Refusal:
    """What OpenCV raises for a cfg: ``message`` (a fragment), while reading the cfg, or (``with_weights``)
    only once our weights are loaded and a forward is attempted."""

    size: int | None
    message: str
    with_weights: bool = False
    slow: bool = False


# OpenCV refuses these; our backend builds them (test_torch_layers.py covers their layer types).
OPENCV_REFUSES: dict[str, Refusal] = {
    "Gaussian_yolov3_BDD.cfg": Refusal(128, "Unknown layer type: Gaussian_yolo"),
    # [yolo] with more anchors than num= (darknet reads only the first 2·num)
    "cspx-p7-mish.cfg": Refusal(128, "(num_of_anchors * 2) == anchors_vec.size()"),
    "cspx-p7-mish_hp.cfg": Refusal(128, "(num_of_anchors * 2) == anchors_vec.size()"),
    "efficientnet-lite3.cfg": Refusal(64, "Unsupported activation: relu6"),
    "strided.cfg": Refusal(None, "Unsupported activation: ramp"),
    "t1.test.cfg": Refusal(None, "Unknown layer type: detection"),
    # [crop] without noadjust: OpenCV adds an 'adjust_crop' sub-layer that its weights reader does not count,
    # so the convolution weights land on the wrong layers
    "vgg-16.cfg": Refusal(None, "!blobs.empty() || inputs.size() > 1", with_weights=True, slow=True),
    "yolov4-sam-mish-csp-reorg-bfm.cfg": Refusal(64, "Unknown layer type: reorg3d"),
    "yolov4-tiny_contrastive.cfg": Refusal(128, "Unknown layer type: local_avgpool"),
    # [region] tree= (the 9k.tree file is not in the collection: our side builds with a synthetic one)
    "yolo9000.cfg": Refusal(64, "Yolo9000 is not implemented"),
}

# Our PyTorch backend refuses these, so there is nothing to compare: what it says, and what OpenCV does.
TORCH_REFUSES: dict[str, tuple[str, str]] = {}

# load_cfg refuses these (recurrent layers; shortcuts darknet itself rejects): not part of the survey.
CFG_REFUSES: dict[str, str] = {
    "crnn.train.cfg": "[crnn]",
    "gru.cfg": "[gru]",
    "lstm.train.cfg": "[lstm]",
    "rnn.cfg": "[rnn]",
    "rnn.train.cfg": "[rnn]",
    "yolov3-tiny_occlusion_track.cfg": "[crnn]",
    "resnet50.cfg": "shortcut of different sizes (darknet refuses it too)",
    "resnet101.cfg": "shortcut of different sizes (darknet refuses it too)",
    "resnet152.cfg": "shortcut of different sizes (darknet refuses it too)",
    "resnext152-32x4d.cfg": "shortcut of different sizes (darknet refuses it too)",
}


def _cases(slow: bool) -> list:
    return [
        pytest.param(name, case, id=name, marks=[pytest.mark.slow] if case.slow else [])
        for name, case in OPENCV_RUNS.items()
        if case.slow == slow
    ]


# -- building both sides -------------------------------------------------------------------------------------


def prepare(name: str, size: int | None) -> Graph:
    """The collection cfg at ``size``×``size`` (when given) with seeded well-conditioned random weights."""
    graph = load_cfg(CFG_DIR / name, warn=quiet)
    if size is not None:
        graph.net.width = size
        graph.net.height = size
        graph.infer()
    random_weights(graph, seed=SEED)
    return graph


def write_for_opencv(graph: Graph, folder: Path) -> tuple[Path, Path]:
    """The cfg (heads with ``thresh``) and weights (BN variances shifted by the epsilon difference) that make
    OpenCV compute darknet's formulas. ``graph`` is left as it was."""
    cfg, weights = folder / "opencv.cfg", folder / "opencv.weights"
    heads = [layer for layer in graph.layers if isinstance(layer, L.Yolo | L.Region)]
    saved_options = [dict(layer.options) for layer in heads]
    saved_weights = {layer.index: layer.weights for layer in graph.layers}
    try:
        for layer in heads:
            layer.options["thresh"] = str(HEAD_THRESH)
        cfg.write_text(cfg_text(graph))
        for layer in graph.layers:
            if layer.weights is not None and "rolling_variance" in layer.weights:
                variance = layer.weights["rolling_variance"].astype(np.float64)
                shifted = (variance + DARKNET_BN_EPS - OPENCV_BN_EPS).astype(np.float32)
                layer.weights = {**layer.weights, "rolling_variance": shifted}
        write_weights(graph, weights)
    finally:
        for layer, options in zip(heads, saved_options, strict=True):
            layer.options.clear()
            layer.options.update(options)
        for layer in graph.layers:
            layer.weights = saved_weights[layer.index]
    return cfg, weights


def opencv_net(cfg: Path, weights: Path):
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.enableWinograd(False)
    net.enableFusion(False)
    return net


# Sub-layer kinds OpenCV creates for a darknet `activation=` (named after the next darknet index).
OPENCV_ACTIVATIONS = frozenset({"relu", "leaky", "swish", "silu", "mish", "logistic", "tanh"})
_NAME = re.compile(r"(?P<kind>.+)_(?P<index>\d+)")


def opencv_blob_names(net, graph: Graph) -> dict[int, str]:
    """Darknet layer index → name of the OpenCV blob holding that layer's output."""
    found: dict[int, str] = {}
    for name in net.getLayerNames():  # in creation order, so the last one of a darknet layer wins
        match = _NAME.fullmatch(name)
        if match:
            index = int(match["index"]) - (match["kind"] in OPENCV_ACTIVATIONS)
            found[index] = name
    for layer in graph.layers:
        if isinstance(layer, L.Region):
            found[layer.index] = "detection_out"
    return {i: name for i, name in found.items() if 0 <= i < len(graph.layers)}


def _as_output(blob: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """An OpenCV blob (e.g. ``(1, N)`` after [connected]) in darknet's ``(1, C, H, W)``."""
    return np.ascontiguousarray(blob).reshape(1, *shape)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = np.abs(theirs).max()
    return float(np.abs(ours - theirs).max() / scale) if scale > 0 else float(np.abs(ours).max())


def compare_rows(layer: L.Layer, ours: np.ndarray, theirs: np.ndarray, decoded: bool = True) -> float:
    """Rows: box and objectness columns everywhere, class columns where OpenCV kept them; where OpenCV
    zeroed a decoded [yolo] class column, ours must be below the threshold."""
    theirs = theirs.reshape(ours.shape)
    kept = theirs[:, 5:] != 0
    error = relative_error(ours[:, :5], theirs[:, :5])
    if kept.any():
        delta = np.abs(ours[:, 5:] - theirs[:, 5:])[kept].max()
        error = max(error, float(delta / np.abs(theirs[:, 5:]).max()))
    if decoded and isinstance(layer, L.Yolo):
        assert (ours[:, 5:][~kept] <= HEAD_THRESH * (1 + TOLERANCE)).all(), "OpenCV dropped a class we keep"
    return error


def _yolo_rows_to_raw(layer: L.Yolo, rows: np.ndarray, net_hw: tuple[int, int]) -> np.ndarray:
    """Invert OpenCV's decoding of a [yolo] layer: rows ``(bx, by, bw, bh, obj, p…)`` → the layer's own
    output ``(x, y, w, h, obj, class…)`` per (row, column, anchor), as our module stores it. The inverse is
    well conditioned (``log``/``sqrt`` of the sizes), unlike ``exp`` in the forward direction, which
    multiplies a deep net's accumulated fp32 noise in ``w``, ``h`` by their magnitude. Class columns that
    OpenCV zeroed come back as 0."""
    _, h, w = layer.out_shape
    n = len(layer.mask)
    out = rows.reshape(h, w, n, -1).astype(np.float64).copy()
    anchors = anchor_table(layer)[np.asarray(layer.mask)]
    net_h, net_w = net_hw
    out[..., 0] = out[..., 0] * w - np.arange(w)[None, :, None]
    out[..., 1] = out[..., 1] * h - np.arange(h)[:, None, None]
    size_w, size_h = out[..., 2] * net_w / anchors[:, 0], out[..., 3] * net_h / anchors[:, 1]
    if layer.new_coords:
        out[..., 2], out[..., 3] = np.sqrt(size_w / 4), np.sqrt(size_h / 4)
    else:
        out[..., 2], out[..., 3] = np.log(size_w), np.log(size_h)
    objectness = out[..., 4:5]
    out[..., 5:] = np.divide(out[..., 5:], objectness, out=np.zeros_like(out[..., 5:]), where=objectness != 0)
    return out.reshape(h * w * n, -1)


def _raw_rows(layer: L.Yolo, output: np.ndarray) -> np.ndarray:
    """Our [yolo] output ``[n][5+classes][h][w]`` as rows ordered (row, column, anchor)."""
    _, h, w = layer.out_shape
    n = len(layer.mask)
    return output.reshape(n, -1, h, w).transpose(2, 3, 0, 1).reshape(h * w * n, -1).astype(np.float64)


@dataclass
class Result:
    end_to_end: dict[int, float]
    layer_local: dict[int, float]
    heads: dict[int, float]
    decoded_rows: dict[int, float]  # end-to-end decoded rows (exp() amplifies upstream fp32 noise in w, h)
    kinds: list[str]
    seconds: float
    first_misread: float | None = None  # end-to-end error at layer ``upto``, which OpenCV computes otherwise


def compare_with_opencv(name: str, case: Case, folder: Path) -> Result:
    start = time.perf_counter()
    graph = prepare(name, case.size)
    net = opencv_net(*write_for_opencv(graph, folder))
    upto = len(graph.layers) if case.upto is None else case.upto
    names = opencv_blob_names(net, graph)
    missing = [i for i in range(upto) if i not in names]
    assert not missing, f"no OpenCV blob found for darknet layers {missing}"
    indices = list(range(upto))
    fetched = indices + ([upto] if upto < len(graph.layers) else [])

    x = np.random.default_rng(INPUT_SEED).random((1, *graph.input_shape), dtype=np.float32)
    net.setInput(x)
    blobs = dict(zip(fetched, net.forward([names[i] for i in fetched]), strict=True))
    model = to_torch(graph)
    with torch.no_grad():
        ours = dict(zip(fetched, (t.numpy() for t in model(torch.from_numpy(x), keep=fetched)), strict=True))

    net_hw = graph.input_shape[1:]
    result = Result({}, {}, {}, {}, [layer.header for layer in graph.layers], 0.0)
    if upto < len(graph.layers):
        result.first_misread = relative_error(ours[upto].reshape(-1), blobs[upto].reshape(-1))
    for i in indices:
        layer, theirs = graph.layers[i], blobs[i]
        if isinstance(layer, L.Yolo | L.Region):
            rows = decode(layer, ours[i][0], net_hw)
            result.decoded_rows[i] = compare_rows(layer, rows, theirs)
            if isinstance(layer, L.Yolo):
                raw = _yolo_rows_to_raw(layer, theirs.reshape(rows.shape), net_hw)
                result.heads[i] = compare_rows(layer, _raw_rows(layer, ours[i][0]), raw, decoded=False)
            else:  # shallow YOLOv2 nets: the decoded rows themselves stay within the tolerance
                result.heads[i] = result.decoded_rows[i]
        else:
            assert theirs.size == ours[i].size, f"layer {i}: OpenCV blob {theirs.shape}, ours {ours[i].shape}"
            result.end_to_end[i] = relative_error(ours[i].reshape(-1), theirs.reshape(-1))

    with torch.no_grad():  # each layer on OpenCV's own inputs
        for i in indices:
            layer = graph.layers[i]
            inputs = [
                torch.from_numpy(x if j < 0 else _as_output(blobs[j], graph[j].out_shape))
                for j in model.sources[i]
            ]
            mine = model.blocks[i](*inputs)[0].numpy()
            if isinstance(layer, L.Yolo | L.Region):
                result.layer_local[i] = compare_rows(layer, decode(layer, mine, net_hw), blobs[i])
            else:
                result.layer_local[i] = relative_error(mine.reshape(-1), blobs[i].reshape(-1))
    result.seconds = time.perf_counter() - start
    return result


def _check(name: str, case: Case, folder: Path) -> None:
    result = compare_with_opencv(name, case, folder)
    checks = {
        "end to end": result.end_to_end,
        "layer by layer": result.layer_local,
        "heads": result.heads,
        "decoded rows": result.decoded_rows,
    }
    REPORT[f"opencv {name}"] = (
        ", ".join(f"{what} {max(errors.values()):.1e}" for what, errors in checks.items() if errors)
        + f" ({len(result.layer_local)} layers, {result.seconds:.1f}s)"
        + (f"; layer {case.upto}, read otherwise by OpenCV: {result.first_misread:.1e}" if case.upto else "")
    )
    failures = [
        f"{what}: layer {i} [{result.kinds[i]}] relative error {error:.2e}"
        for what, errors in checks.items()
        for i, error in errors.items()
        if error > TOLERANCE
    ]
    assert not failures, "\n".join(failures[:20])
    if case.upto is not None:  # the reason we stop there still holds
        assert result.first_misread > 1e-3, f"OpenCV now agrees at layer {case.upto}: compare further"


@pytest.mark.parametrize(("name", "case"), _cases(slow=False))
def test_matches_opencv(name: str, case: Case, tmp_path: Path) -> None:
    _check(name, case, tmp_path)


@pytest.mark.parametrize(("name", "case"), _cases(slow=True))
def test_matches_opencv_slow(name: str, case: Case, tmp_path: Path) -> None:
    _check(name, case, tmp_path)


# -- the survey itself stays true ----------------------------------------------------------------------------


def test_every_collection_cfg_is_classified() -> None:
    if not HAVE_SHARED:
        pytest.skip("needs the shared collection")
    tables = [set(OPENCV_RUNS), set(OPENCV_REFUSES), set(TORCH_REFUSES), set(CFG_REFUSES)]
    names = {path.name for path in collection_cfgs()}
    assert set().union(*tables) == names
    assert sum(len(t) for t in tables) == len(names), "a cfg is in two tables"


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if r.slow else []) for n, r in sorted(OPENCV_REFUSES.items())],
)
def test_opencv_refuses(name: str, tmp_path: Path) -> None:
    refusal = OPENCV_REFUSES[name]
    graph = load_cfg(CFG_DIR / name, warn=quiet)
    if refusal.size is not None:
        graph.net.width = graph.net.height = refusal.size
        graph.infer()
    with torch.device("meta"):  # our backend has a module for every layer (no memory, no weights needed)
        to_torch(graph, tree=_flat_tree(graph, tmp_path))
    if refusal.with_weights:
        random_weights(graph, seed=SEED)
        paths = [str(p) for p in write_for_opencv(graph, tmp_path)]
    else:
        paths = [str(tmp_path / "opencv.cfg")]
        Path(paths[0]).write_text(cfg_text(graph))
    with pytest.raises(cv2.error, match=re.escape(refusal.message)):
        net = cv2.dnn.readNetFromDarknet(*paths)
        net.setInput(np.zeros((1, *graph.input_shape), dtype=np.float32))
        net.forward()


def _flat_tree(graph: Graph, folder: Path) -> Path | None:
    """A one-group softmax tree as long as the graph's tree= [region]'s classes (None if it has none)."""
    classes = [
        layer.classes for layer in graph.layers if isinstance(layer, L.Region) and "tree" in layer.options
    ]
    if not classes:
        return None
    path = folder / "flat.tree"
    path.write_text("".join(f"n{i} -1\n" for i in range(classes[0])))
    return path


@pytest.mark.parametrize("name", sorted(CFG_REFUSES))
def test_cfg_refuses(name: str) -> None:
    with pytest.raises(CfgError):
        load_cfg(CFG_DIR / name, warn=quiet)


@pytest.mark.parametrize("name", sorted(TORCH_REFUSES))
def test_torch_refuses(name: str) -> None:
    graph = load_cfg(CFG_DIR / name, warn=quiet)
    with pytest.raises(CfgError, match=re.escape(TORCH_REFUSES[name][0])):
        to_torch(graph)


def test_opencv_epsilon_compensation(tmp_path: Path) -> None:
    """The harness's premise: OpenCV divides by sqrt(var + 1e-6), so shifting the stored variance by 9e-6
    reproduces darknet's sqrt(var + 1e-5) — checked on one BN conv with tiny variances, where it matters."""
    text = "[net]\nwidth=8\nheight=8\nchannels=2\n\n[convolutional]\nbatch_normalize=1\nfilters=3\nsize=1\n"
    text += "activation=linear\n"
    path = tmp_path / "bn.cfg"
    path.write_text(text)
    graph = load_cfg(path, warn=quiet)
    random_weights(graph, seed=3)
    weights = dict(graph.layers[0].weights)
    weights["rolling_variance"] = np.array([1e-5, 3e-5, 1e-4], dtype=np.float32)
    graph.layers[0].weights = weights
    x = np.random.default_rng(0).random((1, 2, 8, 8), dtype=np.float32)
    net = opencv_net(*write_for_opencv(graph, tmp_path))
    net.setInput(x)
    theirs = net.forward()
    with torch.no_grad():
        ours = to_torch(graph)(torch.from_numpy(x))[0].numpy()
    assert relative_error(ours, theirs) < 1e-5
