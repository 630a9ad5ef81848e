"""The PyTorch backend's xnor / binary convolutions against numpy transcriptions of darknet's detector-test
path (fuse_conv_batchnorm, calculate_binary_weights, the bit-packed gemm), with the harness of
``test_torch_layers.py``."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quiet

from cfgsurgeon import CfgError, loads_cfg

torch = pytest.importorskip("torch")

from test_torch_layers import (  # noqa: E402
    DARKNET_BN_EPS,
    activate,
    build,
    close,
    conv,
    image,
    net,
    rebuild,
    run,
    w64,
)

from cfgsurgeon.emit.torch import to_torch  # noqa: E402

# -- xnor / binary convolutions (darknet's detector test: fuse_conv_batchnorm, calculate_binary_weights) ----


def fuse_conv_batchnorm(layer) -> tuple[np.ndarray, np.ndarray]:
    """network.c fuse_conv_batchnorm: per filter, in double, ``b − γ·mean/√(var+ε)`` and ``w·γ/√(var+ε)``,
    stored back as float."""
    weights, biases = w64(layer, "weights"), w64(layer, "biases")
    if layer.batch_normalize:
        factor = w64(layer, "scales") / np.sqrt(w64(layer, "rolling_variance") + DARKNET_BN_EPS)
        biases = biases - factor * w64(layer, "rolling_mean")
        weights = weights * factor[:, None, None, None]
    return weights.astype(np.float32), biases.astype(np.float32)


def binarize_weights(weights: np.ndarray) -> np.ndarray:
    """binarize_weights (convolutional_layer.c): per filter, mean |w| summed in float, then ±mean by w > 0."""
    out = np.empty_like(weights)
    for f in range(weights.shape[0]):
        flat = weights[f].reshape(-1)
        total = np.float32(0)
        for value in flat:
            total = np.float32(total + np.float32(abs(value)))
        mean = np.float32(total / np.float32(flat.size))
        out[f] = np.where(flat > 0, mean, -mean).reshape(weights[f].shape)
    return out


def xnor_bit_gemm(x, binary_weights, biases, size, stride, pad, out_h, out_w):
    """The bit-packed path (im2col of input bits ``x > 0``, a padded tap is bit 0; weight bits ``w > 0``;
    gemm_nn_custom_bin_mean_transposed): ``(2·agreeing bits − K)·mean_f + bias_f``."""
    n, c = binary_weights.shape[:2]
    _, h, w = x.shape
    k = c * size * size
    out = np.zeros((n, out_h, out_w))
    for f in range(n):
        mean = abs(float(binary_weights[f].reshape(-1)[0]))  # get_mean_array
        for oy in range(out_h):
            for ox in range(out_w):
                agree = 0
                for ci in range(c):
                    for i in range(size):
                        for j in range(size):
                            row, col = oy * stride - pad + i, ox * stride - pad + j
                            bit = 0 <= row < h and 0 <= col < w and x[ci, row, col] > 0
                            agree += bit == (binary_weights[f, ci, i, j] > 0)
                out[f, oy, ox] = (2 * agree - k) * mean + biases[f]
    return out


def binary_conv_layer(layer, x):
    """One xnor/binary [convolutional] as darknet's detector test computes it (see BinaryConv's docstring)."""
    weights, biases = fuse_conv_batchnorm(layer)
    binary = binarize_weights(weights).astype(np.float64)
    sy, sx = layer.strides
    pad = layer.size // 2 if layer.pad else layer.padding
    _, out_h, out_w = layer.out_shape
    activation = layer.activation
    if layer.xnor:
        activation = "linear" if layer.options.get("bin_output") == "1" else activation
        if sy == sx:
            return activate(activation, xnor_bit_gemm(x, binary, biases, layer.size, sx, pad, out_h, out_w))
        x = np.where(x > 0, 1.0, -1.0)  # binarize_cpu, then the float path (zero padding)
    dilation = 1 if layer.size == 1 else layer.dilation
    groups = 1 if layer.xnor else max(layer.groups, 1)
    v = conv(x, binary, biases.astype(np.float64), layer.size, sy, sx, pad, dilation, groups, out_h, out_w)
    return activate(activation, v)


XNOR_CONV = "[convolutional]\nbatch_normalize=1\nfilters=5\nactivation=leaky\n"
BINARY_CASES = {  # (input channels, options): each path of darknet's xnor code, and binary=1
    "bit-32ch-3x3-s2": (32, "xnor=1\nsize=3\nstride=2\npad=1\n"),
    "bit-32ch-1x1": (64, "xnor=1\nsize=1\nstride=1\npad=1\n"),
    "bit-32ch-dilation-ignored": (32, "xnor=1\nsize=3\nstride=1\npad=1\ndilation=2\n"),
    "bit-8ch-same-bin_output": (8, "xnor=1\nbin_output=1\nsize=3\nstride=1\npad=1\n"),
    "float-path-stride_x2": (6, "xnor=1\nsize=3\nstride_x=2\nstride_y=1\npad=1\ndilation=2\n"),
    "binary-groups": (6, "binary=1\nsize=3\nstride=1\npad=1\ngroups=3\nfilters=6\n"),
    "binary-no-bn": (4, "binary=1\nbatch_normalize=0\nsize=3\nstride=2\npad=1\n"),
}


@pytest.mark.parametrize(("channels", "options"), BINARY_CASES.values(), ids=BINARY_CASES.keys())
def test_xnor_and_binary_convolutions(channels: int, options: str) -> None:
    """Against darknet's formulas in numpy, with negative γ (flips the fused signs), a zero weight in every
    filter and zero inputs (``> 0`` tests: both binarise to −1; a zero weight times a negative γ too)."""
    section = "[convolutional]\n" + options
    for key, value in (("batch_normalize", "1"), ("filters", "5"), ("activation", "leaky")):
        section += "" if f"\n{key}=" in "\n" + options else f"{key}={value}\n"
    graph, _ = build(net(channels, 7, 9) + section)
    layer = graph[0]
    weights = dict(layer.weights)
    weights["weights"] = weights["weights"].copy()
    weights["weights"][:, 0, 0, 0] = 0.0
    if layer.batch_normalize:
        signs = np.where(np.arange(layer.filters) % 2, -1, 1).astype(np.float32)
        weights["scales"] = weights["scales"] * signs
    layer.weights = weights
    model = rebuild(graph)
    x = image(graph)
    x.reshape(-1)[::7] = 0.0
    (ours,) = run(model, x, [0])
    close(ours, binary_conv_layer(layer, x[0].astype(np.float64)))


def test_xnor_pads_with_minus_one_in_the_bit_path() -> None:
    """The bit-packed path counts a padded tap as −1: with all-positive inputs and weights, a corner output of
    a 3×3 pad-1 conv is (9 − 2·5)·mean = −mean + bias, not the zero-padded (4 − 5)·mean."""
    graph, _ = build(net(32, 4, 4) + "[convolutional]\nxnor=1\nfilters=1\nsize=3\npad=1\nactivation=linear\n")
    layer = graph[0]
    layer.weights = {"biases": np.zeros(1, np.float32), "weights": np.full((1, 32, 3, 3), 0.5, np.float32)}
    (ours,) = run(rebuild(graph), np.ones((1, 32, 4, 4), np.float32), [0])
    assert ours[0, 0, 0] == pytest.approx((9 * 32 - 2 * 5 * 32) * 0.5)  # K = 288 taps, 160 of them padding
    assert ours[0, 1, 1] == pytest.approx(288 * 0.5)


UNDEFINED_XNOR = {  # (input channels, options, message)
    "8ch-1x1": (8, "xnor=1\nsize=1\nstride=1\n", "not a multiple of 32"),
    "8ch-3x3-stride2": (8, "xnor=1\nsize=3\nstride=2\npad=1\n", "not a multiple of 32"),
    "antialiasing": (32, "xnor=1\nsize=3\npad=1\nantialiasing=1\n", "xnor=1 with antialiasing"),
}


@pytest.mark.parametrize(
    ("channels", "options", "message"), UNDEFINED_XNOR.values(), ids=UNDEFINED_XNOR.keys()
)
def test_xnor_geometries_darknet_does_not_define_are_refused(
    channels: int, options: str, message: str
) -> None:
    graph = loads_cfg(net(channels, 8, 8) + "[convolutional]\nfilters=4\n" + options, "x.cfg", warn=quiet)
    with pytest.raises(CfgError, match=message) as caught:
        to_torch(graph)
    assert str(caught.value).startswith("x.cfg:") and "\n" not in str(caught.value)
