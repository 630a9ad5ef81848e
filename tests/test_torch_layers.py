"""The PyTorch backend, layer type by layer type, against straightforward float64 numpy implementations of
darknet's CPU inference semantics (``shared/notes/darknet_semantics.md``, read against AlexeyAB/darknet's
``src/``): index formulas and loops as darknet writes them, no vectorised shortcuts borrowed from our code.

This covers what OpenCV's importer cannot check (``test_torch_vs_opencv.py``): layer types it refuses
([reorg3d], [local_avgpool], [Gaussian_yolo], [implicit], [batchnorm], [activation], [normalization],
[detection], [empty]), options it ignores (dilation, stride_x≠stride_y, antialiasing, share_index, weighted
and multi-input shortcuts, maxpool_depth, upsample scale and negative strides, softmax temperature) or
refuses (softmax groups, most activations), and what it does differently ([reorg] vs [reorg3d] order,
``scale_wh``, channel-mismatched shortcuts, ``new_coords``). The detection heads and ``postprocess.decode``
are in ``test_torch_heads.py``, xnor / binary convolutions in ``test_torch_xnor.py`` and softmax trees in
``test_torch_tree.py``, with the harness and numpy references of this file.

Each test builds a small cfg (odd, non-square sizes on purpose), gives it random weights, runs our module and
compares the layer under test with the numpy version applied to the same inputs, ``max|Δ| / max|ref| ≤ 1e-5``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import quiet

from cfgsurgeon import CfgError, loads_cfg
from cfgsurgeon.ir import Graph
from cfgsurgeon.layers import ACTIVATIONS

torch = pytest.importorskip("torch")

from cfgsurgeon.emit.torch import ACTIVATIONS as TORCH_ACTIVATIONS  # noqa: E402
from cfgsurgeon.emit.torch import DarknetModel, to_torch  # noqa: E402
from cfgsurgeon.randinit import random_weights  # noqa: E402

TOLERANCE = 1e-5
DARKNET_BN_EPS = 1e-5


# -- harness -------------------------------------------------------------------------------------------------


def build(text: str, seed: int = 0) -> tuple[Graph, DarknetModel]:
    graph = loads_cfg(text, warn=quiet)
    random_weights(graph, seed=seed)
    return graph, to_torch(graph)


def rebuild(graph: Graph) -> DarknetModel:
    """The module again, after a test changed ``layer.weights``."""
    return to_torch(graph)


def net(channels: int, height: int, width: int) -> str:
    return f"[net]\nwidth={width}\nheight={height}\nchannels={channels}\n\n"


def image(graph: Graph, seed: int = 1, scale: float = 2.0) -> np.ndarray:
    """A float32 input of the network's shape, normal with std ``scale`` (negative values included)."""
    shape = (1, *graph.input_shape)
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def run(model: DarknetModel, x: np.ndarray, keep: list[int]) -> list[np.ndarray]:
    """Our outputs of layers ``keep`` for input ``x``, batch dimension dropped, as float64."""
    with torch.no_grad():
        outs = model(torch.from_numpy(x), keep=keep)
    return [o[0].detach().double().numpy() for o in outs]


def close(ours: np.ndarray, ref: np.ndarray, tol: float = TOLERANCE) -> None:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-30)
    error = np.abs(ours - ref).max() / scale
    assert error <= tol, f"relative error {error:.3g} > {tol}"


def w64(layer, name: str) -> np.ndarray:
    return np.asarray(layer.weights[name], dtype=np.float64)


# -- numpy reference implementations (darknet semantics) -----------------------------------------------------


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def softplus(v: np.ndarray, threshold: float = 20.0) -> np.ndarray:
    """darknet's softplus_activate: x above the threshold, e^x below minus the threshold."""
    middle = np.log(np.exp(np.clip(v, -threshold, threshold)) + 1.0)
    return np.where(v > threshold, v, np.where(v < -threshold, np.exp(v), middle))


def stair(v: np.ndarray) -> np.ndarray:
    n = np.floor(v)
    odd = np.fmod(n, 2) != 0  # C's n % 2 for an int
    return np.where(odd, (v - n) + np.floor(v / 2), np.floor(v / 2))


# activations.h / activations.c, one element at a time (the normalize_channels family works per pixel
# across channels, on a C×H×W array).
ELEMENTWISE = {
    "linear": lambda v: v,
    "logistic": sigmoid,
    "loggy": lambda v: 2.0 / (1.0 + np.exp(-v)) - 1.0,
    "relu": lambda v: v * (v > 0),
    "relu6": lambda v: np.minimum(np.maximum(v, 0.0), 6.0),
    "elu": lambda v: (v >= 0) * v + (v < 0) * (np.exp(v) - 1.0),
    "selu": lambda v: (v >= 0) * 1.0507 * v + (v < 0) * 1.0507 * 1.6732 * (np.exp(v) - 1.0),
    "gelu": lambda v: 0.5 * v * (1.0 + np.tanh(0.797885 * v + 0.035677 * v**3)),
    "relie": lambda v: np.where(v > 0, v, 0.01 * v),
    "ramp": lambda v: v * (v > 0) + 0.1 * v,
    "leaky": lambda v: np.where(v > 0, v, 0.1 * v),
    "revleaky": lambda v: np.where(v > 0, v, 0.1 * v),  # activate(): case REVLEAKY falls through to LEAKY
    "tanh": lambda v: 2.0 / (1.0 + np.exp(-2.0 * v)) - 1.0,
    "plse": lambda v: np.where(v < -4, 0.01 * (v + 4), np.where(v > 4, 0.01 * (v - 4) + 1, 0.125 * v + 0.5)),
    "stair": stair,
    "hardtan": lambda v: np.clip(v, -1.0, 1.0),
    "lhtan": lambda v: np.where(v < 0, 0.001 * v, np.where(v > 1, 0.001 * (v - 1) + 1, v)),
    "swish": lambda v: v * sigmoid(v),
    "mish": lambda v: v * np.tanh(softplus(v)),
    "hard_mish": lambda v: np.where(v > 0, v, np.where(v > -2, v * v / 2 + v, 0.0)),
}


def normalize_channels(v: np.ndarray) -> np.ndarray:
    out = np.zeros_like(v)
    for y in range(v.shape[1]):
        for x in range(v.shape[2]):
            total = 0.0001 + sum(val for val in v[:, y, x] if val > 0)
            out[:, y, x] = [val / total if val > 0 else 0.0 for val in v[:, y, x]]
    return out


def normalize_channels_softmax(v: np.ndarray, use_max: bool) -> np.ndarray:
    out = np.zeros_like(v)
    for y in range(v.shape[1]):
        for x in range(v.shape[2]):
            top = v[:, y, x].max() if use_max else 0.0
            e = np.exp(v[:, y, x] - top)
            out[:, y, x] = e / (0.0001 + e.sum())
    return out


def activate(name: str, v: np.ndarray) -> np.ndarray:
    if name == "normalize_channels":
        return normalize_channels(v)
    if name == "normalize_channels_softmax":
        return normalize_channels_softmax(v, use_max=False)
    if name == "normalize_channels_softmax_maxval":
        return normalize_channels_softmax(v, use_max=True)
    return ELEMENTWISE[name](v)


def conv(x, weights, biases, size, stride_y, stride_x, pad, dilation, groups, out_h, out_w):
    """im2col_cpu_ext + gemm: tap (i, j) of output (oy, ox) reads input row ``oy·sy − pad·d + i·d`` (zero
    outside); filter f sees the input channels of group ``f // (n/groups)``."""
    n, cg = weights.shape[:2]
    c, h, w = x.shape
    out = np.zeros((n, out_h, out_w))
    for f in range(n):
        g = f // (n // groups)
        for oy in range(out_h):
            for ox in range(out_w):
                total = 0.0
                for ci in range(cg):
                    for i in range(size):
                        for j in range(size):
                            row = oy * stride_y - pad * dilation + i * dilation
                            col = ox * stride_x - pad * dilation + j * dilation
                            if 0 <= row < h and 0 <= col < w:
                                total += weights[f, ci, i, j] * x[g * cg + ci, row, col]
                out[f, oy, ox] = total
    return out + biases[:, None, None]


def batchnorm(v, layer):
    mean, var = w64(layer, "rolling_mean"), w64(layer, "rolling_variance")
    normed = (v - mean[:, None, None]) / np.sqrt(var[:, None, None] + DARKNET_BN_EPS)
    return normed * w64(layer, "scales")[:, None, None] + w64(layer, "biases")[:, None, None]


def conv_layer(layer, x, owner=None):
    """A whole [convolutional] (owner: the layer whose weights it uses, for share_index)."""
    owner = owner or layer
    pad = layer.size // 2 if layer.pad else layer.padding
    dilation = 1 if layer.size == 1 else layer.dilation
    sy, sx = layer.strides
    _, out_h, out_w = layer.out_shape
    biases = np.zeros(layer.filters) if layer.batch_normalize else w64(owner, "biases")
    v = conv(
        x,
        w64(owner, "weights"),
        biases,
        layer.size,
        sy,
        sx,
        pad,
        dilation,
        max(layer.groups, 1),
        out_h,
        out_w,
    )
    if layer.batch_normalize:
        v = batchnorm(v, owner)
    return activate(layer.activation, v)


def pool(x, size, stride_y, stride_x, padding, out_h, out_w, average):
    """forward_maxpool_layer / forward_local_avgpool_layer: window origin ``-padding/2``, only valid taps."""
    c, h, w = x.shape
    out = np.zeros((c, out_h, out_w))
    offset = -(padding // 2)
    for k in range(c):
        for i in range(out_h):
            for j in range(out_w):
                taps = [
                    x[k, offset + i * stride_y + n, offset + j * stride_x + m]
                    for n in range(size)
                    for m in range(size)
                    if 0 <= offset + i * stride_y + n < h and 0 <= offset + j * stride_x + m < w
                ]
                out[k, i, j] = sum(taps) / len(taps) if average else max(taps)
    return out


def shortcut(layer, x, froms):
    """shortcut_multilayer_cpu, flat index by flat index: ``out = w0·in + Σ w(k+1)·from_k`` where
    ``from_k`` has that index, weights ``[n+1][1 or c]`` normalised per output element."""
    out_flat = x.reshape(-1)
    size, n = out_flat.size, len(froms)
    weights = None if layer.weights is None else w64(layer, "weights").reshape(-1)
    layer_step = 0 if weights is None else weights.size // (n + 1)
    step = size // layer_step if layer_step else 0
    norm = layer.weights_normalization
    out = np.zeros(size)
    for src_i in range(size):
        if weights is None:
            coef = [1.0] * (n + 1)
        else:
            raw = [weights[src_i // step + k * layer_step] for k in range(n + 1)]
            if norm in ("relu", "avg_relu"):
                total = 0.0001 + sum(max(v, 0.0) for v in raw)
                coef = [max(v, 0.0) / total for v in raw]
            elif norm == "softmax":
                top = max(raw)
                total = 0.0001 + sum(math.exp(v - top) for v in raw)
                coef = [math.exp(v - top) / total for v in raw]
            else:
                coef = raw
        value = out_flat[src_i] * coef[0]
        for k, other in enumerate(froms):
            flat = other.reshape(-1)
            if src_i < flat.size:
                value += flat[src_i] * coef[k + 1]
        out[src_i] = value
    return activate(layer.activation, out.reshape(x.shape))


def upsample(x, stride, scale):
    """upsample_cpu; a negative stride runs it backwards into a zeroed output (``in += scale·out``), reading
    the input buffer with the *output's* geometry times the stride."""
    c, h, w = x.shape
    if stride > 0:
        out = np.zeros((c, h * stride, w * stride))
        for k in range(c):
            for j in range(h * stride):
                for i in range(w * stride):
                    out[k, j, i] = scale * x[k, j // stride, i // stride]
        return out
    s = -stride
    ow, oh = w // s, h // s
    flat_in = x.reshape(-1)
    out = np.zeros(c * oh * ow)
    for k in range(c):
        for j in range(oh * s):
            for i in range(ow * s):
                in_index = k * ow * oh + (j // s) * ow + i // s
                out_index = k * ow * oh * s * s + j * ow * s + i
                out[in_index] += scale * flat_in[out_index]
    return out.reshape(c, oh, ow)


def reorg_cpu(x_flat, out_w, out_h, out_c, stride):
    """blas.c:reorg_cpu with forward=0: ``out[in_index] = x[out_index]``."""
    out = np.zeros(out_w * out_h * out_c)
    in_c = out_c // (stride * stride)
    for k in range(out_c):
        for j in range(out_h):
            for i in range(out_w):
                in_index = i + out_w * (j + out_h * k)
                c2 = k % in_c
                offset = k // in_c
                w2 = i * stride + offset % stride
                h2 = j * stride + offset // stride
                out_index = w2 + out_w * stride * (h2 + out_h * stride * c2)
                out[in_index] = x_flat[out_index]
    return out


def yolo_output(v, n, classes, scale_x_y, new_coords, entries=None):
    """forward_yolo_layer on one image ``[n][entries][h][w]``: logistic on x, y, objectness and classes
    (none with new_coords), then ``x·s − (s−1)/2`` on x and y."""
    entries = entries or 5 + classes
    out = v.reshape(n, entries, *v.shape[1:]).copy()
    for a in range(n):
        if not new_coords:
            out[a, 0:2] = sigmoid(out[a, 0:2])
            out[a, 4:] = sigmoid(out[a, 4:])
        out[a, 0:2] = out[a, 0:2] * scale_x_y - 0.5 * (scale_x_y - 1)
    return out.reshape(v.shape)


# -- convolutions --------------------------------------------------------------------------------------------

CONV_CASES = {
    "dilation 2, pad": "filters=5\nsize=3\npad=1\ndilation=2\nactivation=leaky\nbatch_normalize=1",
    "dilation 3, stride 2": "filters=4\nsize=3\npad=1\nstride=2\ndilation=3\nactivation=linear",
    "dilation ignored for 1x1": "filters=4\nsize=1\ndilation=3\nactivation=mish",
    "stride_x 2, stride_y 1": "filters=4\nsize=3\npad=1\nstride_x=2\nstride_y=1\nactivation=swish",
    "stride_y 3 beats stride": "filters=4\nsize=3\npad=1\nstride=2\nstride_y=3\nactivation=logistic",
    "explicit padding": "filters=3\nsize=3\npadding=2\nactivation=leaky",
    "pad overrides padding": "filters=3\nsize=5\npad=1\npadding=4\nstride=2\nactivation=relu",
    "even kernel": "filters=3\nsize=2\npad=1\nactivation=tanh",
    "no padding": "filters=3\nsize=3\nstride=2\nactivation=elu",
    "groups": "filters=6\nsize=3\npad=1\ngroups=3\nbatch_normalize=1\nactivation=leaky",
    "depthwise": "filters=6\nsize=3\npad=1\ngroups=6\nstride=2\nactivation=relu6",
}


@pytest.mark.parametrize("options", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_convolution(options: str) -> None:
    graph, model = build(net(6, 9, 11) + "[convolutional]\n" + options + "\n")
    x = image(graph)
    (ours,) = run(model, x, [0])
    close(ours, conv_layer(graph[0], x[0].astype(np.float64)))


UNDEFINED_IN_DARKNET = {
    # im2col counts the dilation, out_h does not: the GEMM reads a buffer of another shape
    "dilation without same padding": "filters=2\nsize=3\npadding=0\ndilation=2",
    "dilation with a large padding": "filters=2\nsize=3\npadding=3\ndilation=2",
    # size 1 and stride_x 1: darknet hands the input to the GEMM as is, ignoring stride_y and padding
    "1x1 with stride_y 2": "filters=2\nsize=1\nstride_x=1\nstride_y=2",
    "1x1 with padding": "filters=2\nsize=1\npadding=1",
}


@pytest.mark.parametrize("options", UNDEFINED_IN_DARKNET.values(), ids=UNDEFINED_IN_DARKNET.keys())
def test_geometries_darknet_does_not_define_are_refused(options: str) -> None:
    graph = loads_cfg(net(3, 9, 10) + "[convolutional]\n" + options + "\n", warn=quiet)
    with pytest.raises(CfgError, match="undefined result"):
        to_torch(graph)


def test_maxpool_antialiasing_is_refused() -> None:
    graph = loads_cfg(net(3, 8, 8) + "[maxpool]\nsize=2\nstride=2\nantialiasing=1\n", warn=quiet)
    with pytest.raises(CfgError, match="antialiasing"):
        to_torch(graph)


def test_batch_norm_uses_darknets_epsilon() -> None:
    """Tiny running variances make 1e-5 (darknet) and 1e-6 (OpenCV) differ by ~4%; we must give darknet's."""
    graph, _ = build(
        net(3, 5, 7) + "[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\nactivation=linear\n"
    )
    graph[0].weights = {
        **graph[0].weights,
        "rolling_variance": np.array([1e-4, 3e-5, 1e-5, 2e-4], np.float32),
    }
    model = rebuild(graph)
    x = image(graph)
    (ours,) = run(model, x, [0])
    close(ours, conv_layer(graph[0], x[0].astype(np.float64)))


@pytest.mark.parametrize("antialiasing", [1, 2])
def test_antialiasing(antialiasing: int) -> None:
    """The host conv runs at stride 1, then a fixed depthwise blur (3×3 [1 2 1]ᵀ[1 2 1]/16 pad 1, or 2×2
    box /4 pad 0) with the layer's strides, after the activation."""
    text = "[convolutional]\nfilters=3\nsize=3\npad=1\nstride=2\nactivation=leaky\n"
    text += f"antialiasing={antialiasing}\n"
    graph, model = build(net(2, 9, 10) + text)
    x = image(graph)
    (ours,) = run(model, x, [0])
    layer = graph[0]
    v = conv(x[0].astype(np.float64), w64(layer, "weights"), w64(layer, "biases"), 3, 1, 1, 1, 1, 1, 9, 10)
    v = activate("leaky", v)
    if antialiasing == 1:
        kernel, pad = np.outer([1, 2, 1], [1, 2, 1]) / 16.0, 1
    else:
        kernel, pad = np.full((2, 2), 0.25), 0
    size = kernel.shape[0]
    _, out_h, out_w = layer.out_shape
    blur = np.stack(
        [
            conv(v[k : k + 1], kernel[None, None], np.zeros(1), size, 2, 2, pad, 1, 1, out_h, out_w)[0]
            for k in range(3)
        ]
    )
    close(ours, blur)


def test_share_index_uses_the_other_layers_weights() -> None:
    text = net(3, 6, 7)
    text += "[convolutional]\nfilters=3\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n\n"
    text += "[convolutional]\nfilters=3\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\nshare_index=0\n"
    graph, model = build(text)
    x = image(graph)
    first, second = run(model, x, [0, 1])
    close(second, conv_layer(graph[1], first, owner=graph[0]))


def test_connected_with_batch_norm() -> None:
    """out = W·in (flattened C×H×W), BN, activation; output ``outputs×1×1``."""
    graph, model = build(net(3, 4, 5) + "[connected]\noutput=7\nbatch_normalize=1\nactivation=leaky\n")
    x = image(graph)
    (ours,) = run(model, x, [0])
    layer = graph[0]
    v = w64(layer, "weights") @ x[0].astype(np.float64).reshape(-1)
    close(ours, activate("leaky", batchnorm(v[:, None, None], layer)))


def test_batchnorm_layer() -> None:
    graph, model = build(net(4, 5, 6) + "[batchnorm]\n")
    x = image(graph)
    (ours,) = run(model, x, [0])
    close(ours, batchnorm(x[0].astype(np.float64), graph[0]))


# -- activations ---------------------------------------------------------------------------------------------


def test_every_activation_has_a_reference() -> None:
    covered = set(ELEMENTWISE) | {"normalize_channels", "normalize_channels_softmax"}
    covered |= {"normalize_channels_softmax_maxval"}
    assert covered == set(ACTIVATIONS) == set(TORCH_ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation(name: str) -> None:
    """[activation] on inputs spread over [-25, 25] (both softplus thresholds, every piece of the piecewise
    ones, the stair steps). darknet's CPU [activation] returns 0 for relu6/swish/mish/hard_mish/normalize_*;
    we compute the function itself, as its GPU build and its [convolutional] do."""
    graph, model = build(net(5, 6, 7) + f"[activation]\nactivation={name}\n")
    x = np.linspace(-25.0, 25.0, 5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    x = x[:, :, :, ::-1].copy() * np.array([1, -1, 0.3, 0.05, 1.7], np.float32)[None, :, None, None]
    (ours,) = run(model, x, [0])
    close(ours, activate(name, x[0].astype(np.float64)))


@pytest.mark.parametrize("name", ["mish", "swish", "logistic", "leaky", "normalize_channels_softmax_maxval"])
def test_activation_in_a_convolution(name: str) -> None:
    graph, model = build(net(3, 5, 6) + f"[convolutional]\nfilters=4\nsize=3\npad=1\nactivation={name}\n")
    x = image(graph, scale=4.0)
    (ours,) = run(model, x, [0])
    close(ours, conv_layer(graph[0], x[0].astype(np.float64)))


# -- pooling -------------------------------------------------------------------------------------------------

POOL_CASES = {
    "2/2 odd input": "size=2\nstride=2",
    "2/1 keeps the size": "size=2\nstride=1",
    "3/2 odd input": "size=3\nstride=2",
    "5/1 spp": "size=5\nstride=1",
    "explicit padding 0": "size=3\nstride=2\npadding=0",
    "explicit padding 3": "size=3\nstride=2\npadding=3",
    "stride_x 2 stride_y 1": "size=2\nstride_x=2\nstride_y=1",
    "stride_y 3": "size=3\nstride=1\nstride_y=3",
    "size defaults to stride": "stride=3",
}


@pytest.mark.parametrize("average", [False, True], ids=["maxpool", "local_avgpool"])
@pytest.mark.parametrize("options", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_pooling(options: str, average: bool) -> None:
    header = "local_avgpool" if average else "maxpool"
    graph, model = build(net(3, 9, 11) + f"[{header}]\n{options}\n")
    x = image(graph)
    (ours,) = run(model, x, [0])
    layer = graph[0]
    _, out_h, out_w = layer.out_shape
    ref = pool(
        x[0].astype(np.float64),
        layer.size,
        layer.stride_y,
        layer.stride_x,
        layer.padding,
        out_h,
        out_w,
        average,
    )
    close(ours, ref)


@pytest.mark.parametrize(("channels", "out_channels"), [(8, 2), (7, 3), (6, 6)])
def test_maxpool_depth(channels: int, out_channels: int) -> None:
    """Per pixel, output channel g is the max over input channels g, g + out_c, g + 2·out_c, …"""
    graph, model = build(net(channels, 4, 5) + f"[maxpool]\nmaxpool_depth=1\nout_channels={out_channels}\n")
    x = image(graph)
    (ours,) = run(model, x, [0])
    v = x[0].astype(np.float64)
    ref = np.stack([np.max(v[g::out_channels], axis=0) for g in range(out_channels)])
    close(ours, ref)


def test_global_avgpool() -> None:
    graph, model = build(net(4, 5, 7) + "[avgpool]\n")
    x = image(graph)
    (ours,) = run(model, x, [0])
    close(ours, x[0].astype(np.float64).mean(axis=(1, 2))[:, None, None])


# -- resampling ----------------------------------------------------------------------------------------------

UPSAMPLE_CASES = {
    "x2": (2, None, (3, 4, 5)),
    "x3 scale 0.5": (3, 0.5, (3, 4, 5)),
    "-2 sum": (-2, None, (3, 6, 8)),
    "-2 scale 0.25 (average)": (-2, 0.25, (3, 6, 8)),
    "-3": (-3, 1.5, (2, 9, 6)),
    "-2 odd size": (-2, None, (3, 7, 9)),
}


@pytest.mark.parametrize(("stride", "scale", "shape"), UPSAMPLE_CASES.values(), ids=UPSAMPLE_CASES.keys())
def test_upsample(stride: int, scale: float | None, shape: tuple[int, int, int]) -> None:
    options = f"stride={stride}\n" + (f"scale={scale}\n" if scale is not None else "")
    graph, model = build(net(*shape) + "[upsample]\n" + options)
    x = image(graph)
    (ours,) = run(model, x, [0])
    close(ours, upsample(x[0].astype(np.float64), stride, 1.0 if scale is None else scale))


@pytest.mark.parametrize("stride", [2, 3])
def test_reorg3d(stride: int) -> None:
    """[reorg3d]: out[k, j, i] = in[k % c, j·s + (k / c) / s, i·s + (k / c) % s]."""
    graph, model = build(net(3, 6 * stride // 2, 4 * stride // 2) + f"[reorg3d]\nstride={stride}\n")
    x = image(graph)
    (ours,) = run(model, x, [0])
    c, h, w = graph.input_shape
    ref = reorg_cpu(
        x[0].astype(np.float64).reshape(-1), w // stride, h // stride, c * stride * stride, stride
    )
    close(ours, ref.reshape(graph[0].out_shape))
    # the closed form in the notes, as a second, independent statement
    v = x[0]
    closed = np.array(
        [
            [
                [
                    v[k % c, j * stride + (k // c) // stride, i * stride + (k // c) % stride]
                    for i in range(w // stride)
                ]
                for j in range(h // stride)
            ]
            for k in range(c * stride * stride)
        ]
    )
    close(ours, closed)


def test_reorg_old() -> None:
    """[reorg] (YOLOv2): reorg_cpu over the *input* dims (the buffer read as c/s² × h·s × w·s, written as
    c × h × w), the result then handed on as c·s² × h/s × w/s. Not the same order as [reorg3d]."""
    text = net(3, 6, 4) + "[convolutional]\nfilters=8\nsize=1\nactivation=linear\n\n[reorg]\nstride=2\n"
    graph, model = build(text)
    features, ours = run(model, image(graph), [0, 1])
    c, h, w = features.shape
    close(ours, reorg_cpu(features.reshape(-1), w, h, c, 2).reshape(graph[1].out_shape))
    as_reorg3d = reorg_cpu(features.reshape(-1), w // 2, h // 2, c * 4, 2).reshape(graph[1].out_shape)
    assert np.abs(as_reorg3d - ours).max() > 0.1, "the two reorg orders should differ"


def test_crop() -> None:
    text = (
        net(3, 9, 12)
        + "[crop]\ncrop_height=5\ncrop_width=6\n\n[crop]\ncrop_height=3\ncrop_width=2\nnoadjust=1\n"
    )
    graph, model = build(text)
    x = image(graph)
    first, second = run(model, x, [0, 1])
    v = x[0].astype(np.float64)
    dh, dw = (9 - 5) // 2, (12 - 6) // 2
    close(first, v[:, dh : dh + 5, dw : dw + 6] * 2 - 1)
    dh, dw = (5 - 3) // 2, (6 - 2) // 2
    close(second, first[:, dh : dh + 3, dw : dw + 2])


# -- joining layers ------------------------------------------------------------------------------------------

JOIN_STEM = (
    "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n"  # 0
    "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n\n"  # 1
    "[convolutional]\nfilters=2\nsize=3\npad=1\nactivation=mish\n\n"  # 2
    "[convolutional]\nfilters=4\nsize=1\nactivation=swish\n\n"  # 3
)


@pytest.mark.parametrize(
    ("layers", "groups", "group_id"),
    [("0,1,3", 2, 1), ("1,0,3", 2, 0), ("1", 3, 2), ("0,2,3", 1, 0), ("3,1,0,2", 2, 1)],
)
def test_route(layers: str, groups: int, group_id: int) -> None:
    """Each input's flat output cut into ``groups`` contiguous chunks; chunk ``group_id`` of each, in turn."""
    graph, model = build(
        net(3, 5, 7) + JOIN_STEM + f"[route]\nlayers={layers}\ngroups={groups}\ngroup_id={group_id}\n"
    )
    x = image(graph)
    sources = [int(i) for i in layers.split(",")]
    outs = run(model, x, [*sources, 4])
    chunks = []
    for v in outs[:-1]:
        flat = v.reshape(-1)
        part = flat.size // groups
        chunks.append(flat[part * group_id : part * (group_id + 1)])
    close(outs[-1], np.concatenate(chunks).reshape(graph[4].out_shape))


SHORTCUT_CASES = {
    "plain": ("from=-2", None),
    "leaky": ("from=-2\nactivation=leaky", None),
    "fewer channels in from": ("from=2", None),  # 2 channels into 4
    "more channels in from": ("from=1", None),  # 6 channels into 4
    "two froms": ("from=0,2\nactivation=swish", None),
    "per_feature": ("from=0,1\nweights_type=per_feature", [0.7, -0.3, 1.5]),
    "per_feature relu": ("from=0,1\nweights_type=per_feature\nweights_normalization=relu", [0.7, -0.3, 1.5]),
    "per_layer avg_relu": ("from=0\nweights_type=per_layer\nweights_normalization=avg_relu", [2.0, 0.5]),
    "per_feature softmax": (
        "from=0,2\nweights_type=per_feature\nweights_normalization=softmax",
        [0.2, -1.0, 3.0],
    ),
    "per_channel": ("from=0,1\nweights_type=per_channel", "random"),
    "per_channel relu mish": (
        "from=0,2\nweights_type=per_channel\nweights_normalization=relu\nactivation=mish",
        "random",
    ),
    "per_channel softmax, more channels": (
        "from=1\nweights_type=per_channel\nweights_normalization=softmax",
        "random",
    ),
}


@pytest.mark.parametrize(("options", "weights"), SHORTCUT_CASES.values(), ids=SHORTCUT_CASES.keys())
def test_shortcut(options: str, weights) -> None:
    graph, _ = build(net(3, 5, 7) + JOIN_STEM + "[shortcut]\n" + options + "\n")
    layer = graph[4]
    if weights is not None:
        shape = dict(layer.weight_layout())["weights"]
        values = np.random.default_rng(5).normal(0, 1.5, shape) if weights == "random" else np.array(weights)
        layer.weights = {"weights": values.reshape(shape).astype(np.float32)}
    model = rebuild(graph)
    x = image(graph)
    sources = [graph.index_of(node) for node in layer.inputs]
    outs = run(model, x, [*sources, 4])
    close(outs[-1], shortcut(layer, outs[0], outs[1:-1]))


@pytest.mark.parametrize("scale_wh", [0, 1])
def test_scale_channels(scale_wh: int) -> None:
    """scale_wh=0: out[i] = in[i / (h·w)] · from[i] (in is C×1×1); scale_wh=1:
    out[i] = in[i % (h·w)] · from[i] (the first input channel, per pixel). Then the activation."""
    text = net(3, 5, 7) + JOIN_STEM
    if scale_wh:
        text += "[convolutional]\nfilters=3\nsize=1\nactivation=logistic\n\n"  # 4: 3×5×7
    else:
        text += "[avgpool]\n\n[convolutional]\nfilters=4\nsize=1\nactivation=logistic\n\n"  # 4, 5: 4×1×1
    text += f"[scale_channels]\nfrom=3\nscale_wh={scale_wh}\nactivation=leaky\n"
    graph, model = build(text)
    x = image(graph)
    last = len(graph.layers) - 1
    scale, target, ours = run(model, x, [last - 1, 3, last])
    scale_flat, target_flat = scale.reshape(-1), target.reshape(-1)
    plane = target.shape[1] * target.shape[2]
    ref = np.array(
        [
            (scale_flat[i % plane] if scale_wh else scale_flat[i // plane]) * target_flat[i]
            for i in range(target_flat.size)
        ]
    )
    close(ours, activate("leaky", ref.reshape(target.shape)))


def test_sam() -> None:
    text = (
        net(3, 5, 7)
        + JOIN_STEM
        + "[convolutional]\nfilters=4\nsize=1\nactivation=logistic\n\n[sam]\nfrom=0\n"
    )
    graph, model = build(text)
    x = image(graph)
    attention, features, ours = run(model, x, [4, 0, 5])
    close(ours, attention * features)


@pytest.mark.parametrize("atoms", [1, 3])
def test_implicit(atoms: int) -> None:
    """[implicit]: its weights as a filters×atoms×1 output, whatever its input; here scaling a conv."""
    text = net(3, 5, 7) + "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n"
    text += f"[implicit]\nfilters=4\natoms={atoms}\n"
    text += "\n[implicit]\nfilters=4\n\n[scale_channels]\nfrom=0\n" if atoms == 1 else ""
    graph, _ = build(text)
    graph[1].weights = {"weights": np.random.default_rng(7).normal(0, 1, 4 * atoms).astype(np.float32)}
    model = rebuild(graph)
    keep = [0, 1, 2, 3] if atoms == 1 else [0, 1]
    outs = run(model, image(graph), keep)
    close(outs[1], w64(graph[1], "weights").reshape(4, atoms, 1))
    if atoms == 1:
        close(outs[3], outs[0] * outs[2])


# -- normalisation / softmax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("groups", "temperature"), [(1, 1.0), (3, 1.0), (2, 3.0), (5, 0.5)])
def test_softmax(groups: int, temperature: float) -> None:
    """softmax_cpu over ``groups`` contiguous chunks of the flat input, ``exp(x/T − max/T)``."""
    graph, model = build(net(3, 5, 4) + f"[softmax]\ngroups={groups}\ntemperature={temperature}\n")
    x = image(graph)
    (ours,) = run(model, x, [0])
    flat = x[0].astype(np.float64).reshape(-1)
    n = flat.size // groups
    ref = np.concatenate(
        [
            np.exp(chunk / temperature - chunk.max() / temperature)
            / np.exp(chunk / temperature - chunk.max() / temperature).sum()
            for chunk in flat.reshape(groups, n)
        ]
    )
    close(ours, ref.reshape(x[0].shape))


def lrn(x, size, alpha, beta, kappa):
    """forward_normalization_layer: a running window sum of squares over channels, exactly as darknet
    updates it (its first window holds channels 0 … size/2 − 1)."""
    c = x.shape[0]
    squared = x * x
    norms = np.zeros_like(x)
    norms[0] = kappa
    for k in range(size // 2):
        if k < c:
            norms[0] += alpha * squared[k]
    for k in range(1, c):
        norms[k] = norms[k - 1]
        prev = k - (size - 1) // 2 - 1
        nxt = k + size // 2
        if prev >= 0:
            norms[k] -= alpha * squared[prev]
        if nxt < c:
            norms[k] += alpha * squared[nxt]
    return x * norms ** (-beta)


@pytest.mark.parametrize(("size", "channels"), [(5, 9), (3, 6), (4, 5)])
def test_normalization(size: int, channels: int) -> None:
    graph, model = build(
        net(channels, 3, 4) + f"[normalization]\nsize={size}\nalpha=0.01\nbeta=0.75\nkappa=2\n"
    )
    x = image(graph)
    (ours,) = run(model, x, [0])
    close(ours, lrn(x[0].astype(np.float64), size, 0.01, 0.75, 2.0))


def test_identities() -> None:
    text = net(3, 4, 5) + "[dropout]\nprobability=.5\n\n[empty]\n\n[cost]\n"
    graph, model = build(text)
    x = image(graph)
    for out in run(model, x, [0, 1, 2]):
        close(out, x[0])


def test_detection_softmax() -> None:
    """[detection] softmax=1: softmax over ``classes`` for each of the side² cells (the first block)."""
    side, classes, num, coords = 3, 4, 2, 4
    channels = side * side * ((1 + coords) * num + classes)
    text = (
        net(channels, 1, 1)
        + f"[detection]\nclasses={classes}\nside={side}\nnum={num}\ncoords={coords}\nsoftmax=1\n"
    )
    graph, model = build(text)
    x = image(graph)
    (ours,) = run(model, x, [0])
    ref = x[0].astype(np.float64).reshape(-1).copy()
    for cell in range(side * side):
        block = ref[cell * classes : (cell + 1) * classes]
        ref[cell * classes : (cell + 1) * classes] = (
            np.exp(block - block.max()) / np.exp(block - block.max()).sum()
        )
    close(ours, ref.reshape(x[0].shape))
