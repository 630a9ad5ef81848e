"""The Keras backend (``cfgsurgeon.emit.keras``) against the torch backend, which the other test files check
against darknet's semantics (numpy references, OpenCV, darknet's own detections).

* every layer type and the options that change its semantics, on small odd-sized cfgs (xnor / binary
  convolutions and softmax trees included);
* every detection cfg of the collection the torch backend supports, at a small input, with well-conditioned
  random weights (a representative set in the default run, the rest ``slow``), plus slim-pruned yolov4-tiny
  and yolov4 from the pruning engine, and the real yolov3-tiny at 416×416;
* files and the command line: ``test_keras_files.py``.

Each comparison is ``max|keras − torch| / max|torch| ≤ 1e-4`` per output, the outputs having the same names,
shapes and NCHW layout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CFG_DIR, REPORT, SHARED_MARK, ZOO, quiet
from test_binary_and_tree_cfgs import synthetic_tree

from cfgsurgeon import CfgError, load_cfg, loads_cfg, read_weights, write_weights
from cfgsurgeon.ir import Graph
from cfgsurgeon.layers import ACTIVATIONS
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.tree import has_tree

keras = pytest.importorskip("tf_keras")

from cfgsurgeon.emit import keras as K  # noqa: E402  (after the importorskip)

TOLERANCE = 1e-4
MODELS = ZOO / "models"
needs_yolov3_tiny = pytest.mark.skipif(
    not (MODELS / "yolov3-tiny.weights").is_file(), reason="needs the shared zoo (yolov3-tiny.weights)"
)

# -- harness -------------------------------------------------------------------------------------------------


def random_input(graph: Graph, batch: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.5, 0.5, (batch, *graph.input_shape)).astype(np.float32)


def torch_outputs(graph: Graph, x: np.ndarray) -> list[np.ndarray]:
    torch = pytest.importorskip("torch")
    from cfgsurgeon.emit.torch import to_torch

    with torch.inference_mode():
        return [out.numpy() for out in to_torch(graph)(torch.from_numpy(x))]


def relative_errors(ours: list[np.ndarray], reference: list[np.ndarray]) -> list[float]:
    assert [a.shape for a in ours] == [b.shape for b in reference]
    return [
        float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) for a, b in zip(ours, reference, strict=True)
    ]


def compare(graph: Graph, x: np.ndarray | None = None) -> float:
    """Build the Keras model of ``graph``, check its names and return the worst relative error vs torch."""
    x = random_input(graph) if x is None else x
    model = K.to_keras(graph)
    assert model.input_names == ["images"]
    assert list(model.output_names) == K.output_names(graph)
    errors = relative_errors(K.run_keras(model, x), torch_outputs(graph, x))
    assert max(errors) <= TOLERANCE, errors
    return max(errors)


def small(text: str, seed: int = 0) -> Graph:
    graph = loads_cfg(text, warn=quiet)
    random_weights(graph, seed=seed)
    return graph


def net(channels: int, height: int, width: int) -> str:
    return f"[net]\nwidth={width}\nheight={height}\nchannels={channels}\n\n"


def collection(name: str, size: int | None) -> Graph:
    graph = load_cfg(CFG_DIR / name, warn=quiet)
    if size is not None:
        graph.net.width = graph.net.height = size
        graph.infer()
    random_weights(graph, seed=0)
    return graph


def with_synthetic_tree(graph: Graph, folder: Path) -> Graph:
    """yolo9000: its 9k.tree is not part of the collection; a synthetic one of the same size."""
    trees = [layer for layer in graph.layers if has_tree(layer)]
    if trees:
        graph.tree_file = str(synthetic_tree(folder / "9k.tree", trees[0].classes))
    return graph


# -- layer types ---------------------------------------------------------------------------------------------

CONV = "[convolutional]\n"
STEM = CONV + "filters=6\nsize=3\npad=1\nactivation=leaky\nbatch_normalize=1\n\n"

CASES = {
    # convolutions: padding, strides, dilation, groups, antialiasing, bias vs batch norm
    "conv dilation 2": CONV + "filters=5\nsize=3\npad=1\ndilation=2\nactivation=leaky\nbatch_normalize=1",
    "conv dilation 3 stride 2": CONV + "filters=4\nsize=3\npad=1\nstride=2\ndilation=3\nactivation=linear",
    "conv stride_x 2 stride_y 1": CONV + "filters=4\nsize=3\npad=1\nstride_x=2\nstride_y=1\nactivation=swish",
    "conv stride_y 3": CONV + "filters=4\nsize=3\npad=1\nstride=2\nstride_y=3\nactivation=logistic",
    "conv explicit padding": CONV + "filters=3\nsize=3\npadding=2\nactivation=leaky",
    "conv pad 5x5 stride 2": CONV + "filters=3\nsize=5\npad=1\nstride=2\nactivation=relu",
    "conv even kernel": CONV + "filters=3\nsize=2\npad=1\nactivation=tanh",
    "conv no padding": CONV + "filters=3\nsize=3\nstride=2\nactivation=elu",
    "conv groups": STEM + CONV + "filters=9\nsize=3\npad=1\ngroups=3\nbatch_normalize=1\nactivation=mish",
    "conv depthwise": STEM + CONV + "filters=6\nsize=3\npad=1\ngroups=6\nstride=2\nactivation=relu6",
    "conv depthwise x2": STEM + CONV + "filters=12\nsize=3\npad=1\ngroups=6\nbatch_normalize=1",
    "conv antialiasing 1": CONV + "filters=4\nsize=3\npad=1\nstride=2\nantialiasing=1\nactivation=leaky",
    "conv antialiasing 2": CONV + "filters=4\nsize=3\npad=1\nstride=2\nantialiasing=2\nactivation=leaky",
    "share_index other dilation": STEM
    + CONV
    + "filters=6\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n\n"
    + CONV
    + "filters=6\nsize=3\npad=1\ndilation=2\nshare_index=-1\nbatch_normalize=1\nactivation=leaky",
    # xnor / binary convolutions (batch norm folded in, ±mean|w| filters; xnor: ±1 input, −1 padding where
    # darknet's bit-packed GEMM runs, i.e. equal strides)
    "conv xnor": STEM + CONV + "filters=5\nsize=3\npad=1\nxnor=1\nbatch_normalize=1\nactivation=leaky",
    "conv xnor bin_output": CONV + "filters=4\nsize=3\npad=1\nxnor=1\nbin_output=1\nactivation=leaky",
    "conv xnor 32 stride 2": CONV
    + "filters=32\nsize=1\nactivation=leaky\n\n"
    + CONV
    + "filters=5\nsize=3\npad=1\nstride=2\nxnor=1\nbatch_normalize=1\nactivation=relu",
    "conv xnor unequal strides": CONV
    + "filters=32\nsize=1\nactivation=leaky\n\n"
    + CONV
    + "filters=4\nsize=3\npad=1\nstride_x=2\nstride_y=1\nxnor=1\nactivation=leaky",
    "conv binary stride 2": CONV + "filters=4\nsize=3\npad=1\nstride=2\nbinary=1\nactivation=relu",
    "conv binary depthwise dilation": STEM
    + CONV
    + "filters=12\nsize=3\npad=1\ngroups=6\ndilation=2\nbinary=1\nbatch_normalize=1\nactivation=leaky",
    "conv binary dilation 3 stride 2": CONV + "filters=4\nsize=3\npad=1\nstride=2\ndilation=3\nbinary=1",
    "conv binary groups antialiasing": STEM
    + CONV
    + "filters=9\nsize=3\npad=1\ngroups=3\nstride=2\nantialiasing=1\nbinary=1\nbatch_normalize=1",
    "connected": "[connected]\noutput=7\nactivation=leaky",
    "connected bn": STEM + "[connected]\noutput=5\nbatch_normalize=1\nactivation=linear",
    "batchnorm": "[batchnorm]",
    # pooling
    "maxpool 2/2 odd input": "[maxpool]\nsize=2\nstride=2",
    "maxpool 2/1": "[maxpool]\nsize=2\nstride=1",
    "maxpool 3/2": "[maxpool]\nsize=3\nstride=2",
    "maxpool 5/1 spp": "[maxpool]\nsize=5\nstride=1",
    "maxpool padding 0": "[maxpool]\nsize=3\nstride=2\npadding=0",
    "maxpool padding 3": "[maxpool]\nsize=3\nstride=2\npadding=3",
    "maxpool stride_x 2 stride_y 1": "[maxpool]\nsize=2\nstride_x=2\nstride_y=1",
    "maxpool stride_y 3": "[maxpool]\nsize=3\nstride=1\nstride_y=3",
    "maxpool 2/1 padding 2": "[maxpool]\nsize=2\nstride=1\npadding=2",  # one row and column more
    "maxpool_depth": STEM + "[maxpool]\nmaxpool_depth=1\nout_channels=4",
    "local_avgpool 3/2": "[local_avgpool]\nsize=3\nstride=2",
    "local_avgpool padding 3": "[local_avgpool]\nsize=3\nstride=2\npadding=3",
    "local_avgpool 4/4": "[local_avgpool]\nsize=4\nstride=4",
    "local_avgpool 4/4 padding 3": "[local_avgpool]\nsize=4\nstride=4\npadding=3",
    "avgpool": STEM + "[avgpool]",
    # resampling
    "upsample 2": "[upsample]\nstride=2",
    "upsample 3 scale 0.5": "[upsample]\nstride=3\nscale=0.5",
    "upsample -2 sum": "[upsample]\nstride=-2",
    "upsample -3 scale 1.5": "[upsample]\nstride=-3\nscale=1.5",
    "reorg3d 2": STEM + "[reorg3d]\nstride=2",
    "reorg 2": CONV + "filters=8\nsize=3\npad=1\nactivation=leaky\n\n[reorg]\nstride=2",
    "crop": "[crop]\ncrop_height=5\ncrop_width=6",
    "crop noadjust": "[crop]\ncrop_height=4\ncrop_width=3\nnoadjust=1",
    # joins
    "route two": STEM + CONV + "filters=4\nsize=1\n\n[route]\nlayers=-1,-2",
    "route groups": STEM + CONV + "filters=4\nsize=1\n\n[route]\nlayers=-1,-2\ngroups=2\ngroup_id=1",
    "shortcut": STEM + CONV + "filters=6\nsize=1\n\n[shortcut]\nfrom=-2\nactivation=leaky",
    "shortcut fewer channels": STEM + CONV + "filters=4\nsize=1\n\n" + CONV + "filters=6\nsize=1\n\n"
    "[shortcut]\nfrom=-2",
    "shortcut more channels": STEM + CONV + "filters=4\nsize=1\n\n[shortcut]\nfrom=-2",
    "shortcut per_feature relu": STEM + CONV + "filters=6\nsize=1\n\n" + CONV + "filters=6\nsize=1\n\n"
    "[shortcut]\nfrom=-2,-3\nweights_type=per_feature\nweights_normalization=relu",
    "shortcut per_channel softmax": STEM + CONV + "filters=4\nsize=1\n\n"
    "[shortcut]\nfrom=-2\nweights_type=per_channel\nweights_normalization=softmax\nactivation=mish",
    "shortcut per_layer": STEM + CONV + "filters=6\nsize=1\n\n[shortcut]\nfrom=-2\nweights_type=per_layer",
    "scale_channels": STEM + "[avgpool]\n\n" + CONV + "filters=6\nsize=1\nactivation=logistic\n\n"
    "[scale_channels]\nfrom=-3",
    "scale_channels scale_wh": STEM + CONV + "filters=6\nsize=1\nactivation=logistic\n\n"
    "[scale_channels]\nfrom=-2\nscale_wh=1",
    "sam": STEM + CONV + "filters=6\nsize=1\nactivation=logistic\n\n[sam]\nfrom=-2",
    # heads and the rest
    "yolo": CONV + "filters=14\nsize=1\nactivation=linear\n\n[yolo]\nclasses=2\nnum=2\nmask=0,1\n"
    "anchors=1,1,2,2\nscale_x_y=1.1",
    "yolo new_coords": CONV + "filters=14\nsize=1\nactivation=logistic\n\n[yolo]\nclasses=2\nnum=2\n"
    "mask=0,1\nanchors=1,1,2,2\nnew_coords=1\nscale_x_y=2.0",
    "anchor_free": CONV
    + "filters=10\nsize=1\nactivation=linear\n\n"
    + CONV
    + "filters=10\nsize=3\nstride=2\npad=1\nactivation=linear\n\n"
    "[anchor_free]\nlayers=-2,-1\nclasses=2\nreg_max=2\nstrides=2,4",
    "Gaussian_yolo": CONV + "filters=22\nsize=1\nactivation=linear\n\n[Gaussian_yolo]\nclasses=2\nnum=2\n"
    "mask=0,1\nanchors=1,1,2,2\nscale_x_y=1.05",
    "region": CONV + "filters=21\nsize=1\nactivation=linear\n\n[region]\nclasses=2\nnum=3\ncoords=4\n"
    "softmax=1\nanchors=1,1,2,2,3,3",
    "detection softmax": "[connected]\noutput=40\nactivation=linear\n\n[detection]\nclasses=2\nside=2\n"
    "num=1\ncoords=4\nsoftmax=1",
    "softmax groups temperature": STEM + "[softmax]\ngroups=3\ntemperature=2.0",
    "implicit": "[implicit]\nfilters=4\natoms=3",
    "normalization": STEM + "[normalization]\nsize=5\nalpha=0.001\nbeta=0.75\nkappa=2",
    "activation stair": "[activation]\nactivation=stair",
    "local": STEM + "[local]\nfilters=3\nsize=3\nstride=2\npad=1\nactivation=leaky",
    "dropout empty": STEM + "[dropout]\nprobability=0.5\n\n[empty]",
}


EVEN = ("reorg3d 2", "reorg 2")  # need an input divisible by the stride; the others run on 9×11


@pytest.mark.parametrize("name", CASES)
def test_layer_matches_torch(name: str) -> None:
    graph = small((net(3, 10, 12) if name in EVEN else net(3, 9, 11)) + CASES[name] + "\n")
    for layer in graph.layers:  # shortcut weights: random, not the neutral ones
        if layer.kind == "shortcut" and layer.weights is not None:
            shape = layer.weights["weights"].shape
            layer.weights = {"weights": np.random.default_rng(5).normal(0, 1.5, shape).astype(np.float32)}
    compare(graph, random_input(graph) * 4 - 1)


# Grouped convolutions, bias and batch norm, strided and dilated, depthwise, binary: without oneDNN
# (TF_ENABLE_ONEDNN_OPTS=0, or a CPU where TensorFlow leaves it off) grappler fuses Conv2D + BiasAdd in
# traced graphs into a kernel that refuses groups, which eager calls never meet.
GROUPED = (
    net(3, 9, 11)
    + STEM
    + "\n\n".join(
        [
            CONV + "filters=6\nsize=3\npad=1\ngroups=2\nactivation=leaky",
            CONV + "filters=12\nsize=3\npad=1\ngroups=3\nstride=2\ndilation=2\nactivation=linear",
            CONV + "filters=12\nsize=3\npad=1\ngroups=12\nbatch_normalize=1\nactivation=mish",
            CONV + "filters=8\nsize=1\ngroups=4\nactivation=logistic",
            CONV + "filters=8\nsize=3\npad=1\ngroups=2\nbinary=1\nactivation=linear",
        ]
    )
    + "\n"
)

_TRACED_AND_TFLITE = """
import sys
import numpy as np
from cfgsurgeon import load_cfg, read_weights
from cfgsurgeon.emit import keras as K
from cfgsurgeon.emit.tflite import TFLiteModel, tflite_bytes
cfg, weights, x, out = sys.argv[1:]
graph = load_cfg(cfg)
read_weights(graph, weights)
x = np.load(x)
(traced,) = K.traced_forward(K.to_keras(graph))(x)
(lite,) = TFLiteModel(tflite_bytes(graph))(x)
np.savez(out, traced=traced, lite=lite)
"""


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_grouped_convolutions_in_traced_graphs_and_tflite(onednn: str, tmp_path: Path) -> None:
    graph = small(GROUPED)
    paths = {name: tmp_path / name for name in ("grouped.cfg", "grouped.weights", "x.npy", "out.npz")}
    paths["grouped.cfg"].write_text(GROUPED)
    write_weights(graph, paths["grouped.weights"])
    x = random_input(graph)
    np.save(paths["x.npy"], x)
    env = os.environ | {"TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", _TRACED_AND_TFLITE, *map(str, paths.values())],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (expected,) = torch_outputs(graph, x)
    with np.load(paths["out.npz"]) as found:
        errors = relative_errors([found["traced"], found["lite"]], [expected, expected])
    REPORT[f"keras grouped convolutions, TF_ENABLE_ONEDNN_OPTS={onednn}"] = (
        f"traced graph {errors[0]:.1e}, float TFLite {errors[1]:.1e} vs torch"
    )
    assert max(errors) <= TOLERANCE, errors


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_torch(name: str) -> None:
    graph = small(net(2, 5, 7) + f"[activation]\nactivation={name}\n")
    x = np.linspace(-25, 25, 2 * 2 * 5 * 7, dtype=np.float32).reshape(2, 2, 5, 7)
    compare(graph, x)


def test_standard_layers_where_they_exist() -> None:
    """Conv, BN, pooling, joins and resampling are tf_keras' own layers (what TFMOT prunes and TFLite
    converts); custom layers only for darknet's own operations."""
    graph = small(
        net(3, 16, 16) + STEM + CONV + "filters=6\nsize=3\nstride=2\npad=1\nactivation=mish\n\n"
        "[maxpool]\nsize=2\nstride=2\n\n[maxpool]\nsize=2\nstride=1\n\n[upsample]\nstride=2\n\n"
        "[route]\nlayers=-1,1\n\n" + CONV + "filters=12\nsize=1\ngroups=12\n\n[shortcut]\nfrom=-2\n"
    )
    model = K.to_keras(graph)
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    assert kinds["nhwc"] == "Permute" and kinds["shortcut_7"] == "Permute"
    assert [kinds[n] for n in ("l0_conv", "l0_bn", "l0_leaky")] == [
        "Conv2D",
        "BatchNormalization",
        "LeakyReLU",
    ]
    assert [kinds[n] for n in ("l1_pad", "l1_conv", "l1_mish")] == ["ZeroPadding2D", "Conv2D", "Activation"]
    assert kinds["l2_maxpool"] == kinds["l3_maxpool"] == "MaxPooling2D"
    assert (kinds["l4_upsample"], kinds["l5_route"]) == ("UpSampling2D", "Concatenate")
    assert (kinds["l6_conv"], kinds["l7_shortcut"]) == ("DepthwiseConv2D", "Add")
    conv, bn = model.get_layer("l0_conv"), model.get_layer("l0_bn")
    assert not conv.use_bias and bn.epsilon == K.BN_EPS
    assert model.get_layer("l1_pad").padding == ((1, 1), (1, 1))  # symmetric, as darknet pads stride 2


# softmax trees: a 5-node tree (groups of 2 and 3) over a [region]'s classes, an 80-node one (groups of 4,
# 8 and 4) over a [softmax]'s 4×4×5 values
TREES = {
    "region tree": (
        CONV + "filters=20\nsize=1\nactivation=linear\n\n[region]\nclasses=5\nnum=2\ncoords=4\n"
        "softmax=1\nanchors=1,1,2,2\ntree=t.tree",
        "a\nb\nc 0\nd 0\ne 0\n",
    ),
    "softmax tree temperature": (
        CONV + "filters=5\nsize=1\nstride=2\n\n[softmax]\ntemperature=2.0\ntree=t.tree",
        "".join(f"n{k} {-1 if k < 4 else (k - 4) // 8}\n" for k in range(80)),
    ),
}


def tree_graph(name: str, folder: Path) -> Graph:
    text, tree = TREES[name]
    graph = small(net(3, 7, 7) + text + "\n")
    graph.tree_file = str(folder / "t.tree")
    Path(graph.tree_file).write_text(tree)
    return graph


@pytest.mark.parametrize("name", TREES)
def test_softmax_tree_matches_torch(name: str, tmp_path: Path) -> None:
    compare(tree_graph(name, tmp_path), None)


@pytest.mark.parametrize("name", TREES)
def test_softmax_tree_reloads_from_keras_file(name: str, tmp_path: Path) -> None:
    """The group sizes are part of the layer's config: the reloaded model needs no tree file."""
    graph = tree_graph(name, tmp_path)
    model = K.write_keras(graph, tmp_path / "model.keras")
    Path(graph.tree_file).unlink()
    reloaded = K.load_keras(tmp_path / "model.keras")
    x = random_input(graph)
    for ours, theirs in zip(K.run_keras(reloaded, x), K.run_keras(model, x), strict=True):
        np.testing.assert_array_equal(ours, theirs)


XNOR_AFTER_32 = net(3, 8, 8) + CONV + "filters=32\nsize=3\npad=1\n\n"
REGION_TREE = CONV + "filters=10\nsize=1\n\n[region]\nnum=1\ncoords=4\nclasses=5\nanchors=1,1\ntree=t.tree"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (XNOR_AFTER_32 + CONV + "filters=8\nsize=3\npad=1\nstride=2\nxnor=1\nantialiasing=1", "antialiasing"),
        (net(3, 8, 8) + CONV + "filters=8\nsize=3\npad=1\nstride=2\nxnor=1", "not a multiple of 32"),
        (net(3, 8, 8) + REGION_TREE, "t.tree: file not found"),
        (
            net(3, 8, 8) + REGION_TREE.replace("coords=4", "coords=2").replace("=10", "=8"),
            "tree= with coords=2",
        ),
    ],
    ids=["xnor-antialiasing", "xnor-narrow-strided", "tree-file-missing", "tree-coords"],
)
def test_undefined_layers_are_refused_like_torch(text: str, message: str, tmp_path: Path) -> None:
    """What darknet leaves undefined (xnor paths it has no code for) or cannot find (the tree file):
    one-line errors, the torch backend's."""
    torch = pytest.importorskip("torch")
    from cfgsurgeon.emit.torch import to_torch

    graph = small(text + "\n")
    if "coords=2" in text:  # a tree that fits, so that the coords rule is the one that refuses
        graph.tree_file = str(tmp_path / "t.tree")
        Path(graph.tree_file).write_text("a\nb\nc 0\nd 0\ne 0\n")
    with pytest.raises(CfgError) as ours:
        K.to_keras(graph)
    with pytest.raises(CfgError) as backend, torch.device("meta"):
        to_torch(graph)
    assert message in str(ours.value) and "\n" not in str(ours.value)
    assert str(ours.value) == str(backend.value)


def test_missing_weights_are_named() -> None:
    graph = small(net(3, 8, 8) + CONV + "filters=2\nsize=3\npad=1\n\n" + CONV + "filters=2\nsize=1\n")
    graph.layers[1].weights = None
    with pytest.raises(CfgError, match=r"layer 1 \[convolutional\] has no weights loaded"):
        K.to_keras(graph)


# -- the collection ------------------------------------------------------------------------------------------

# name → input size: every detection cfg of the collection that the torch backend supports (yolo9000 with a
# synthetic tree of its size). The first block is the default run.
DEFAULT = {
    "yolov3-tiny-prn.cfg": 128,
    "yolov4-tiny.cfg": 128,
    "yolov7-tiny.cfg": 128,
    "yolov4.cfg": 96,
    "yolov2-tiny.cfg": 128,  # [region]
    "enet-coco.cfg": 64,  # depthwise, scale_channels, unequal shortcuts
    "yolov3-tiny_xnor.cfg": 96,  # xnor convolutions
}
SLOW = {
    name: 128
    for name in [
        "Gaussian_yolov3_BDD.cfg",
        "cd53paspp-gamma.cfg",
        "cspx-p7-mish.cfg",
        "cspx-p7-mish_hp.cfg",
        "csresnext50-panet-spp-original-optimal.cfg",
        "csresnext50-panet-spp.cfg",
        "resnet152_trident.cfg",
        "t1.test.cfg",
        "tiny-yolo-voc.cfg",
        "tiny-yolo.cfg",
        "tiny-yolo_xnor.cfg",
        "yolo9000.cfg",  # softmax tree
        "yolo-voc.2.0.cfg",
        "yolo-voc.cfg",
        "yolo.2.0.cfg",
        "yolo.cfg",
        "yolov2-tiny-voc.cfg",
        "yolov2-voc.cfg",
        "yolov2.cfg",
        "yolov3-openimages.cfg",
        "yolov3-spp.cfg",
        "yolov3-tiny.cfg",
        "yolov3-tiny_3l.cfg",
        "yolov3-tiny_obj.cfg",
        "yolov3-voc.cfg",
        "yolov3-voc.yolov3-giou-40.cfg",
        "yolov3.cfg",
        "yolov3.coco-giou-12.cfg",
        "yolov3_5l.cfg",
        "yolov4-csp-s-mish.cfg",
        "yolov4-csp-swish.cfg",
        "yolov4-csp-x-mish.cfg",
        "yolov4-csp-x-swish-frozen.cfg",
        "yolov4-csp-x-swish.cfg",
        "yolov4-csp.cfg",
        "yolov4-custom.cfg",
        "yolov4-p5-frozen.cfg",
        "yolov4-p5.cfg",
        "yolov4-p6.cfg",
        "yolov4-sam-mish-csp-reorg-bfm.cfg",
        "yolov4-tiny-3l.cfg",
        "yolov4-tiny-custom.cfg",
        "yolov4-tiny_contrastive.cfg",
        "yolov4_new.cfg",
        "yolov4x-mish.cfg",
        "yolov7.cfg",
        "yolov7x.cfg",
    ]
}
COLLECTION = [pytest.param(name, size, id=name) for name, size in DEFAULT.items()] + [
    pytest.param(name, size, id=name, marks=pytest.mark.slow) for name, size in SLOW.items()
]
_ERRORS: dict[str, float] = {}


def _report(key: str, name: str, error: float) -> None:
    _ERRORS[name] = error
    worst = max(_ERRORS, key=_ERRORS.get)
    REPORT["keras vs torch"] = f"{len(_ERRORS)} models, max relative error {_ERRORS[worst]:.2e} ({worst})"


@SHARED_MARK
@pytest.mark.parametrize(("name", "size"), COLLECTION)
def test_collection_matches_torch(name: str, size: int, tmp_path: Path) -> None:
    graph = with_synthetic_tree(collection(name, size), tmp_path)
    _report("collection", name, compare(graph))


@SHARED_MARK
@pytest.mark.slow
def test_every_supported_detection_cfg_is_listed(tmp_path: Path) -> None:
    """The lists above are the survey: every collection cfg with a detection head is in one of them, or is
    one the torch backend refuses too (given a tree file where it needs one)."""
    torch = pytest.importorskip("torch")
    from conftest import loadable_cfgs

    from cfgsurgeon.emit.torch import to_torch

    missing = []
    for path in loadable_cfgs():
        graph = with_synthetic_tree(load_cfg(path, warn=quiet), tmp_path)
        if not any(layer.kind in ("yolo", "Gaussian_yolo", "region", "detection") for layer in graph.layers):
            continue
        try:
            with torch.device("meta"):  # builds the modules without allocating their tensors
                to_torch(graph)
        except CfgError:
            continue
        if path.name not in DEFAULT and path.name not in SLOW:
            missing.append(path.name)
    assert missing == []


@pytest.mark.parametrize(
    ("name", "size"),
    [
        pytest.param("yolov4-tiny.cfg", 128, id="yolov4-tiny"),
        pytest.param("yolov4.cfg", 96, id="yolov4", marks=pytest.mark.slow),
    ],
)
def test_slim_pruned_model_matches_torch(name: str, size: int) -> None:
    from cfgsurgeon.surgery.prune import prune

    graph = collection(name, size)
    result = prune(graph, "slim", percent=0.5)
    assert result.pruned.params < graph.params
    _report("pruned", f"{name} slim 50%", compare(result.pruned))


@SHARED_MARK
@needs_yolov3_tiny
def test_real_yolov3_tiny_matches_torch() -> None:
    graph = load_cfg(MODELS / "yolov3-tiny.cfg", warn=quiet)
    read_weights(graph, MODELS / "yolov3-tiny.weights")
    image = np.random.default_rng(3).random((1, *graph.input_shape), dtype=np.float32)
    error = compare(graph, image)
    REPORT["keras vs torch, real yolov3-tiny 416"] = f"max relative error {error:.2e}"
